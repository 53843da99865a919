"""Evaluation speed: probes trained together, and cached reruns. Prints ratios vs baselines run here.

  1. grid: K=8 attentive probes trained together (stacked, one forward/backward, stacked AdamW) vs
     one plain ``AttentiveProbe`` with torch.optim.AdamW on the same batches (target: <= 1.5x), and
     vs training the 8 plain probes one after the other.
  2. cache: `evaluate_from_config` on the bundled digits set, first run vs rerun (features and probe
     results cached).

    .venv/bin/python benchmarks/eval_bench.py [--n 2048] [--tokens 64] [--dim 192] [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_grid(n: int, tokens: int, dim: int, heads: int, classes: int, epochs: int, batch: int) -> dict:
    import torch

    from evaluation.probe_grid import FeatureSet, train_probe_grid
    from evaluation.probes import AttentiveProbe
    from shared.config.evaluation import ProbeConfig

    g = torch.Generator().manual_seed(0)
    data = FeatureSet(torch.randn(n, tokens, dim, generator=g).half(),
                      torch.randint(0, classes, (n,), generator=g))
    cfg = ProbeConfig(lrs=[1e-4, 3e-4, 1e-3, 3e-3], weight_decays=[1e-4, 1e-2], epochs=epochs,
                      batch_size=batch)

    def plain_probe(lr: float, wd: float) -> None:
        torch.manual_seed(0)
        probe = AttentiveProbe(dim, heads, classes).train()
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=wd)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(n // batch):
                idx = order[i * batch:(i + 1) * batch]
                loss = torch.nn.functional.cross_entropy(probe(data.feats[idx].float()), data.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    timed(lambda: plain_probe(1e-3, 1e-2))  # warm-up
    one = min(timed(lambda: plain_probe(1e-3, 1e-2)) for _ in range(2))
    grid = min(timed(lambda: train_probe_grid("attentive", data, classes, heads, cfg)) for _ in range(2))
    stack1 = timed(lambda: train_probe_grid("attentive", data, classes, heads, cfg, settings=[(1e-3, 1e-2)]))
    return {"one_plain_s": one, "grid8_s": grid, "stack1_s": stack1,
            "grid8_vs_one": grid / one, "grid8_vs_8_sequential": grid / (8 * one)}


def bench_cache(max_train: int) -> dict:
    import torch

    from evaluation.run import evaluate_from_config
    from shared.config.loading import load_config
    from shared.config.training import ModelConfig
    from training.checkpoint import write_checkpoint
    from training.model.aim import build_aim

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model_cfg = ModelConfig(arch="aim-tiny", img_size=32, patch_size=8)
        write_checkpoint(Path(tmp) / "ckpt", build_aim(model_cfg).state_dict(), model_cfg, None)
        cfg = load_config(None, [f"workdir={tmp}/run", "evaluation.benchmarks=[digits]",
                                 f"evaluation.checkpoints=['{tmp}/ckpt']", "evaluation.random_baseline=false",
                                 f"evaluation.max_train_per_benchmark={max_train}", "evaluation.n_blocks=3",
                                 "evaluation.probe.epochs=5"])
        start = time.perf_counter()
        evaluate_from_config(cfg)
        first = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_from_config(cfg)
        rerun = time.perf_counter() - start
    return {"first_s": first, "rerun_s": rerun, "rerun_vs_first": rerun / first}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-train", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = bench_grid(args.n, args.tokens, args.dim, args.heads, args.classes, args.epochs, args.batch)
    print(f"grid  n={args.n} tokens={args.tokens} dim={args.dim} epochs={args.epochs} batch={args.batch}")
    print(f"  one plain probe (torch AdamW)      {g['one_plain_s']:.2f} s")
    print(f"  K=1 stacked probe                  {g['stack1_s']:.2f} s")
    print(f"  K=8 stacked grid                   {g['grid8_s']:.2f} s")
    print(f"  ratio K=8 grid / one probe         {g['grid8_vs_one']:.2f}x  (target <= 1.5x)")
    print(f"  ratio K=8 grid / 8 probes in turn  {g['grid8_vs_8_sequential']:.2f}x")
    c = bench_cache(args.max_train)
    print(f"cache digits (train capped at {args.max_train}), 1 checkpoint, attentive + linear grids")
    print(f"  first run {c['first_s']:.2f} s, rerun {c['rerun_s']:.2f} s, "
          f"ratio rerun/first {c['rerun_vs_first']:.3f}")


if __name__ == "__main__":
    main()
