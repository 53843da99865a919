"""Shared set-up for the fault suite: one tiny mini web served on a free port, tiny pipeline settings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_overrides(workdir: Path, port: int) -> list[str]:
    """A whole pipeline in about a minute on 2 cores: small web, short trainings, demo benchmarks."""
    return [
        f"workdir={workdir}", f"web.port={port}", "web.n_images=240", "web.hq_size=300",
        "web.bench_train_per_class=8", "web.bench_test_per_class=4", "web.slow_seconds=8",
        "curation.download.timeout=4", "curation.download.samples_per_shard=60",
        "curation.train_filter.epochs=2", "curation.select.fraction=0.5", "curation.select.shard_size=40",
        "training.steps=24", "training.global_batch_size=16", "training.checkpoint_every=8",
        "training.log_every=4", "training.data.num_workers=1",
        "evaluation.benchmarks=[miniweb-shape, miniweb-color]", "evaluation.probe.epochs=3",
        "evaluation.probe.lrs=[0.001, 0.01]", "evaluation.probe.weight_decays=[0.0001, 0.01]",
        "evaluation.evaluate_intermediate=false",
    ]


def openaim(*args: str, timeout: float = 600, check: bool = True, code: Path = ROOT,
            **kw) -> subprocess.CompletedProcess:
    """`openaim ARGS` in a subprocess, run from the source tree ``code`` (this checkout by default)."""
    # A wide console, so that `openaim status`'s table does not wrap the reasons tests look for.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    if code != ROOT:
        env["PYTHONPATH"] = str(code)
    out = subprocess.run([sys.executable, "-m", "openaim", *args], capture_output=True, text=True,
                         check=False, timeout=timeout, cwd=code, env=env, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"openaim {' '.join(args[:1])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="session")
def served_web(tmp_path_factory):
    """(web_dir, port, server): one generated mini web, served for the whole session."""
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    port = free_port()
    root = tmp_path_factory.mktemp("faults")
    cfg = load_config(None, tiny_overrides(root / "unused", port))
    web_dir = root / "web"
    generate_web(cfg.web, web_dir)
    with serve_in_background(web_dir, host="127.0.0.1", port=port) as server:
        yield web_dir, port, server


def make_workdir(base: Path, web_dir: Path) -> Path:
    """A run directory whose web/ is the shared, already-served mini web."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "web").symlink_to(web_dir, target_is_directory=True)
    return base
