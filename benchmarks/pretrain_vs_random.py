"""Does demo-scale AIM pretraining beat random weights? The baseline (the same trunk, random weights) is
probed in the same run, with the same probe protocol as `openaim eval`.

Pretraining (`pretrain`, shared with benchmarks/ablations.py): `AIM.forward_loss` (prefix-causal,
next-patch regression) + the training stage's AdamW groups and warm-up + cosine lr (training.optim) on N
distinct mini web scenes drawn at the web's size, resized to the model's and JPEG-encoded, with the
training stage's augmentation (`training.augment.augment`). Probes (`probe_top1`): the mini web benchmark
tasks (written by the generator here: the demo's seed, size and train/test per class), features averaged
over the last `--n-blocks` blocks with bidirectional attention, an attentive-probe grid of 8 (lr x wd) trained
together, setting chosen on a 10% validation split of train, top-1 on test.

    .venv/bin/python benchmarks/pretrain_vs_random.py [--steps 200] [--evals 200] [--lr 1e-3]
        [--no-norm-pix] [--width 128 --depth 4 --heads 4 --head-width 128 --head-depth 1]

Prints one line per evaluated step (random weights first) with top-1 per task, the average, and the gap
to random weights in points. Nothing is written to benchmarks/RESULTS.md: the study there was
assembled by hand from runs of this script.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:  # the project is imported inside the functions
    from shared.config.evaluation import ProbeConfig

TASKS = ("shape", "count", "color", "texture")


def scenes(n: int, scene_size: int, side: int, seed: int) -> list:
    """Pretraining images as the demo's pool holds them: drawn at the web's size, resized to the model's
    (img2dataset's center_crop of a square is a resize), JPEG-encoded."""
    import numpy as np
    from PIL import Image

    from shared.miniweb.scenes import draw_scene, encode, sample_scene

    rng = np.random.default_rng([seed, 99])  # a stream no benchmark image is drawn from
    out = []
    for _ in range(n):
        img = draw_scene(sample_scene(rng), scene_size).resize((side, side), Image.BICUBIC)
        out.append(Image.open(io.BytesIO(encode(img))).convert("RGB"))
    return out


def load_task(bench: Path, task: str, split: str, transform):
    """One mini web task through the registry's loader: (images [n, 3, H, W], labels [n], classes)."""
    import torch

    from evaluation.benchmarks.demo_sets import miniweb

    data = miniweb(bench / f"miniweb-{task}", split)
    images = torch.stack([transform(data.read_image(i).convert("RGB")) for i in range(len(data))])
    return images, torch.from_numpy(data.labels), len(data.classes)


def probe_top1(model, data: dict, n_blocks: int, kind: str = "attentive",
               probe_cfg: ProbeConfig | None = None) -> dict[str, float]:
    """Top-1 per task of a `kind` probe grid on the mean of the last `n_blocks` blocks (bidirectional),
    setting chosen on a fixed 10% of train (`probe_cfg`, default: 30 epochs, batches of 32).
    `data`: task -> ((x_train, y_train, classes), (x_test, y_test, _)), images on the model's device,
    labels on the CPU."""
    import torch

    from evaluation.probe_grid import FeatureSet, run_probe_grid
    from shared.config.evaluation import ProbeConfig

    model.eval()
    blocks = list(range(len(model.blocks) - n_blocks, len(model.blocks)))
    out = {}
    for task, ((xtr, ytr, k), (xte, yte, _)) in data.items():
        # probes train on the CPU, as `openaim eval` trains them on cached features
        ftr, fte = model.extract_features(xtr, blocks).cpu(), model.extract_features(xte, blocks).cpu()
        perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))
        val, train = perm[: len(ytr) // 10], perm[len(ytr) // 10:]
        res = run_probe_grid(kind, FeatureSet(ftr[train], ytr[train]), FeatureSet(ftr[val], ytr[val]),
                             FeatureSet(fte, yte), k, model.cfg.heads,
                             probe_cfg or ProbeConfig(epochs=30, batch_size=32))
        out[task] = res["top1"]
    model.train()
    return out


class StepBatches:
    """Batch `step` (1-based) of pretraining: `batch` of `images` (PIL) drawn with replacement and augmented
    by `training.augment.augment`, from a generator seeded by (seed, step), so batches do not depend on
    which process makes them (a DataLoader with workers yields the same batches as a plain loop)."""

    def __init__(self, images: list, side: int, batch: int, seed: int):
        self.images, self.side, self.batch, self.seed = images, side, batch, seed

    def __getitem__(self, step: int):
        import numpy as np
        import torch

        from training.augment import augment

        rng = np.random.default_rng([self.seed, step])
        picks = rng.integers(0, len(self.images), self.batch)
        return torch.stack([augment(self.images[i], self.side, rng) for i in picks])


def pretrain(model, images: list, steps: int, batch: int, lr: float, seed: int, causal: bool = False,
             evals: set[int] | frozenset = frozenset(), on_eval=None, workers: int = 0) -> float:
    """AIM pretraining as the training stage does it: `model.forward_loss` (prefix lengths from the model's
    generator, or all 1 = plain causal attention when `causal`), AdamW with the recipe's parameter groups
    and its warm-up + cosine lr (training.optim), grad clip 1.0, batches from `StepBatches` (made by
    `workers` DataLoader processes when > 0). Calls `on_eval(step, loss, pretraining seconds so far)` at
    each step in `evals`; returns the pretraining seconds (evals excluded)."""
    import torch
    from torch.utils.data import DataLoader

    from shared.config.training import OptimConfig
    from training.optim import build_optimizer, lr_at, set_lr

    device = next(model.parameters()).device
    optim_cfg = OptimConfig(lr=lr)
    opt = build_optimizer(model, optim_cfg, batch)
    model.seed_prefix_rng(seed)
    model.train()
    batches = DataLoader(StepBatches(images, model.cfg.img_size, batch, seed), batch_size=None,
                         sampler=range(1, steps + 1), num_workers=workers,
                         prefetch_factor=4 if workers else None)
    seconds = 0.0
    t0 = time.perf_counter()
    for step, x in enumerate(batches, start=1):
        set_lr(opt, lr_at(step - 1, steps, lr, optim_cfg))
        x = x.to(device, non_blocking=True)
        prefix = torch.ones(batch, dtype=torch.long) if causal else None
        loss = model.forward_loss(x, prefix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step in evals and on_eval is not None:
            seconds += time.perf_counter() - t0
            on_eval(step, loss.item(), seconds)
            t0 = time.perf_counter()
    return seconds + time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="aim-tiny")
    for name in ("width", "depth", "heads", "head-width", "head-depth"):
        ap.add_argument(f"--{name}", type=int, default=None)
    ap.add_argument("--images", type=int, default=2000, help="distinct pretraining scenes")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--evals", default="", help="comma-separated steps to probe at (the last step always)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-norm-pix", action="store_true",
                    help="regress raw (not per-patch normalised) pixels")
    ap.add_argument("--n-blocks", type=int, default=3, help="probe the mean of the last N blocks (demo: 3)")
    ap.add_argument("--train-per-class", type=int, default=40)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--scene-size", type=int, default=96,
                    help="side the scenes are drawn at (web.image_size)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from evaluation.features import eval_transform
    from shared.config.training import ModelConfig
    from shared.miniweb.datasets import write_bench
    from training.model.aim import build_aim

    torch.set_num_threads(max(1, torch.get_num_threads()))
    shape = {k: v for k, v in {"width": args.width, "depth": args.depth, "heads": args.heads,
                               "head_width": args.head_width, "head_depth": args.head_depth}.items() if v}
    model_cfg = ModelConfig(arch=args.arch, norm_pix_loss=not args.no_norm_pix, **shape)
    torch.manual_seed(args.seed)
    model = build_aim(model_cfg)
    side = model.cfg.img_size
    transform = eval_transform(side)
    with tempfile.TemporaryDirectory(prefix="openaim-pvr-") as tmp:
        write_bench(Path(tmp), args.seed, args.scene_size, args.train_per_class, args.test_per_class)
        data = {t: (load_task(Path(tmp) / "bench", t, "train", transform),
                    load_task(Path(tmp) / "bench", t, "test", transform)) for t in TASKS}

    def report(step: int, seconds: float, res: dict[str, float], baseline: float | None) -> float:
        avg = sum(res.values()) / len(res)
        gap = "" if baseline is None else f"  vs random {100 * (avg - baseline):+.1f} points"
        print(f"step {step:5d} ({seconds:6.0f} s pretraining): "
              + " ".join(f"{t} {100 * v:5.1f}" for t, v in res.items()) + f"  avg {100 * avg:5.1f}{gap}",
              flush=True)
        return avg

    baseline = report(0, 0.0, probe_top1(model, data, args.n_blocks), None)
    images = scenes(args.images, args.scene_size, side, args.seed)
    evals = {int(s) for s in args.evals.split(",") if s} | {args.steps}

    def on_eval(step: int, loss: float, seconds: float) -> None:
        report(step, seconds, probe_top1(model, data, args.n_blocks), baseline)
        print(f"           loss {loss:.4f}", flush=True)

    pretrain(model, images, args.steps, args.batch, args.lr, args.seed, evals=evals, on_eval=on_eval)


if __name__ == "__main__":
    main()
