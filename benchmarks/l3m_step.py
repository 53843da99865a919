"""Apple's own AIMv1 training step (ml-l3m, configs/aimv1/001_aim_v1_600M.yaml), timed the way
benchmarks/gpu_check.sh times ours: one GPU, the same batch, bf16 autocast, random images, so that our
shipped path's images/s can be set against Apple's code on the same card in the same run.

What runs is ml-l3m's single-GPU step as its engine does it (l3m/engine.py `train`, run/runner.py):
the meta model, loss and prefix-mask generator instantiated by hydra from the config; the whole model
compiled with torch.compile (the config's `experiment.torch_compile: true`); bf16 autocast; the loss
read on the host each step (`loss.item()`, as the engine does); backward; gradient clipping at the
config's 1.0; fused AdamW with the config's betas/eps/weight decay; `torch.cuda.synchronize()` per step.
Not included: its data loader (random tensors instead, as in gpu_check.sh's model-alone rows), FSDP (one
process: the runner wraps in FSDP only when distributed, and its activation checkpointing comes with
FSDP), its lr schedule (the lr does not change the speed), its weight init (same reason).

ml-l3m's code is not part of this repository. Prepare it in the ignored folder `.l3m/` (see
benchmarks/RESULTS.md "ml-l3m on the same GPU"): `.l3m/ml-l3m.zip` (its src/l3m and configs/aimv1, from
`git archive`) and `.l3m/wheels/` (hydra-core, omegaconf, antlr4-python3-runtime, ftfy, wcwidth);
gpu_check.sh unpacks both and calls this script. Only l3m's model, helpers and loss sub-packages are
imported: its top-level `l3m/__init__.py` imports the training engine and data stack (datasets, wandb,
fvcore), which the step does not use (`load_l3m_package`).

    python benchmarks/l3m_step.py --l3m /tmp/l3m/src --config /tmp/l3m/configs/aimv1/001_aim_v1_600M.yaml \
        --batch 64 --compile [--compare summary.json]
    ... --cpu-smoke   # a tiny model on CPU with l3m's dense-mask SDPA path instead of flex attention
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the benchmark imports the project lazily (after its path is set up)
    from shared.config.training import ModelConfig

# ml-l3m's AIMv1 600M, as its config sets it (configs/aimv1/001_aim_v1_600M.yaml, `constants`): the keys
# our ModelConfig maps onto, so that both sides run the same architecture.
L3M_CONSTANTS = ("vision_embed_dim", "vision_num_blocks", "vision_num_heads", "head_embed_dim",
                 "head_num_blocks", "img_size", "patch_size", "num_patches", "prefix_range",
                 "batch_size_per_gpu")


def load_l3m_package(src: str | Path) -> None:
    """Make `import l3m.<sub>` work from ``src`` (the folder holding l3m/) without running
    l3m/__init__.py: the package is registered with its path, and each sub-package's own __init__
    runs when imported (model, helpers, loss)."""
    root = Path(src) / "l3m"
    if not (root / "model").is_dir():
        raise FileNotFoundError(f"no l3m package at {root} (prepare .l3m/ as benchmarks/l3m_step.py says)")
    package = types.ModuleType("l3m")
    package.__path__ = [str(root)]
    package.__file__ = str(root / "__init__.py")
    package.__package__ = "l3m"
    sys.modules["l3m"] = package


def l3m_overrides(model_cfg: ModelConfig, batch: int) -> dict[str, object]:
    """The l3m config keys (dotted) that make its AIMv1 model the architecture of our ``model_cfg``
    (a shared.config.training.ModelConfig) at ``batch`` images per step."""
    n = model_cfg.num_patches
    values = dict(zip(L3M_CONSTANTS, (model_cfg.width, model_cfg.depth, model_cfg.heads, model_cfg.head_width,
                                      model_cfg.head_depth, model_cfg.img_size, model_cfg.patch_size, n,
                                      [1, n - 1], batch), strict=True))
    out: dict[str, object] = {f"constants.{k}": v for k, v in values.items()}
    out["model.meta_model.head.output_dim"] = model_cfg.patch_size ** 2 * 3  # pixels per patch
    out["loss.image_size"] = model_cfg.img_size  # the loss's own patch grid (its default is 224)
    return out


def dense_mask_overrides() -> dict[str, object]:
    """l3m's own non-flex path (a dense prefix mask into SDPA): flex attention needs a compiler on CPU."""
    return {"model.meta_model.preprocessor.blocks.1": {
        "_target_": "l3m.model.preprocessors.mask_builders.PrefixAttentionMaskBuilder",
        "read_key": "encoder_prefix_mask", "write_key": "encoder_prefix_attn_mask",
        "seq_len": "${constants.num_patches}"},
        "model.meta_model.trunk.attn_target.use_flex_attention": False}


def build(config: Path, overrides: dict[str, object], device):
    """(model, criterion, prefix-mask generator, optimizer) from l3m's config with ``overrides``."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    torch.manual_seed(0)
    model = instantiate(cfg.model.meta_model).to(device)
    criterion = instantiate(cfg.loss)
    generator = instantiate(cfg.constants.train_generators[0])
    opt = cfg.optim.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(opt.betas), eps=opt.eps,
                                  weight_decay=opt.weight_decay, fused=device.type == "cuda")
    return cfg, model, criterion, generator, optimizer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--l3m", required=True, help="folder holding ml-l3m's l3m/ package")
    parser.add_argument("--config", required=True, help="ml-l3m's configs/aimv1/001_aim_v1_600M.yaml")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile(model), as l3m's runner does")
    parser.add_argument("--compare", help="gpu_check.sh's summary JSON: print our rows against this one")
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from shared.config.training import ModelConfig
    from training.model.flops import flops_per_image

    load_l3m_package(args.l3m)
    if args.cpu_smoke:
        device = torch.device("cpu")
        ours = ModelConfig(arch=None, width=64, depth=2, heads=2, head_width=64, head_depth=1, img_size=32,
                           patch_size=8)
        args.batch = min(args.batch, 4)
        overrides = {**l3m_overrides(ours, args.batch), **dense_mask_overrides()}
        steps, warmup = 2, 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device (use --cpu-smoke to check the script on CPU)")
        device = torch.device("cuda", torch.cuda.current_device())
        ours = ModelConfig(arch="aim-600m")
        overrides = l3m_overrides(ours, args.batch)
        steps, warmup = args.steps, args.warmup
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = 756e12 if "PCIe" in name else 989e12  # dense bf16, as gpu_check.sh
    cfg, model, criterion, generator, optimizer = build(Path(args.config), overrides, device)
    run = torch.compile(model) if args.compile else model
    n_params = sum(p.numel() for p in model.parameters())
    size = int(cfg.constants.img_size)
    images = torch.randn(args.batch, 3, size, size, device=device)
    amp = torch.bfloat16 if device.type == "cuda" else torch.float32  # l3m: bf16 where supported

    # l3m's loader draws each image's prefix mask in its workers: drawn here before the timing
    mask_batches = [torch.stack([generator() for _ in range(args.batch)]) for _ in range(warmup + steps)]
    if device.type == "cuda":
        mask_batches = [m.pin_memory() for m in mask_batches]

    def step() -> float:
        masks = mask_batches.pop().to(device, non_blocking=True)
        batch = {"image": images, generator.write_key: masks}
        with torch.autocast(device.type, dtype=amp, enabled=device.type == "cuda"):
            output = run(batch)
            loss, _ = criterion(output, model=run)
            del output
            value = loss.item()  # l3m's engine reads the loss every step (its non-finite check)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.optim.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return value

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    dt = (time.perf_counter() - t0) / steps
    ips = args.batch / dt
    flops = flops_per_image(ours, include_head=True)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(f"\nml-l3m AIMv1 ({n_params / 1e6:.0f}M parameters, {name}, batch {args.batch}, "
          f"compile={args.compile}, {warmup} warm-up steps in {t0 - t_start:.0f} s)\n")
    print("| path | images/s | step s | MFU (trunk+head) | peak mem GiB | loss |")
    print("|---|---|---|---|---|---|")
    print(f"| ml-l3m AIMv1 step | {ips:.1f} | {dt:.3f} | {ips * flops / peak:.1%} | {mem:.1f} | {loss:.4f} |")
    if args.cpu_smoke:
        print("(CPU smoke: a tiny l3m model beside our aim-tiny rows; the ratios below only show the wiring)")
    if args.compare and Path(args.compare).is_file():
        ours_rows = json.loads(Path(args.compare).read_text())
        for label, their in sorted(ours_rows.items()):
            print(f"{label}: {their:.1f} images/s = {their / ips:.2f}x ml-l3m's (target >= 1.0x)")
    print(json.dumps({"l3m_images_per_s": ips, "l3m_mfu": ips * flops / peak, "device": name}))
    return 0 if math.isfinite(loss) else 1


if __name__ == "__main__":
    sys.exit(main())
