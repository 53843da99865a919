"""`openaim eval` with one benchmark that is on disk but cannot be read: every other benchmark is evaluated
and written, the failure is recorded with its reason (failed.json, then the report's Missing/Failed table),
and the command ends with one line on stderr and a non-zero exit."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmark_fixtures.indexed import make_food101
from tests.benchmark_fixtures.wilds import make_fmow
from tests.test_eval_run import pretrain_tiny_aim

ROOT = Path(__file__).resolve().parents[1]


def test_one_unreadable_benchmark_does_not_stop_the_others(tmp_path):
    pretrain_tiny_aim(tmp_path / "model", steps=4)
    data = tmp_path / "data"
    make_fmow(data / "fmow_v1.1")
    # a damaged download: the csv is there (so the set counts as present) but its rows are cut short
    csv_path = data / "fmow_v1.1" / "rgb_metadata.csv"
    csv_path.write_text(csv_path.read_text().splitlines()[0].replace("timestamp", "timestmp") + "\n")
    make_food101(data / "food-101")
    workdir = tmp_path / "run"
    sets = [
        f"workdir={workdir}",
        f"evaluation.checkpoints=['{tmp_path / 'model' / 'final'}']",
        "evaluation.benchmarks=[fmow, digits, food-101, cifar-10]",
        f"evaluation.data_root={data}",
        "evaluation.n_blocks=1",
        "evaluation.max_train_per_benchmark=60",
        "evaluation.probe.kind=linear",
        "evaluation.probe.epochs=1",
        "evaluation.probe.lrs=[0.001]",
        "evaluation.probe.weight_decays=[0.0001]",
        "evaluation.probe.val_fraction=0.3",
        "report.title=failures",
    ]
    args = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "openaim", "eval", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr and "fmow" in last and "timestamp" in last, res.stderr[-2000:]

    eval_dir = workdir / "eval"
    with open(eval_dir / "results.csv") as f:
        evaluated = {row["benchmark"] for row in csv.DictReader(f)}
    assert evaluated == {"digits", "food-101"}  # the sets after the failing one were still evaluated
    failed = json.loads((eval_dir / "failed.json").read_text())
    assert [f["benchmark"] for f in failed] == ["fmow"]
    assert "timestamp" in failed[0]["reason"] and failed[0]["path"] == str(data / "fmow_v1.1")
    missing = json.loads((eval_dir / "missing.json").read_text())
    assert [m["benchmark"] for m in missing] == ["cifar-10"]
    assert "<data_root>" not in missing[0]["how_to_get"] and str(data) in missing[0]["how_to_get"]
    info = json.loads((eval_dir / "run_info.json").read_text())
    assert info["torch"] and info["device"] == "cpu" and info["seconds"] > 0
    assert info["config"]["evaluation"]["data_root"] == str(data)

    # the report names the failure and its reason in the Missing/Failed table
    rep = subprocess.run(
        [sys.executable, "-m", "openaim", "report", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (workdir / "report" / "report.md").read_text()
    section = md.split("### Missing or failed benchmarks", 1)[1]
    fmow_row = next(line for line in section.splitlines() if line.startswith("| ") and "fmow" in line)
    assert "failed" in fmow_row and "timestamp" in fmow_row
    assert any("cifar-10" in line and "not found" in line for line in section.splitlines())
