#!/usr/bin/env bash
# One-shot GPU check for the AIM model (single H100/H200, PyTorch installed, no internet), < 8 minutes:
#   1. attention backends (xformers, flex, sdpa) agree with the fp32 reference in bf16, forward and grads;
#   2. AIM-600M training throughput (images/s) and MFU at 224 px per backend, bf16 autocast.
# Prints Markdown tables; paste them into benchmarks/RESULTS.md under "## Training".
#
#   bash benchmarks/gpu_check.sh                 # the GPU run
#   bash benchmarks/gpu_check.sh --compile       # also torch.compile each block
#   bash benchmarks/gpu_check.sh --batch 48      # images per step (default 64)
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
import argparse, gc, logging, math, sys, time, warnings

import torch

sys.path.insert(0, ".")
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
backends = ["xformers", "flex", "sdpa", "naive" if args.cpu_smoke else None]
backends = [b for b in backends if b]
works = {b: backend_works(b, device) for b in backends}
print(f"auto selects: {select_backend('auto', device)}\n")

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
for b in backends:
    if not works[b] or (b == "naive" and not args.cpu_smoke):
        print(f"| {b} | unavailable | | | | | |")
        continue
    model = opt = images = None
    try:
        torch.manual_seed(0)
        model = build_aim(ModelConfig(arch=arch, attention_backend=b), device=device)
        assert model.attention_backend(device) == b
        if args.compile:
            for block in list(model.blocks) + list(model.head.blocks):
                block.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                fused=device.type == "cuda")
        images = torch.randn(batch, 3, cfg0.img_size, cfg0.img_size, device=device)
        g = torch.Generator(device="cpu").manual_seed(1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def step():
            prefix = sample_prefix_lengths(batch, cfg0.num_patches, g, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.forward_loss(images, prefix)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss

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
        print(f"| {b} | {ips:.1f} | {dt:.3f} | {ips*fl_trunk/peak:.1%} | {ips*fl_all/peak:.1%} | {mem:.1f} | {loss:.4f} |")
    except torch.cuda.OutOfMemoryError:
        print(f"| {b} | out of memory at batch {batch} | | | | | |")
    except Exception as err:  # one backend failing (e.g. a compile error) must not hide the others
        print(f"| {b} | failed: {type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''} | | | | | |")
    finally:
        model = opt = images = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
print("\nMFU on CPU is against the GPU peak and meaningless; the smoke run only checks the script." if args.cpu_smoke else "")
sys.exit(0 if agreement_ok else 1)
PYEOF
"$PY" "$SCRIPT" "$@"
