"""benchmarks/ablations.py: the study's plumbing at a tiny size, its verdict rule, and its batches."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.ablations import PRESETS, verdict
from benchmarks.pretrain_vs_random import StepBatches

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_every_relation_with_its_standard_error():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablations.py"), "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert sum(line.startswith("seed ") and "top-1" in line for line in lines) == 3 * 4  # 3 arms + curve
    for number in ("1. ", "2. ", "3. ", "4. "):
        (line,) = [line for line in lines if line.startswith(number)]
        assert "±" in line and any(w in line for w in ("holds", "reversed", "within noise")), line


def test_verdict_is_a_paired_t_test():
    assert verdict([1.0, 1.1, 0.9])[2] == "holds"
    assert verdict([-1.0, -1.1, -0.9])[2] == "reversed"
    mean, se, word = verdict([1.0, -0.5, 0.2])
    assert word == "within noise" and abs(mean - 0.7 / 3) < 1e-12 and se > 0
    # 3 seeds: t(0.975, 2) = 4.30 standard errors; a 3-SE difference is not enough
    assert verdict([3.0, 2.0, 4.0])[2] == "holds" and verdict([1.0, 4.0, -0.5])[2] == "within noise"


def test_step_batches_do_not_depend_on_the_worker_count():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(5)]
    made = StepBatches(images, 16, 4, seed=3)
    plain = [made[step] for step in range(1, 4)]
    loader = DataLoader(made, batch_size=None, sampler=range(1, 4), num_workers=2)
    for a, b in zip(plain, loader, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(plain[0], plain[1]) and plain[0].shape == (4, 3, 16, 16)


def test_gpu_preset_is_larger_than_the_cpu_one():
    cpu, cuda = PRESETS["cpu"], PRESETS["cuda"]
    assert cuda.width * cuda.depth > cpu.width * cpu.depth and cuda.img_size > cpu.img_size
    assert min(p.seeds for p in PRESETS.values()) >= 3
