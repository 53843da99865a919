"""The paper's relations at a small scale, each over several seeds, each difference with its standard error.

1. lower pretraining loss <-> better probe top-1 across the checkpoints of a run (Figure 1's relation);
2. prefix-causal pretraining beats causal pretraining, both probed with bidirectional attention;
3. normalised-pixel targets beat raw-pixel targets;
4. the attentive probe beats the linear probe (on the prefix-causal, normalised-pixel trunks).

Per seed, three pretraining runs share the initial weights and the batches (paired comparisons): the
reference (prefix-causal, normalised pixels), causal (every prefix length 1: plain causal attention, the
same loss over every target), and raw pixels. Pretraining is `benchmarks.pretrain_vs_random.pretrain`
(`AIM.forward_loss`, the recipe's AdamW groups and warm-up + cosine lr, `training.augment.augment`) on
the images of scikit-learn's digits train split (labels unused); probing is its `probe_top1` (eval's
transform and probe grid, trained on the CPU: features = mean of the last `n_blocks` blocks,
bidirectional; 8 settings of lr x wd, 30 epochs of batches of 64, chosen on 10% of train; top-1 on the
digits test split). The loss of relation 1 is the held-out
next-patch loss on the test images with fixed prefix lengths, measured at each probed checkpoint.

A difference "holds" when it is above t(0.975, n-1) standard errors (a two-sided 95% paired t-test over
n seeds), "reversed" when below minus that, else "within noise".

    .venv/bin/python benchmarks/ablations.py --write-results  # the CPU study -> RESULTS.md, ~20 min, 2 cores
    .venv/bin/python benchmarks/ablations.py --smoke        # seconds: a tiny run that checks the plumbing
    python benchmarks/ablations.py --device cuda            # the larger GPU preset (<= 3 min on one H100)

Needs torch, torchvision + Pillow (eval's transform, the recipe's augmentation), numpy, scipy and
scikit-learn (digits), pydantic and pyyaml (the configs), and safetensors (evaluation.features imports
training.checkpoint); nothing else (no open_clip, faiss, webdataset, rich).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from scipy import stats

from benchmarks.pretrain_vs_random import pretrain, probe_top1
from benchmarks.results_md import write_section
from evaluation.benchmarks.demo_sets import digits
from evaluation.features import eval_transform
from shared.config.evaluation import ProbeConfig
from shared.config.training import ModelConfig
from training.model.aim import build_aim
from training.model.prefix import sample_prefix_lengths


@dataclass(frozen=True)
class Preset:
    width: int
    depth: int
    heads: int
    img_size: int
    patch_size: int
    head_width: int
    head_depth: int
    steps: int
    batch: int
    lr: float
    seeds: int
    checkpoints: int  # probed checkpoints per reference run (relation 1), the last one included
    n_blocks: int
    workers: int  # DataLoader processes making the augmented batches
    budget_s: float  # no new seed starts once the run could overrun this (>= 3 seeds always run)
    probe_epochs: int = 30  # eval's probe grid (8 lr x wd settings), batches of 64; fewer only in --smoke
    threads: int | None = None  # torch CPU threads (None: torch's default)


PRESETS = {
    # measured on the 2-core dev machine: see benchmarks/RESULTS.md (Ablations)
    "cpu": Preset(width=128, depth=4, heads=4, img_size=32, patch_size=8, head_width=128, head_depth=1,
                  steps=400, batch=64, lr=1e-3, seeds=3, checkpoints=4, n_blocks=2, workers=0, budget_s=1500,
                  threads=1),  # 1 thread: on 2 cores shared with other jobs, 2 threads ran 5-10x slower
    # aim-tiny's trunk and head at its 64 px / 64 patches, 5 seeds if the time allows
    "cuda": Preset(width=192, depth=6, heads=3, img_size=64, patch_size=8, head_width=256, head_depth=2,
                   steps=400, batch=128, lr=1e-3, seeds=5, checkpoints=4, n_blocks=3, workers=12,
                   budget_s=150),
    "smoke": Preset(width=32, depth=2, heads=2, img_size=16, patch_size=8, head_width=32, head_depth=1,
                    steps=4, batch=8, lr=1e-3, seeds=3, checkpoints=2, n_blocks=1, workers=0, budget_s=600,
                    probe_epochs=1, threads=1),
}
ARMS = ("prefix", "causal", "raw")  # reference, relation 2's alternative, relation 3's alternative


def model_config(p: Preset, norm_pix: bool) -> ModelConfig:
    # sdpa everywhere: the same exact kernel on CPU and GPU, and no flex compile time in a 3-minute budget
    return ModelConfig(arch=None, width=p.width, depth=p.depth, heads=p.heads, img_size=p.img_size,
                       patch_size=p.patch_size, head_width=p.head_width, head_depth=p.head_depth,
                       norm_eps=1e-5, norm_pix_loss=norm_pix, attention_backend="sdpa")


def load_digits(p: Preset, device: str, limit: int | None):
    """(pretraining PIL images, probe data in `probe_top1`'s shape, held-out test images)."""
    transform = eval_transform(p.img_size)
    train, test = digits(None, "train"), digits(None, "test")
    n_train, n_test = len(train), len(test)
    if limit is not None:
        n_train, n_test = min(limit, n_train), min(limit, n_test)
    pil = [train.read_image(i).convert("RGB") for i in range(n_train)]
    xtr = torch.stack([transform(img) for img in pil]).to(device)
    xte = torch.stack([transform(test.read_image(i).convert("RGB")) for i in range(n_test)]).to(device)
    ytr = torch.as_tensor(train.labels[:n_train]).long()
    yte = torch.as_tensor(test.labels[:n_test]).long()
    return pil, {"digits": ((xtr, ytr, 10), (xte, yte, 10))}, xte


@torch.no_grad()
def heldout_loss(model, images: torch.Tensor, seed: int = 1234) -> float:
    """Next-patch loss on fixed images with fixed prefix lengths (the same for every checkpoint)."""
    model.eval()
    prefix = sample_prefix_lengths(len(images), model.cfg.num_patches, torch.Generator().manual_seed(seed))
    losses = [model.forward_loss(images[i:i + 256], prefix[i:i + 256]).item() * len(images[i:i + 256])
              for i in range(0, len(images), 256)]
    model.train()
    return sum(losses) / len(images)


def run_seed(p: Preset, seed: int, device: str, pil, data, xte) -> dict:
    """The three arms of one seed: {arm: top-1}, the linear probe's top-1, and the reference's curve."""
    probe_cfg = ProbeConfig(epochs=p.probe_epochs, batch_size=64)
    every = max(1, p.steps // p.checkpoints)
    evals = {every * (i + 1) for i in range(p.checkpoints - 1)} | {p.steps}
    out: dict = {"curve": []}
    for arm in ARMS:
        torch.manual_seed(seed)  # the same initial weights in every arm of this seed
        model = build_aim(model_config(p, norm_pix=arm != "raw")).to(device)
        t0 = time.perf_counter()

        def on_eval(step: int, _loss: float, _seconds: float, model=model) -> None:
            top1 = probe_top1(model, data, p.n_blocks, probe_cfg=probe_cfg)["digits"]
            out["curve"].append((step, heldout_loss(model, xte), top1))

        seconds = pretrain(model, pil, p.steps, p.batch, p.lr, seed, causal=arm == "causal",
                           evals=evals if arm == "prefix" else frozenset(), on_eval=on_eval,
                           workers=p.workers)
        if arm == "prefix":
            out["prefix"] = out["curve"][-1][2]
            out["linear"] = probe_top1(model, data, p.n_blocks, "linear", probe_cfg)["digits"]
        else:
            out[arm] = probe_top1(model, data, p.n_blocks, probe_cfg=probe_cfg)["digits"]
        print(f"seed {seed} {arm:6s}: top-1 {100 * out[arm]:5.1f}  ({seconds:5.0f} s pretraining, "
              f"{time.perf_counter() - t0:5.0f} s with probes)", flush=True)
    curve = ", ".join(f"step {s}: loss {lo:.4f} top-1 {100 * t:.1f}" for s, lo, t in out["curve"])
    print(f"seed {seed} prefix curve: {curve}; linear probe top-1 {100 * out['linear']:.1f}", flush=True)
    return out


def verdict(values: list[float]) -> tuple[float, float, str]:
    """(mean, standard error, verdict) of paired differences over seeds."""
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    bar = stats.t.ppf(0.975, n - 1) * se if n > 1 else float("inf")
    word = "holds" if mean > bar else "reversed" if mean < -bar else "within noise"
    return mean, se, word


def summarise(results: list[dict]) -> list[str]:
    n = len(results)
    lines = [f"{n} seeds; mean difference ± one standard error (paired by seed); verdict at a 95% t-test"]
    # relation 1: within each run, the correlation of -loss and top-1 over the checkpoints, and the change
    # from the first to the last checkpoint
    corr = [float(torch.corrcoef(torch.tensor([[-lo for _, lo, _ in r["curve"]],
                                               [t for _, _, t in r["curve"]]]))[0, 1]) for r in results]
    corr = [0.0 if math.isnan(c) else c for c in corr]  # a flat curve: no relation
    m, se, word = verdict(corr)
    lines.append(f"1. lower loss <-> higher top-1 across checkpoints: corr(-loss, top-1) = {m:+.2f} "
                 f"± {se:.2f} ({word})")
    dloss = [r["curve"][-1][1] - r["curve"][0][1] for r in results]
    dtop = [100 * (r["curve"][-1][2] - r["curve"][0][2]) for r in results]
    m1, se1, _ = verdict(dloss)
    m2, se2, word2 = verdict(dtop)
    first, last = results[0]["curve"][0][0], results[0]["curve"][-1][0]
    lines.append(f"   step {first} -> {last}: loss {m1:+.4f} ± {se1:.4f}, top-1 {m2:+.1f} ± {se2:.1f} points"
                 f" ({word2})")
    for label, a, b in (
            ("2. prefix-causal - causal pretraining (both probed bidirectionally)", "prefix", "causal"),
            ("3. normalised - raw pixel targets", "prefix", "raw"),
            ("4. attentive - linear probe", "prefix", "linear")):
        m, se, word = verdict([100 * (r[a] - r[b]) for r in results])
        mean_a, mean_b = (100 * statistics.fmean(r[key] for r in results) for key in (a, b))
        lines.append(f"{label}: {m:+.1f} ± {se:.1f} points ({mean_a:.1f} vs {mean_b:.1f}; {word})")
    return lines


def section_title(device: str) -> str:
    return "## Ablations" if device == "cpu" else "## Ablations (GPU)"


def results_section(p: Preset, device: str, results: list[dict], summary: list[str], total: float,
                    n_test: int) -> str:
    """An Ablations section of RESULTS.md (one per device kind): what ran, every seed's numbers, the four
    relations."""
    shape = (f"{p.width} wide, {p.depth} blocks, {p.heads} heads, {p.img_size} px / patch {p.patch_size}, "
             f"head {p.head_width} x {p.head_depth}")
    rows = [f"| {seed} | {100 * r['prefix']:.1f} | {100 * r['causal']:.1f} | {100 * r['raw']:.1f} | "
            f"{100 * r['linear']:.1f} | " + ", ".join(f"{lo:.4f} / {100 * t:.1f}" for _, lo, t in r["curve"])
            + " |" for seed, r in enumerate(results)]
    steps = ", ".join(str(s) for s, _, _ in results[0]["curve"])
    return "\n".join([
        section_title(device), "",
        (f"`benchmarks/ablations.py` on {device} (torch {torch.__version__}, {torch.get_num_threads()} "
         f"threads), {total / 60:.1f} min: trunk {shape}; {p.steps} steps of {p.batch} digits images "
         f"per run, lr {p.lr:g}; probes on the mean of the last {p.n_blocks} blocks; test = digits test "
         f"split ({n_test} images). Top-1 in %, attentive probe unless named."), "",
        (f"| seed | prefix-causal, norm-pix | causal | raw pixels | linear probe (prefix-causal) | "
         f"held-out loss / top-1 at steps {steps} |"),
        "|---|---|---|---|---|---|", *rows, "", "```", *summary, "```", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda picks the larger preset)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run that only checks the plumbing")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's pretraining steps")
    ap.add_argument("--seeds", type=int, default=None, help="override the preset's number of seeds (>= 3)")
    ap.add_argument("--write-results", action="store_true",
                    help="rewrite the device's Ablations section of benchmarks/RESULTS.md (keeps ### parts)")
    args = ap.parse_args()
    device = args.device
    preset = PRESETS["smoke" if args.smoke else "cuda" if device.startswith("cuda") else "cpu"]
    if args.steps or args.seeds:
        given = {k: v for k, v in (("steps", args.steps), ("seeds", args.seeds)) if v}
        preset = Preset(**{**preset.__dict__, **given})
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if preset.threads:
        torch.set_num_threads(preset.threads)
    print(f"preset {preset} on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
          flush=True)
    started = time.perf_counter()
    pil, data, xte = load_digits(preset, device, limit=64 if args.smoke else None)
    results: list[dict] = []
    for seed in range(preset.seeds):
        elapsed = time.perf_counter() - started
        per_seed = elapsed / max(1, seed)
        if seed >= 3 and elapsed + per_seed > preset.budget_s:
            print(f"stopping after {seed} seeds: another would pass the {preset.budget_s:.0f} s budget",
                  flush=True)
            break
        results.append(run_seed(preset, seed, device, pil, data, xte))
    total = time.perf_counter() - started
    print(f"total {total:.0f} s", flush=True)
    summary = summarise(results)
    for line in summary:
        print(line, flush=True)
    if args.write_results:
        section = results_section(preset, device, results, summary, total, len(xte))
        write_section(section_title(device), section, keep="### ")


if __name__ == "__main__":
    main()
