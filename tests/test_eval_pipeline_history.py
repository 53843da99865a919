"""`openaim run` twice on the served mini web with a different selection fraction: the second run archives
the first, and the archive keeps the first run's own curation manifest (fraction, kept count), not the
one curation rewrote for the second run; the report's runs table shows both. A third run with a damaged
benchmark still writes the report (with the failure) and exits non-zero."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from shared.config import load_config
from shared.miniweb.generate import generate_web
from shared.miniweb.server import serve_in_background
from tests.benchmark_fixtures.wilds import make_fmow

ROOT = Path(__file__).resolve().parents[1]
# The smallest pipeline that still runs every stage for real: a small mini web, our own filter network,
# a few training steps of a narrow trunk, one bundled benchmark with a one-epoch linear probe.
SMALL = [
    "web.n_images=300",
    "web.hq_size=200",
    "web.bench_train_per_class=2",
    "web.bench_test_per_class=2",
    "web.slow_seconds=2",
    "curation.download.timeout=2",
    "curation.download.samples_per_shard=200",
    "curation.train_filter.epochs=2",
    "training.model.width=32",
    "training.model.depth=2",
    "training.model.heads=2",
    "training.model.head_width=32",
    "training.model.head_depth=1",
    "training.model.img_size=32",
    "training.steps=4",
    "training.checkpoint_every=2",
    "training.global_batch_size=8",
    "training.log_every=1",
    "evaluation.benchmarks=[digits]",
    "evaluation.probe.kind=linear",
    "evaluation.probe.epochs=1",
    "evaluation.probe.lrs=[0.001]",
    "evaluation.probe.weight_decays=[0.0001]",
    "evaluation.max_train_per_benchmark=100",
    "evaluation.n_blocks=1",
    "evaluation.evaluate_intermediate=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(overrides: list[str]) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "openaim", "run", *[a for o in overrides for a in ("--set", o)]]
    return subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_run_twice_archives_the_first_runs_own_curation(tmp_path):
    port = _free_port()
    workdir = tmp_path / "run"
    base = [f"workdir={workdir}", f"web.port={port}", *SMALL]
    cfg = load_config(None, base)
    generate_web(cfg.web, cfg.web_dir)
    with serve_in_background(cfg.web_dir, host="127.0.0.1", port=port):
        first = _run([*base, "curation.select.fraction=0.5"])
        assert first.returncode == 0, first.stderr[-3000:]
        first_manifest = json.loads((workdir / "curation" / "manifest.json").read_text())
        second = _run([*base, "curation.select.fraction=0.3"])
        assert second.returncode == 0, second.stderr[-3000:]
    second_manifest = json.loads((workdir / "curation" / "manifest.json").read_text())
    archived = json.loads((workdir / "history" / "run-001" / "curation" / "manifest.json").read_text())
    assert first_manifest["fraction"] == 0.5 and second_manifest["fraction"] == 0.3
    assert archived["fraction"] == 0.5
    assert archived["kept"] == first_manifest["kept"] > second_manifest["kept"]
    why = json.loads((workdir / "history" / "run-001" / "run.json").read_text())["archived_because"]
    assert any("curation.select.fraction" in reason for reason in why)
    # wall time per stage, this run's and the archived run's
    assert {"build-dataset", "train", "eval"} <= set(
        json.loads((workdir / "pipeline.json").read_text())["seconds"]
    )
    assert "train" in json.loads((workdir / "history" / "run-001" / "pipeline.json").read_text())["seconds"]
    # the report's runs table: each run with its own keep fraction and kept count
    md = (workdir / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| history/run-001 |")]
    assert rows, md[:3000]
    assert f"| 0.5 | {first_manifest['kept']} |" in rows[0]
    this = next(line for line in md.splitlines() if line.startswith(f"| {cfg.name} | this run"))
    assert f"| 0.3 | {second_manifest['kept']} |" in this
    # this run's scored pool: the histogram with its threshold and the kept/dropped examples
    assert {"score_histogram.png", "curation_examples.png"} <= {
        p.name for p in (workdir / "report").glob("*.png")
    }
    assert f"threshold {second_manifest['threshold']:.4f}" in md

    # a third run whose benchmark list adds a damaged set: curation and eval go on without it,
    # the report is still written with the failure in it, and `openaim run` exits non-zero

    data = tmp_path / "data"
    make_fmow(data / "fmow_v1.1")
    (data / "fmow_v1.1" / "rgb_metadata.csv").write_text("split,category\ntrain,airport\n")
    third = _run(
        [
            *base,
            "curation.select.fraction=0.3",
            "evaluation.benchmarks=[digits, fmow]",
            f"evaluation.data_root={data}",
        ]
    )
    assert third.returncode == 1, third.stderr[-3000:]
    assert "fmow" in third.stderr.strip().splitlines()[-1] and "Traceback" not in third.stderr
    # the set found under the new data_root is also a decontamination input (curation.eval_index): dedup
    # reruns (skipping the unreadable set with a warning) and what follows it; eval records the failure
    ran = json.loads((workdir / "pipeline.json").read_text())["ran"]
    assert {"build-dataset", "train", "report"} <= set(ran)
    assert "dedup: not decontaminated against fmow" in third.stderr
    md = (workdir / "report" / "report.md").read_text()
    failed_row = next(line for line in md.splitlines() if line.startswith("| Functional Map of the World"))
    assert "failed" in failed_row and "timestamp" in failed_row
    assert "| scikit-learn digits" in md
