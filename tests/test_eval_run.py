"""`openaim eval` end to end on small data: a briefly pretrained tiny AIM vs random weights, result files,
cached reruns, intermediate checkpoints, missing benchmarks, and one-line CLI errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from shared.config.root import OpenAIMConfig

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("disc", "square", "triangle", "bar")
PRETRAIN_STEPS = 100  # keeps the fixture to about a minute on 2 idle cores


def shape_image(rng: np.random.Generator, shape: str, size: int = 32) -> Image.Image:
    """A mini-web-like picture: a coloured shape of random size/place on a smooth noisy background."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    bg = rng.uniform(0, 1, 3) * 0.6 + np.stack([xx, yy, xx * yy], -1) * rng.uniform(-0.3, 0.3, 3)
    img = Image.fromarray((np.clip(bg + rng.normal(0, 0.04, bg.shape), 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour)
    else:
        draw.rectangle([cx - r, cy - r * 0.25, cx + r, cy + r * 0.25], fill=colour)
    return img


def write_shape_benchmark(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for shape in SHAPES:
            d = root / split / shape
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape_image(rng, shape).save(d / f"{i:04d}.png")
    (root / "train" / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")


def pretrain_tiny_aim(out: Path, steps: int, seed: int = 0) -> None:
    """A few hundred steps of the real AIM objective with plain AdamW; writes run-dir checkpoints."""
    from evaluation.features import eval_transform
    from shared.config.training import ModelConfig
    from training.checkpoint import step_dir, write_checkpoint
    from training.model.aim import build_aim

    torch.manual_seed(seed)
    cfg = ModelConfig(arch="aim-tiny", width=64, depth=4, heads=2, head_width=64, head_depth=1, img_size=32,
                      patch_size=8)
    model = build_aim(cfg).train()
    rng = np.random.default_rng(seed + 100)
    to_tensor = eval_transform(32)
    from sklearn.datasets import load_digits

    digits = np.clip(load_digits().images[:600] * 16, 0, 255).astype(np.uint8).repeat(4, 1).repeat(4, 2)
    pool = [to_tensor(shape_image(rng, SHAPES[i % 4])) for i in range(600)]
    pool += [to_tensor(Image.fromarray(d).convert("RGB")) for d in digits]
    data = torch.stack(pool)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        lr = 2e-3 * min(1.0, step / 20) * 0.5 * (1 + np.cos(np.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = data[torch.randint(0, len(data), (32,), generator=g)]
        batch = torch.where(torch.rand(32, 1, 1, 1, generator=g) < 0.5, batch, batch.flip(3))
        loss = model.forward_loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step == steps // 4:
            write_checkpoint(step_dir(out, step), model.state_dict(), cfg, {"step": torch.tensor(step)})
    write_checkpoint(out / "final", model.state_dict(), cfg, None)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One full evaluation: trained (final + one intermediate) and random-init on digits + shapes."""
    torch.set_num_threads(2)
    from shared.config.loading import load_config

    work = tmp_path_factory.mktemp("eval")
    bench = work / "shapes"
    write_shape_benchmark(bench, {"train": 24, "test": 10})
    t0 = time.perf_counter()
    pretrain_tiny_aim(work / "run" / "training", steps=PRETRAIN_STEPS)
    pretrain_s = time.perf_counter() - t0
    cfg = load_config(None, [
        f"workdir={work / 'run'}", "name=tiny",
        f"evaluation.benchmarks=[digits, 'imagefolder:{bench}', cifar-10]",
        f"evaluation.data_root={work / 'nothing-here'}",
        "evaluation.n_blocks=2", "evaluation.batch_size=128", "evaluation.max_train_per_benchmark=400",
        "evaluation.probe.epochs=20", "evaluation.probe.batch_size=64",
        "evaluation.probe.lrs=[1e-3, 3e-3, 1e-2, 3e-2]", "evaluation.probe.weight_decays=[1e-4, 1e-2]",
    ])
    from evaluation.run import evaluate_from_config

    t0 = time.perf_counter()
    csv_path = evaluate_from_config(cfg)
    first_s = time.perf_counter() - t0
    return {"cfg": cfg, "csv": csv_path, "bench": bench, "first_s": first_s, "pretrain_s": pretrain_s}


def _records(cfg: OpenAIMConfig) -> dict[tuple[str, str], dict]:
    from evaluation.results import load_results

    return {(r["checkpoint"], r["benchmark"]): r for r in load_results(cfg.eval_dir)}


def test_result_files_have_the_contracted_fields(evaluated):
    cfg = evaluated["cfg"]
    recs = _records(cfg)
    checkpoints = {c for c, _ in recs}
    assert checkpoints == {"tiny", f"tiny-step_{PRETRAIN_STEPS // 4}", "random-init"}
    rec = recs[("tiny", "digits")]
    for key in ("checkpoint", "checkpoint_path", "checkpoint_hash", "step", "benchmark", "blocks", "n_train",
                "n_val", "n_test", "skipped_corrupt", "seconds", "probes"):
        assert key in rec, key
    assert rec["blocks"] == [2, 3] and rec["step"] == cfg.training.steps
    assert recs[(f"tiny-step_{PRETRAIN_STEPS // 4}", "digits")]["step"] == PRETRAIN_STEPS // 4
    assert rec["n_train"] == 400 and rec["n_test"] == 539 and 100 < rec["n_val"] < 150
    for probe in ("attentive", "linear"):
        res = rec["probes"][probe]
        assert 0 <= res["top1"] <= res["top5"] <= 1 and res["lr"] in (1e-3, 3e-3, 1e-2, 3e-2)
        assert res["val_top1"] == max(res["grid_val_top1"])
    shapes = [r for (c, b), r in recs.items() if c == "tiny" and b.startswith("imagefolder-shapes")]
    assert len(shapes) == 1 and shapes[0]["skipped_corrupt"] == 1 and shapes[0]["n_test"] == 40
    assert recs[("random-init", "digits")]["checkpoint_hash"] != rec["checkpoint_hash"]

    missing = json.loads((cfg.eval_dir / "missing.json").read_text())
    assert [m["benchmark"] for m in missing] == ["cifar-10"]
    assert set(missing[0]) >= {"benchmark", "title", "path", "how_to_get"}

    with open(evaluated["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["checkpoint", "step", "benchmark", "probe", "top1", "top5",
                             "mean_per_class_recall", "lr", "weight_decay", "n_train", "n_test"]
    assert len(rows) == 3 * 2 * 2
    feats = list((cfg.eval_dir / "features").rglob("*.safetensors"))
    assert len(feats) == 3 * 2 * 3  # checkpoints x benchmarks x splits


def test_probe_quality_on_digits(evaluated):
    """Sanity of the whole chain on a set where frozen features carry the label: well above chance (0.1),
    and the attentive probe not behind the linear one by more than the test set can tell apart (two
    standard errors of the difference on its 539 images: ~3 points). (A trained-vs-random margin needs
    longer pretraining than a test affords on 2 cores; the figures are printed for the record.)"""
    recs = _records(evaluated["cfg"])
    for ckpt in ("tiny", "random-init"):
        rec = recs[(ckpt, "digits")]
        att, lin = (rec["probes"][p]["top1"] for p in ("attentive", "linear"))
        print(f"\n{ckpt}: digits attentive {att:.3f} linear {lin:.3f}")
        assert att > 0.6 and lin > 0.4
        stderr = ((att * (1 - att) + lin * (1 - lin)) / rec["n_test"]) ** 0.5
        assert att > lin - 2 * stderr


def test_rerun_reuses_features_and_probe_results(evaluated, monkeypatch):
    from evaluation import probe_grid
    from evaluation.run import evaluate_from_config
    from training.model.aim import AIM

    cfg = evaluated["cfg"]
    before = {p: p.stat().st_mtime_ns for p in (cfg.eval_dir / "results").rglob("*.json")}

    def boom(*a, **k):
        raise AssertionError("recomputed on a rerun")

    monkeypatch.setattr(AIM, "extract_features", boom)
    monkeypatch.setattr(probe_grid, "run_probe_grid", boom)
    t0 = time.perf_counter()
    evaluate_from_config(cfg)
    rerun_s = time.perf_counter() - t0
    assert rerun_s < evaluated["first_s"] / 3
    assert before == {p: p.stat().st_mtime_ns for p in (cfg.eval_dir / "results").rglob("*.json")}

    # A changed probe config retrains the probes on the cached features (the trunk stays idle).
    monkeypatch.undo()
    monkeypatch.setattr(AIM, "extract_features", boom)
    cfg2 = cfg.model_copy(deep=True)
    cfg2.evaluation.probe.epochs = 2
    cfg2.evaluation.probe.kind = "linear"
    cfg2.evaluation.random_baseline = False
    cfg2.evaluation.evaluate_intermediate = False
    evaluate_from_config(cfg2)
    rec = _records(cfg2)[("tiny", "digits")]
    assert list(rec["probes"]) == ["linear"]


def _openaim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "openaim", *args], check=False, capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def test_cli_unknown_benchmark_is_a_one_line_config_error(tmp_path):
    res = _openaim("eval", "--set", f"workdir={tmp_path}", "--set", "evaluation.benchmarks=[no-such-set]",
                   cwd=tmp_path)
    assert res.returncode == 2
    assert "no-such-set" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_cli_wrong_shape_checkpoint_is_one_line_and_keeps_results(evaluated, tmp_path):
    cfg = evaluated["cfg"]
    bad = tmp_path / "bad"
    final = cfg.training_dir / "final"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((final / "model.safetensors").read_bytes())
    conf = json.loads((final / "config.json").read_text())
    conf["width"], conf["heads"] = 48, 2
    (bad / "config.json").write_text(json.dumps(conf))
    csv_before = evaluated["csv"].read_bytes()
    res = _openaim("eval", "--set", f"workdir={cfg.workdir}", "--set", f"evaluation.checkpoints=['{bad}']",
                   "--set", "evaluation.benchmarks=[digits]", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "bad" in res.stderr
    assert evaluated["csv"].read_bytes() == csv_before  # nothing already written is lost

    (bad / "model.safetensors").write_bytes(b"garbage")
    res = _openaim("eval", "--set", f"workdir={cfg.workdir}", "--set", f"evaluation.checkpoints=['{bad}']",
                   "--set", "evaluation.benchmarks=[digits]", cwd=tmp_path)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
