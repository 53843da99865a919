"""A new download is staged in pool.partial/ and swapped in place of pool/ only when it succeeded.

On a tiny mini web served on 127.0.0.1: build a pool; rerun the CLI with a changed download setting while the
server is down (every request fails) or with Ctrl-C mid-download: one error line, non-zero exit, and pool/,
its stats and the step record byte-identical; then with the server up the new pool replaces the old one.
And a resume against a dead server drops the shards it failed (so a later resume fetches them) and keeps the
finished ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image

from shared.errors import InputError, OpenAIMError
from tests.cli_output import problem_lines
from tests.extract_local import extract_pairs

ROOT = Path(__file__).resolve().parents[1]
WEB = ["web.n_images=40", "web.hq_size=10", "web.bench_train_per_class=2", "web.bench_test_per_class=2",
       "web.slow_seconds=3", "curation.download.timeout=2", "curation.download.samples_per_shard=16",
       "curation.download.threads=4", "curation.download.processes=1",
       "curation.download.resize_mode=center_crop", "curation.download.image_size=32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, hidden ones included."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _snapshot(workdir: Path) -> dict:
    cur = workdir / "curation"
    return {"pool": _tree(cur / "pool"), "stats": (cur / "download_stats.json").read_bytes(),
            "record": (workdir / ".steps" / "download.json").read_bytes()}


def _image_sides(pool: Path) -> set[int]:
    from curation.pool import iter_pool

    return {Image.open(io.BytesIO(jpg)).size[0] for _, jpg, _, _ in iter_pool(pool)}


def _holds_images(tar_path: Path) -> bool:
    import tarfile

    with tarfile.open(tar_path) as tar:
        return any(name.endswith(".jpg") for name in tar.getnames())


def _download_step(overrides: list[str]):
    """The extract and download steps in this process, as build-dataset runs them."""
    from openaim.pipeline import run_steps, step_named
    from openaim.steps.base import RunContext
    from shared.config import load_config

    ctx = RunContext(load_config(None, overrides))
    run_steps(ctx, [step_named("extract"), step_named("download")])
    return ctx


def _cli(overrides: list[str], **kw) -> subprocess.Popen:
    sets = [a for o in overrides for a in ("--set", o)]
    args = [sys.executable, "-m", "openaim", "build-dataset", *sets]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}, **kw)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """(web_dir, port): a generated mini web, not yet served."""
    from shared.config import load_config
    from shared.miniweb.generate import generate_web

    root = tmp_path_factory.mktemp("swap")
    port = _free_port()
    cfg = load_config(None, [f"workdir={root / 'unused'}", f"web.port={port}", *WEB])
    generate_web(cfg.web, root / "web")
    return root / "web", port


@pytest.fixture(scope="module")
def built(web, tmp_path_factory):
    """A run folder whose pool was downloaded (image_size 32) by the extract and download steps."""
    from shared.miniweb.server import serve_in_background

    web_dir, port = web
    workdir = tmp_path_factory.mktemp("built") / "run"
    workdir.mkdir()
    (workdir / "web").symlink_to(web_dir, target_is_directory=True)
    sigint_before = signal.getsignal(signal.SIGINT)
    with serve_in_background(web_dir, host="127.0.0.1", port=port):
        steps = _download_step([f"workdir={workdir}", f"web.port={port}", *WEB])
    assert steps.ran == ["extract", "download"]
    assert signal.getsignal(signal.SIGINT) is sigint_before, "img2dataset's Ctrl-C handler was left installed"
    assert _image_sides(workdir / "curation" / "pool") == {32}
    assert len(list((workdir / "curation" / "pool").glob("*.tar"))) >= 2
    return workdir


def _copy_run(built: Path, dst: Path, port: int) -> tuple[Path, list[str]]:
    shutil.copytree(built, dst, symlinks=True)
    return dst, [f"workdir={dst}", f"web.port={port}", *WEB]


def test_failed_download_keeps_the_pool_then_a_good_one_is_swapped_in(web, built, tmp_path):
    from shared.miniweb.server import serve_in_background

    web_dir, port = web
    workdir, overrides = _copy_run(built, tmp_path / "run", port)
    pool = workdir / "curation" / "pool"
    before = _snapshot(workdir)

    # The server is down and the download setting changed: every request fails.
    changed = [*overrides, "curation.download.image_size=24"]
    proc = _cli(changed)
    _, err = proc.communicate(timeout=300)
    lines = problem_lines(err)
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err[-2000:]
    assert "failed" in lines[0] and "connection refused" in lines[0]
    assert _snapshot(workdir) == before
    # The failed shards were not left behind as "done": a later run fetches them.
    assert not list((workdir / "curation" / "pool.partial").glob("*_stats.json"))

    with serve_in_background(web_dir, host="127.0.0.1", port=port) as server:
        steps = _download_step(changed)
        n_requests = len(server.request_log)
    assert steps.ran == ["download"] and n_requests > 0
    after = _snapshot(workdir)
    assert json.loads(after["record"])["config"]["curation.download"]["image_size"] == 24
    assert _image_sides(pool) == {24}
    # Same URLs, new images: the same shards, and every shard that holds an image holds new bytes. (Under
    # load every slow link of a small shard can time out in both runs: its tar is empty, equal, and not a
    # reuse.)
    tars = {k for k in after["pool"] if k.endswith(".tar")}
    assert tars == {k for k in before["pool"] if k.endswith(".tar")}
    with_images = {k for k in tars if _holds_images(pool / k)}
    assert with_images, "no shard downloaded an image"
    assert all(after["pool"][k] != before["pool"][k] for k in with_images)
    assert not (workdir / "curation" / "pool.partial").exists()
    assert not (workdir / "curation" / "pool.old").exists()


def test_ctrl_c_during_a_new_download_keeps_the_pool(web, built, tmp_path):
    from shared.miniweb.server import serve_in_background

    web_dir, port = web
    workdir, overrides = _copy_run(built, tmp_path / "run", port)
    stage = workdir / "curation" / "pool.partial"
    before = _snapshot(workdir)
    with serve_in_background(web_dir, host="127.0.0.1", port=port):
        # The mini web's slow links keep each shard busy past the timeout: the interrupt lands mid-download.
        proc = _cli([*overrides, "curation.download.image_size=24"])
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(stage.glob("*_stats.json")):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it was interrupted"
        # To the CLI only: a terminal's Ctrl-C also reaches img2dataset's workers, which print their own
        # tracebacks.
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    lines = problem_lines(err)
    assert proc.returncode == 130, err[-2000:]
    assert lines == ["error: interrupted"], err[-2000:]
    assert _snapshot(workdir) == before
    assert list(stage.glob("*_stats.json")), "the finished shards stay staged for a resume"


def test_resume_against_a_dead_server_drops_only_its_failed_shards(web, tmp_path):
    from curation.download import download_pool
    from curation.extract import resolve_sources
    from curation.pool import failure_histogram
    from shared.config import load_config
    from shared.miniweb.server import serve_in_background

    web_dir, port = web
    cfg = load_config(None, [f"workdir={tmp_path}", f"web.port={port}", *WEB])
    pairs = tmp_path / "pairs"
    extract_pairs(cfg.curation.extract, resolve_sources([], web_dir / "warc"), pairs)
    n = pq.read_table(pairs).num_rows
    per_shard = cfg.curation.download.samples_per_shard
    assert n > 2 * per_shard
    # A killed run that finished its first shard only: the same list cut after that shard.
    first = tmp_path / "first.parquet"
    pq.write_table(pq.read_table(pairs).slice(0, per_shard), first)
    pool = tmp_path / "pool"
    allow = cfg.curation.extract.allow_hosts
    with serve_in_background(web_dir, host="127.0.0.1", port=port):
        download_pool(cfg.curation.download, first, pool, allow)
    shard0 = _tree(pool)
    assert sorted(p.name for p in pool.glob("*_stats.json")) == ["00000_stats.json"]

    with pytest.raises(InputError, match="connection refused"):  # the server is gone
        download_pool(cfg.curation.download, pairs, pool, allow)
    assert _tree(pool) == shard0

    with serve_in_background(web_dir, host="127.0.0.1", port=port) as server:
        summary = download_pool(cfg.curation.download, pairs, pool, allow)
        fetched = set(server.request_log)
    first_paths = {urlsplit(u).path for u in pq.read_table(first, columns=["url"]).column("url").to_pylist()}
    assert not fetched & first_paths, "a finished shard was fetched again"
    assert {k: v for k, v in _tree(pool).items() if k.startswith("00000")} == \
           {k: v for k, v in shard0.items() if k.startswith("00000")}
    assert summary["requested"] == failure_histogram(pool)["requested"]
    assert "connection refused" not in summary["failures"]


def test_a_swap_killed_between_its_renames_is_repaired(tmp_path):
    """Killed after pool/ was renamed away but before the new pool came in: the next run puts the old one
    back, then swaps the finished staged one in; nothing is downloaded again."""
    from curation.download import _STATE, stage_pool, staging_dir, swap_in_pool

    pool = tmp_path / "pool"
    stage, old = Path(staging_dir(pool)), tmp_path / "pool.old"
    old.mkdir()
    (old / "00000.tar").write_bytes(b"old pool")
    stage.mkdir()
    (stage / "00000.tar").write_bytes(b"new pool")
    state = {"fingerprint": "f1", "complete": True, "summary": {"downloaded": 1}}
    (stage / _STATE).write_text(json.dumps(state))

    stage_pool(None, tmp_path / "no-pairs.parquet", pool, [], "f1")  # nothing left to download
    assert (pool / "00000.tar").read_bytes() == b"old pool" and not old.exists()
    assert swap_in_pool(pool, "f1") == {"downloaded": 1}
    assert (pool / "00000.tar").read_bytes() == b"new pool"
    assert not stage.exists() and not old.exists()
    # The step record lost after the swap: the pool already is this download, nothing is fetched.
    stage_pool(None, tmp_path / "no-pairs.parquet", pool, [], "f1")
    assert not stage.exists()
    with pytest.raises(OpenAIMError, match="no finished download"):
        swap_in_pool(pool, "f2")
