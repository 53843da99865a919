#!/usr/bin/env bash
# One-shot GPU check for the AIM model (single H100/H200, PyTorch installed, no internet):
#   1. attention backends (xformers, flex, sdpa) agree with the fp32 reference in bf16, forward and grads;
#   2. AIM-600M training throughput (images/s) and MFU at 224 px per backend, bf16 autocast, no FSDP,
#      random tensors as input (the model alone); with --compile each block is compiled (as the loop does),
#      and one more row, printed last (after section 3), compiles the whole model once instead (auto backend);
#   3. the SHIPPED aim-600m path: `openaim train`'s loop with configs/aim-600m.yaml on this one GPU
#      (FSDP2 on a 1-process group, torch.compile, the config's activation checkpointing, fused AdamW,
#      bf16), fed by the real data loader over synthetic webdataset shards + an image folder, then one
#      DCP checkpoint save; MFU (trunk+head) printed against row 2's in the same run, then each logged
#      window's images/s, MFU and data wait (share of the window's wall time blocked on the loader).
#   5. ml-l3m's AIMv1 600M training step (Apple's code, benchmarks/l3m_step.py) at the same batch and
#      precision, after ours, with each of our rows' images/s as a ratio to it (needs .l3m/ prepared:
#      benchmarks/RESULTS.md "ml-l3m on the same GPU"; skipped with a line saying so otherwise).
# Prints Markdown tables; paste them into benchmarks/RESULTS.md under "## Training".
#
#   bash benchmarks/gpu_check.sh --compile --backends auto --no-whole-model   # the run to record (<= 8 min:
#                                                                             # not yet timed with section 5)
#   bash benchmarks/gpu_check.sh --compile --backends auto   # + the whole-model row (about 4-5 minutes
#                                                            # before section 5 existed)
#   bash benchmarks/gpu_check.sh                 # every backend, no compile in section 2
#   bash benchmarks/gpu_check.sh --batch 48      # images per step (default 64)
#   bash benchmarks/gpu_check.sh --no-shipped    # skip section 3
#   bash benchmarks/gpu_check.sh --compile --backends auto --no-whole-model   # without the whole-model row
#   bash benchmarks/gpu_check.sh --no-l3m        # skip section 5
#   bash benchmarks/gpu_check.sh --cpu-smoke     # aim-tiny on CPU, 2 steps: checks the script runs
#
# xformers: if it is not importable and a wheel lies in .whl/, it is installed offline first
# (pip --no-index --no-deps). xformers 0.0.34/0.0.35 target PyTorch 2.10; with another torch its
# kernels may not load, which the probe detects (the row then reads "unavailable").
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

if [[ " $* " != *" --cpu-smoke "* ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  if ! "$PY" -c "import xformers.ops" 2>/dev/null; then
    shopt -s nullglob
    wheels=(.whl/xformers-*.whl)
    if (( ${#wheels[@]} )); then
      echo "installing ${wheels[0]} (offline)"
      "$PY" -m pip install --no-index --no-deps "${wheels[0]}" || echo "xformers wheel did not install; continuing without it"
    fi
  fi
fi

SCRIPT="$(mktemp /tmp/openaim_gpu_check.XXXXXX.py)"
trap 'rm -f "$SCRIPT"' EXIT
cat > "$SCRIPT" <<'PYEOF'
import argparse, gc, json, logging, math, os, shutil, sys, tempfile, time, warnings

import torch

sys.path.insert(0, ".")
from shared.config.loading import load_config
from shared.config.training import ModelConfig
from training.model.aim import build_aim
from training.model.attention import attention, backend_works, build_prefix_mask, naive_attention, select_backend
from training.model.flops import flops_per_image
from training.model.prefix import prefix_causal_mask, sample_prefix_lengths

parser = argparse.ArgumentParser()
parser.add_argument("--cpu-smoke", action="store_true")
parser.add_argument("--compile", action="store_true")
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--backends", default="xformers,flex,sdpa",
                    help="comma list for sections 1-2, or 'auto' for the backend auto selects")
parser.add_argument("--no-shipped", action="store_true", help="skip section 3 (the shipped training path)")
parser.add_argument("--shipped-steps", type=int, default=20)
parser.add_argument("--no-whole-model", action="store_true",
                    help="skip the last row (the whole model compiled once, with --compile)")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

if args.cpu_smoke:
    device, arch, batch, steps, warmup = torch.device("cpu"), "aim-tiny", 4, 2, 1
    torch.set_num_threads(2)
else:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --cpu-smoke to check the script on CPU")
    device = torch.device("cuda", torch.cuda.current_device())  # the device the inputs report
    arch, batch, steps, warmup = "aim-600m", args.batch, args.steps, 3
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
# dense bf16 peak, FLOP/s (H100 SXM and H200: 989e12; PCIe H100: 756e12)
peak = 756e12 if "PCIe" in name else 989e12
print(f"\n# AIM GPU check: {name}, torch {torch.__version__}, {arch}, batch {batch}, compile={args.compile}\n")
auto_backend = select_backend("auto", device)
if args.backends == "auto":
    backends = [auto_backend]
else:
    backends = [b for b in args.backends.split(",") if b] + (["naive"] if args.cpu_smoke else [])
works = {b: backend_works(b, device) for b in backends}
print(f"auto selects: {auto_backend}\n")

# 1. agreement in bf16 with the fp32 reference (same bf16 inputs, upcast)
print("| backend | shape (B,H,N,Dh) | max abs err out | max abs err grad q/k/v | ok |")
print("|---|---|---|---|---|")
agreement_ok = True
for b in backends:
    for shape in ([4, 12, 256, 128], [3, 16, 196, 64]) if not args.cpu_smoke else ([2, 3, 64, 64],):
        if not works[b]:
            print(f"| {b} | {tuple(shape)} | unavailable | | |")
            continue
        B, H, N, Dh = shape
        g = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(*shape, generator=g).to(device, torch.bfloat16).requires_grad_() for _ in range(3))
        prefix = sample_prefix_lengths(B, N, g, device=device)
        go = torch.randn(*shape, generator=g).to(device, torch.bfloat16)
        out = attention(q, k, v, build_prefix_mask(prefix, N, b), b)
        grads = torch.autograd.grad(out, (q, k, v), go)
        qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
        ref = naive_attention(qf, kf, vf, prefix_causal_mask(prefix, N)[:, None])
        ref_grads = torch.autograd.grad(ref, (qf, kf, vf), go.float())
        err = (out.float() - ref).abs().max().item()
        gerr = max((a.float() - r).abs().max().item() for a, r in zip(grads, ref_grads))
        ok = err < 3e-2 and gerr < 1e-1 and math.isfinite(err + gerr)
        agreement_ok &= ok
        print(f"| {b} | {tuple(shape)} | {err:.2e} | {gerr:.2e} | {'yes' if ok else 'NO'} |")

# 2. AIM training throughput per backend
cfg0 = ModelConfig(arch=arch)
fl_trunk, fl_all = flops_per_image(cfg0), flops_per_image(cfg0, include_head=True)
print(f"\nTraining FLOPs per image: trunk {fl_trunk/1e12:.3f} TFLOP, with head {fl_all/1e12:.3f} TFLOP; peak {peak/1e12:.0f} TFLOP/s\n")
print("| backend | images/s | step s | MFU (trunk FLOPs) | MFU (trunk+head) | peak mem GiB | loss |")
print("|---|---|---|---|---|---|---|")


def throughput_row(b, label, compile_mode):
    """One table row: train steps of the model alone on random tensors; compile_mode None (eager),
    "blocks" (each block compiled, as the loop does) or "whole" (torch.compile(model) once).
    Returns the MFU (trunk+head), or None when the row failed."""
    model = opt = images = None
    try:
        torch.manual_seed(0)
        model = build_aim(ModelConfig(arch=arch, attention_backend=b), device=device)
        assert model.attention_backend(device) == b
        run = model  # what a step calls: model(images, prefix) is model.forward_loss(images, prefix)
        if compile_mode == "blocks":
            for block in list(model.blocks) + list(model.head.blocks):
                block.compile()
        elif compile_mode == "whole":
            # on CPU (smoke) dynamo's eager backend: traces the whole model, skips inductor's C++ build
            run = torch.compile(model, backend="eager" if args.cpu_smoke else "inductor")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                fused=device.type == "cuda")
        images = torch.randn(batch, 3, cfg0.img_size, cfg0.img_size, device=device)
        g = torch.Generator(device="cpu").manual_seed(1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            prefix = sample_prefix_lengths(batch, cfg0.num_patches, g, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = run(images, prefix)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

        t_compile = time.perf_counter()
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        loss = loss.item()  # syncs
        used = model.attention_backend(images.device)
        if used != b:  # a silent fallback would mislabel the row
            raise RuntimeError(f"ran {used}, not {b}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        ips = batch / dt
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(f"| {label} | {ips:.1f} | {dt:.3f} | {ips*fl_trunk/peak:.1%} | {ips*fl_all/peak:.1%} | {mem:.1f} | "
              f"{loss:.4f} |", flush=True)
        if compile_mode:
            print(f"({label}: {t0 - t_compile:.0f} s in the {warmup} warm-up steps, compile included)", flush=True)
        return ips * fl_all / peak
    except torch.cuda.OutOfMemoryError:
        print(f"| {label} | out of memory at batch {batch} | | | | | |", flush=True)
    except Exception as err:  # one row failing (e.g. a compile error) must not hide the others
        print(f"| {label} | failed: {type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''} "
              "| | | | | |", flush=True)
    finally:
        model = run = opt = images = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return None


baseline_mfu = {}
for b in backends:
    if not works[b] or (b == "naive" and not args.cpu_smoke):
        print(f"| {b} | unavailable | | | | | |")
        continue
    result = throughput_row(b, b, "blocks" if args.compile else None)
    if result is not None:
        baseline_mfu[b] = result

# 3. the shipped path: the training loop itself, configs/aim-600m.yaml, one process, FSDP2
shipped_ok, shipped_ips = True, None
# From here on dynamo logs each recompilation with its reason: one printed between two of the loop's "step"
# lines places a slow window's time in compilation rather than in the loader or the device.
torch._logging.set_logs(recompiles=True)
if not args.no_shipped:
    tmp = tempfile.mkdtemp(prefix="openaim_gpu_check_")
    try:
        # the loop's import chain also needs pillow, torchvision, safetensors, matplotlib and rich (in the
        # GPU image); a missing one fails this row only, after sections 1-2 have printed
        from training.loop import train_from_config
        from training.metrics import read_metrics
        from training.synthetic import write_image_folder, write_synthetic_shards

        t0 = time.perf_counter()
        size = 72 if args.cpu_smoke else 256
        write_synthetic_shards(os.path.join(tmp, "shards"), n_shards=2 if args.cpu_smoke else 8,
                               per_shard=16 if args.cpu_smoke else 128, size=size, seed=0)
        write_image_folder(os.path.join(tmp, "imnet"), n_classes=4 if args.cpu_smoke else 20, per_class=4,
                           size=size, seed=1)
        shipped_steps = 3 if args.cpu_smoke else args.shipped_steps
        log_every = 1 if args.cpu_smoke else 5
        sets = [f"workdir={tmp}/run", f"training.data.shards=['{tmp}/shards/*.tar']",
                f"training.data.imagenet=['{tmp}/imnet']", f"training.steps={shipped_steps}",
                f"training.log_every={log_every}", "training.checkpoint_every=1000000", "training.keep_checkpoints=[]",
                f"training.global_batch_size={batch}", f"training.micro_batch_size={batch}",
                # half the steps warm up (from 1e-6): a fresh 600M at full lr could diverge in bf16,
                # which the loop's non-finite guard would stop; the lr does not change the speed
                "training.optim.warmup_fraction=0.5"]
        if args.cpu_smoke:
            sets += ["training.model.arch=aim-tiny", "training.compile=false", "training.precision=fp32",
                     "training.data.num_workers=1", "training.data.shuffle_buffer=16"]
        cfg = load_config("configs/aim-600m.yaml", sets)
        t = cfg.training
        print(f"\nShipped path: configs/aim-600m.yaml on 1 process: parallel {t.parallel} (FSDP2, 1-process group), "
              f"compile {t.compile}, activation_checkpointing {t.activation_checkpointing}, micro-batch "
              f"{t.micro_batch_size}, {t.data.num_workers} loader workers, shuffle buffer {t.data.shuffle_buffer}, "
              f"{shipped_steps} steps (data written in {time.perf_counter() - t0:.0f} s)\n")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        train_from_config(cfg, resume=False)
        wall = time.perf_counter() - t0
        rows = read_metrics(os.path.join(tmp, "run", "training", "metrics.jsonl"))
        timed = rows[-2:] if len(rows) > 2 else rows[-1:]  # the windows after compile and loader warm-up
        ips = sum(r["images_per_s"] for r in timed) / len(timed)
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        mfu_all = ips * fl_all / peak
        print("| path | images/s | MFU (trunk) | MFU (trunk+head) | peak mem GiB | loss | wall s (incl. compile, save) |")
        print("|---|---|---|---|---|---|---|")
        print(f"| shipped aim-600m (steps {timed[0]['step'] - log_every + 1}-{timed[-1]['step']}) | {ips:.1f} | "
              f"{ips*fl_trunk/peak:.1%} | {mfu_all:.1%} | {mem:.1f} | {rows[-1]['loss']:.4f} | {wall:.0f} |")
        base = baseline_mfu.get(auto_backend)
        if base:
            print(f"\nshipped path MFU (trunk+head) {mfu_all:.1%} vs the no-FSDP {auto_backend} row {base:.1%} "
                  f"(ratio {mfu_all / base:.2f}); target >= 55%")
        # Each logged window: where a slow window's time went. "data wait" = the share of the window's wall
        # time the loop was blocked in next(loader) + the host->device copy call (host time, perf_counter).
        print("\n| shipped window (steps) | images/s | MFU (trunk+head) | data wait |")
        print("|---|---|---|---|")
        for r in rows:
            first = max(r["step"] - log_every, 0) + 1
            wait = r.get("data_wait_share")
            print(f"| {first}-{r['step']} | {r['images_per_s']:.1f} | {r['images_per_s'] * fl_all / peak:.1%} | "
                  f"{'n/a' if wait is None else f'{wait:.1%}'} |")
        shipped_ok, shipped_ips = math.isfinite(rows[-1]["loss"]), ips
    except Exception as err:
        shipped_ok = False
        print(f"| shipped aim-600m | failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''} |")
        logging.getLogger("openaim").exception("shipped path failed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

# 4. section 2's extra row, run last so that a slow whole-model compile cannot cost section 3: the whole
# model compiled once (torch.compile(model)) instead of block by block, same backend and batch.
if (args.compile or args.cpu_smoke) and not args.no_whole_model and backend_works(auto_backend, device):
    label = f"{auto_backend}, whole model compiled" + (" (dynamo eager backend)" if args.cpu_smoke else "")
    print(f"\nSection 2, one more row: {label}, vs the {'per-block compiled' if args.compile else 'eager'} "
          f"{auto_backend} row above\n")
    print("| backend | images/s | step s | MFU (trunk FLOPs) | MFU (trunk+head) | peak mem GiB | loss |")
    print("|---|---|---|---|---|---|---|")
    whole = throughput_row(auto_backend, label, "whole")
    base = baseline_mfu.get(auto_backend)
    if whole is not None and base:
        print(f"\nwhole-model compile MFU (trunk+head) {whole:.1%} vs per-block {base:.1%} (ratio {whole / base:.2f})")

# images/s of our rows, for section 5 (ml-l3m's step, a separate process) to set against its own
if os.environ.get("OPENAIM_GPU_SUMMARY"):
    summary = {f"ours, model alone ({b}{', per-block compiled' if args.compile else ''})":
               m * peak / fl_all for b, m in baseline_mfu.items()}
    if shipped_ips is not None:
        summary["ours, shipped aim-600m path"] = shipped_ips
    with open(os.environ["OPENAIM_GPU_SUMMARY"], "w") as f:
        json.dump(summary, f)
print("\nMFU on CPU is against the GPU peak and meaningless; the smoke run only checks the script." if args.cpu_smoke else "")
sys.exit(0 if agreement_ok and shipped_ok else 1)
PYEOF
# Arguments: --no-l3m is this wrapper's; --batch, --compile and --cpu-smoke also go to section 5.
ours_args=() l3m_flags=() batch=64 no_l3m=0 prev=""
for a in "$@"; do
  case "$a" in
    --no-l3m) no_l3m=1 ;;
    *) ours_args+=("$a") ;;
  esac
  case "$a" in --compile|--cpu-smoke) l3m_flags+=("$a") ;; esac
  [[ "$prev" == "--batch" ]] && batch="$a"
  prev="$a"
done
SUMMARY="$(mktemp /tmp/openaim_gpu_summary.XXXXXX.json)"
L3M_TMP=""
trap 'rm -f "$SCRIPT" "$SUMMARY"; [[ -n "$L3M_TMP" ]] && rm -rf "$L3M_TMP"' EXIT
status=0
# -u: unbuffered, so a run stopped mid-way (e.g. by a wall-time limit during the last row) keeps what it printed
OPENAIM_GPU_SUMMARY="$SUMMARY" "$PY" -u "$SCRIPT" ${ours_args[@]+"${ours_args[@]}"} || status=$?

# 5. ml-l3m's AIMv1 600M training step (Apple's code) at the same batch and precision, in its own process
# after ours (its compile and imports stay out of our timings; its failure cannot cost our rows). Its code
# and the wheels it needs are not in this repo: $L3M_DIR (default .l3m/, ignored) holds them, prepared as
# benchmarks/RESULTS.md "ml-l3m on the same GPU" says.
L3M_DIR="${L3M_DIR:-.l3m}"
if (( no_l3m )); then
  :
elif [[ -f "$L3M_DIR/ml-l3m.zip" ]]; then
  L3M_TMP="$(mktemp -d /tmp/openaim_l3m.XXXXXX)"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$L3M_TMP/site" "$L3M_DIR"/wheels/*.whl \
      && "$PY" -m zipfile -e "$L3M_DIR/ml-l3m.zip" "$L3M_TMP/code"; then
    echo -e "\nSection 5: ml-l3m's AIMv1 step, batch $batch, ${l3m_flags[*]:-eager}"
    PYTHONPATH="$L3M_TMP/site${PYTHONPATH:+:$PYTHONPATH}" "$PY" -u benchmarks/l3m_step.py --l3m "$L3M_TMP/code/src" \
      --config "$L3M_TMP/code/configs/aimv1/001_aim_v1_600M.yaml" --batch "$batch" --compare "$SUMMARY" \
      ${l3m_flags[@]+"${l3m_flags[@]}"} || status=$?
  else
    echo "ml-l3m: $L3M_DIR did not unpack (wheels or zip): section 5 failed"
    status=1
  fi
else
  echo -e "\nml-l3m: not prepared ($L3M_DIR/ml-l3m.zip is missing): section 5 skipped; benchmarks/RESULTS.md" \
    "\"ml-l3m on the same GPU\" says how to prepare it"
fi
exit $status
