"""`openaim build-dataset` end to end on the mini web, over real HTTP on 127.0.0.1.

Quality against the mini web's ground truth with our own trained filter network, reruns that touch only
what a changed setting affects, and bad inputs that fail in one line without damaging what exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A default-sized mini web, served, curated once with the demo settings (own filter network)."""
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    workdir = tmp_path_factory.mktemp("curation") / "run"
    port = _free_port()
    overrides = [f"workdir={workdir}", f"web.port={port}", "web.slow_seconds=6"]
    cfg = load_config(None, overrides)
    generate_web(cfg.web, cfg.web_dir)
    with serve_in_background(cfg.web_dir, host="127.0.0.1", port=port) as server:
        out = _cli("build-dataset", *_sets(overrides))
        assert out.returncode == 0, out.stderr[-3000:]
        yield workdir, overrides, server


def _manifest(workdir: Path) -> dict:
    return json.loads((workdir / "curation" / "manifest.json").read_text())


def test_quality_on_the_mini_web(built):
    workdir, _, server = built
    q = _manifest(workdir)["quality"]
    assert q["kept"] >= 30
    assert q["precision"] >= 0.95
    assert q["max_kept_per_duplicate_group"] <= 1
    assert q["eval_leak_kept"] == 0
    assert q["unsafe_urls_requested"] == 0
    assert not any("/secret" in path for path in server.request_log)
    for tar in (workdir / "curation" / "shards").glob("*.tar"):
        assert b"root:x:0:0" not in tar.read_bytes()


def test_manifest_counts_every_step_and_failures(built):
    workdir, _, _ = built
    m = _manifest(workdir)
    assert m["fraction"] == pytest.approx(0.15)
    assert set(m["steps"]) >= {"extract", "download", "score", "dedup", "safety", "select"}
    assert m["download_failures"], "the mini web's broken links are counted under reasons"
    assert sorted(m["ran"]) == sorted(["extract", "download", "train-filter", "score", "dedup", "safety", "select"])
    subset = __import__("numpy").load(workdir / "curation" / "subset.npy")
    assert len(subset) == m["kept"] and list(subset) == sorted(subset)


def test_selection_and_dedup_changes_rerun_only_downstream(built):
    workdir, overrides, _ = built
    out = _cli("build-dataset", *_sets([*overrides, "curation.select.fraction=0.3"]))
    assert out.returncode == 0, out.stderr[-2000:]
    m = _manifest(workdir)
    assert m["ran"] == ["select"]
    assert m["fraction"] == pytest.approx(0.3)
    out = _cli("build-dataset", *_sets([*overrides, "curation.dedup.near_threshold=0.9"]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert _manifest(workdir)["ran"] == ["dedup", "select"]
    out = _cli("build-dataset", *_sets(overrides))
    assert _manifest(workdir)["ran"] == ["dedup", "select"]  # back to the first settings
    assert _manifest(workdir)["fraction"] == pytest.approx(0.15)


@pytest.mark.parametrize("case", ["missing path", "unreadable warc", "empty pool", "unloadable filter"])
def test_bad_input_is_one_line_and_damages_nothing(built, case, tmp_path):
    workdir, overrides, _ = built
    shards = workdir / "curation" / "shards"
    before = _digest(shards)
    extra: list[str]
    if case == "missing path":
        extra = [f"curation.extract.sources=[{tmp_path / 'nope.warc.gz'}]"]
    elif case == "unreadable warc":
        bad = tmp_path / "bad.warc.gz"
        bad.write_bytes(os.urandom(4096))
        extra = [f"curation.extract.sources=[{bad}]"]
    elif case == "empty pool":
        dead = _free_port()
        pq.write_table(pa.table({"url": [f"http://127.0.0.1:{dead}/img/{i}.jpg" for i in range(4)],
                                 "caption": [f"a red circle {i}" for i in range(4)]}), tmp_path / "urls.parquet")
        extra = [f"curation.extract.sources=[{tmp_path / 'urls.parquet'}]"]
    else:
        extra = ["curation.filter.model=hf-hub:apple/DFN-public"]
    # A separate workdir for the inputs that change extraction, so the built pool stays as it is.
    args = overrides if case == "unloadable filter" else [*overrides, f"workdir={tmp_path / 'w'}"]
    out = _cli("build-dataset", *_sets([*args, *extra]))
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert _digest(shards) == before
