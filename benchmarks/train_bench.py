"""Training-step speed of our AIM trunk vs timm's VisionTransformer, and of the prefix-causal
attention backends vs plain causal SDPA. CPU-sized (about 2 minutes on 2 cores).

    .venv/bin/python benchmarks/train_bench.py [--threads 1] [--steps 7] [--no-write]

Every figure is a ratio against a baseline measured in the same run, with the runs interleaved
(A, B, A, B, ...) and the best time taken, so machine load affects both sides alike. Results go to
benchmarks/RESULTS.md under "## Training" (other sections of that file are left untouched).

Trunk step = forward + mean-square loss on the trunk output + backward + AdamW step. Our pixel
head is excluded (timm has no counterpart); timm is built to match our trunk: no CLS token, no
pooling or classifier, qkv/proj/MLP without biases, a LayerNorm after the patch projection; it
keeps a learnt position embedding (ours is fixed sin-cos) and runs bidirectional attention.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_md import RESULTS, write_section  # after the path set-up

SECTION = "## Training"


def _best_interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Best time of each variant over interleaved repeats. The minimum, not the median: on a shared
    2-core machine other processes only ever add time, so the fastest run is the cleanest estimate."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def trunk_step_bench(steps: int) -> tuple[list[tuple[str, float, float]], str]:
    from functools import partial

    import torch
    from timm.layers import Mlp
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    from shared.config.training import ModelConfig
    from training.model.aim import build_aim
    from training.model.prefix import sample_prefix_lengths

    width, depth, heads, img, patch, batch = 384, 6, 6, 224, 14, 4  # 256 tokens
    cfg = ModelConfig(arch=None, width=width, depth=depth, heads=heads, img_size=img, patch_size=patch,
                      head_width=64, head_depth=0, attention_backend="sdpa")
    torch.manual_seed(0)
    ours = build_aim(cfg)
    ours.head = None  # excluded from the timing (and from the optimizer)
    timm_vit = VisionTransformer(img_size=img, patch_size=patch, embed_dim=width, depth=depth,
                                 num_heads=heads,
                                 num_classes=0, global_pool="", class_token=False, qkv_bias=False,
                                 proj_bias=False, mlp_layer=partial(Mlp, bias=False),
                                 embed_norm_layer=nn.LayerNorm)
    images = torch.randn(batch, 3, img, img)
    prefix = sample_prefix_lengths(batch, cfg.num_patches, torch.Generator().manual_seed(0))

    def step_fn(model, forward):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = forward(model, images).float().pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    times = _best_interleaved({
        "timm": step_fn(timm_vit, lambda m, x: m.forward_features(x)),
        "ours_bidir": step_fn(ours, lambda m, x: m.forward_trunk(x)),
        "ours_prefix": step_fn(ours, lambda m, x: m.forward_trunk(x, prefix)),
    }, repeats=steps)
    base = times["timm"]
    rows = [("timm VisionTransformer (bidirectional, baseline)", base, 1.0),
            ("our trunk, bidirectional", times["ours_bidir"], times["ours_bidir"] / base),
            ("our trunk, prefix-causal (sdpa + per-batch additive mask)", times["ours_prefix"],
             times["ours_prefix"] / base)]
    shape = f"width {width}, depth {depth}, heads {heads}, {cfg.num_patches} tokens, batch {batch}"
    return rows, shape


def attention_bench(repeats: int) -> tuple[list[tuple[str, float, float]], str]:
    import warnings

    import torch
    import torch.nn.functional as F

    from training.model.attention import attention, backend_works, build_prefix_mask
    from training.model.prefix import sample_prefix_lengths

    B, H, N, Dh = 8, 6, 256, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, Dh, generator=g).requires_grad_() for _ in range(3))
    prefix = sample_prefix_lengths(B, N, g)
    grad_out = torch.randn(B, H, N, Dh, generator=g)
    masks = {b: build_prefix_mask(prefix, N, b) for b in ("sdpa", "naive")}

    def fwd_bwd(fn):
        def run():
            out = fn()
            torch.autograd.grad(out, (q, k, v), grad_out)
        return run

    fns = {
        "causal": fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
        "sdpa": fwd_bwd(lambda: attention(q, k, v, masks["sdpa"], "sdpa")),
        "naive": fwd_bwd(lambda: attention(q, k, v, masks["naive"], "naive")),
        "mask": lambda: build_prefix_mask(prefix, N, "sdpa").additive(q.dtype),
    }
    times = _best_interleaved(fns, repeats=repeats)
    base = times["causal"]
    rows = [("plain causal SDPA, fwd+bwd (baseline)", base, 1.0),
            ("prefix-causal sdpa (per-batch additive mask), fwd+bwd", times["sdpa"], times["sdpa"] / base),
            ("prefix-causal naive (explicit softmax), fwd+bwd", times["naive"], times["naive"] / base),
            ("building the mask once per batch (all layers share it)", times["mask"], times["mask"] / base)]
    if backend_works("flex", "cpu"):
        masks["flex"] = build_prefix_mask(prefix, N, "flex")
        flex = fwd_bwd(lambda: attention(q, k, v, masks["flex"], "flex"))
        t = _best_interleaved({"causal": fns["causal"], "flex": flex},
                                repeats=repeats)
        rows.append(("prefix-causal flex, fwd+bwd", t["flex"], t["flex"] / t["causal"]))
    else:  # CPU flex has no backward: compare forwards only, against a causal forward
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        fmask = build_prefix_mask(prefix, N, "flex")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = _best_interleaved({
                "causal": lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True),
                "flex": lambda: attention(qd, kd, vd, fmask, "flex")}, repeats=repeats)
        rows.append(("prefix-causal flex (eager), forward only vs causal forward", t["flex"],
                     t["flex"] / t["causal"]))
    rows.append(("xformers", float("nan"), float("nan")) if not backend_works("xformers", "cpu") else
                ("xformers (unexpectedly runs on CPU)", float("nan"), float("nan")))
    return rows, f"B {B}, heads {H}, {N} tokens, head dim {Dh}, random per-sample prefixes"


def data_worker_bench(repeats: int) -> tuple[list[tuple[str, float, float]], str]:
    """A data worker's per-image CPU time with the colour jitter in the worker (PIL: CPU runs) and
    without it (GPU runs jitter on the device), and the batched tensor jitter's cost on this CPU."""
    import numpy as np
    import torch

    from training.augment import augment_uint8, color_jitter, draw_jitter
    from training.data import decode_image
    from training.synthetic import _jpeg, procedural_image

    rng = np.random.default_rng(0)
    n, size = 16, 224
    jpegs = [_jpeg(procedural_image(rng, 320)) for _ in range(n)]

    def worker(on_device: bool):
        def run():
            for i, data in enumerate(jpegs):
                augment_uint8(decode_image({"jpg": data}), size, np.random.default_rng(i), (0.4, 1.0), 1.0,
                              jitter_on_device=on_device)
        return run

    batch = torch.rand(n, 3, size, size)
    params = torch.stack([draw_jitter(np.random.default_rng(i), 1.0) for i in range(n)])
    times = _best_interleaved({"pil": worker(False), "device": worker(True),
                               "tensor": lambda: color_jitter(batch, params)}, repeats=repeats)
    base = times["pil"]
    rows = [("worker: decode + crop/flip + PIL colour jitter (CPU runs; baseline)", base / n, 1.0),
            ("worker: decode + crop/flip, jitter left to the device (GPU runs)", times["device"] / n,
             times["device"] / base),
            ("batched tensor jitter on this CPU (runs on the GPU in GPU runs)", times["tensor"] / n,
             times["tensor"] / base)]
    return rows, f"{n} JPEGs of 320 px -> {size} px, jitter applied to every image, s per image"


def _table(rows) -> str:
    lines = ["| run | best s | ratio |", "|---|---|---|"]
    for name, t, r in rows:
        if math.isnan(t):  # not measurable here
            lines.append(f"| {name} | n/a (no CPU kernels) | n/a |")
        else:
            lines.append(f"| {name} | {t:.4f} | {r:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="1 by default: on a shared 2-core machine, 2 threads per process thrash")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant (after 2 warm-up)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update RESULTS.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    trunk_rows, trunk_shape = trunk_step_bench(args.steps)
    print(f"trunk training step ({trunk_shape}):\n{_table(trunk_rows)}\n")
    attn_rows, attn_shape = attention_bench(args.steps * 2)
    print(f"attention ({attn_shape}):\n{_table(attn_rows)}\n")
    data_rows, data_shape = data_worker_bench(args.steps)
    print(f"data worker ({data_shape}):\n{_table(data_rows)}\n")

    machine = (f"{platform.processor() or platform.machine()}, {args.threads} threads, "
               f"torch {torch.__version__}, CPU")
    text = "\n".join([
        SECTION, "",
        f"`benchmarks/train_bench.py` on {machine}; best of {args.steps} interleaved steps after 2 warm-up",
        (f"(load average {os.getloadavg()[0]:.1f} at the end: other jobs shared the cores, the minimum "
         "filters them)."),
        "Ratios are against the baseline row measured in the same run (lower is faster; target for our",
        "prefix-causal trunk: <= 1.05 x timm). Our pixel head is excluded from the trunk timing.", "",
        f"Trunk training step (fwd + bwd + AdamW), {trunk_shape}:", "", _table(trunk_rows), "",
        f"Attention, {attn_shape}:", "", _table(attn_rows), "",
        f"Data worker per image, {data_shape}:", "", _table(data_rows), "",
        "GPU figures (backend agreement in bf16, AIM-600M images/s and MFU per backend, the shipped",
        "aim-600m path): `bash benchmarks/gpu_check.sh --compile --backends auto` on an H100/H200.",
    ])
    if not args.no_write:
        write_section(SECTION, text, keep="### GPU")
        print(f"wrote the {SECTION!r} section of {RESULTS}")


if __name__ == "__main__":
    main()
