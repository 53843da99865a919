"""kill -9 of a real `openaim build-dataset` during its download leaves no process of the run behind, and
what a killed run left (a survivor, a damaged shard) is never resumed from."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.extract import resolve_sources
from curation.img2dataset_run import _RUN_FILE, _RUN_TOKEN_ENV, kill_previous_run
from curation.pool import finished_shards, verify_shards
from curation.select import subset_to_uids
from shared.config.curation import ExtractConfig
from tests.extract_local import extract_pairs
from tests.faults.conftest import ROOT, make_workdir, openaim, sets, tiny_overrides

MARKER_ENV = "OPENAIM_SECURITY_TEST_RUN"


def processes_with(name: str, value: str) -> list[int]:
    """Pids of the live processes whose environment holds name=value (every process a run started inherits
    the environment: img2dataset's spawn workers, its logger, the resource tracker)."""
    needle = f"{name}={value}".encode()
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the run's processes")


def datacomp_parquet(web_dir: Path, out: Path) -> list[str]:
    """The mini web's image links as DataComp metadata: uid (32 hex digits), url, text and other columns."""
    tmp_pairs = out.with_name("web-pairs")
    extract_pairs(ExtractConfig(allow_hosts=["127.0.0.1"]), resolve_sources([], web_dir / "warc"), tmp_pairs)
    t = pq.read_table(tmp_pairs)
    rng = np.random.default_rng(7)
    uids = [f"{int(a):016x}{int(b):016x}" for a, b in rng.integers(0, 2**63, size=(t.num_rows, 2))]
    pq.write_table(pa.table({"uid": uids, "url": t.column("url"), "text": t.column("caption"),
                             "original_width": [256] * t.num_rows, "sha256": [None] * t.num_rows}), out)
    shutil.rmtree(tmp_pairs)
    Path(f"{tmp_pairs}.json").unlink()
    return uids


def test_kill9_of_build_dataset_during_download_leaves_no_process(served_web, tmp_path):
    """A DataComp-style parquet source: killed during the download, no process of the run is alive 5 s
    later; the rerun finishes and its subset.npy holds the input's uids."""
    web_dir, port, _ = served_web
    workdir = make_workdir(tmp_path / "run", web_dir)
    source = tmp_path / "datacomp-0000.parquet"
    input_uids = datacomp_parquet(web_dir, source)
    overrides = [*tiny_overrides(workdir, port), f'curation.extract.sources=["{source}"]']
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER_ENV: marker, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "openaim", "build-dataset", *sets(overrides)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage = workdir / "curation" / "pool.partial"
    try:
        deadline = time.time() + 240
        # build-dataset, the download process, img2dataset's logger and at least one worker
        while time.time() < deadline and not ((stage / _RUN_FILE).exists()
                                              and len(processes_with(MARKER_ENV, marker)) >= 4):
            assert proc.poll() is None, "build-dataset ended before its download could be killed"
            time.sleep(0.05)
        assert (stage / _RUN_FILE).exists(), "the download never started"
        time.sleep(0.5)
        alive_before = processes_with(MARKER_ENV, marker)
        assert len(alive_before) >= 4 and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(5)
        assert processes_with(MARKER_ENV, marker) == [], "processes of the killed run are still alive"
        # nothing writes into the staged download any more
        snapshot = {p: p.stat().st_mtime_ns for p in stage.rglob("*")}
        time.sleep(1)
        assert {p: p.stat().st_mtime_ns for p in stage.rglob("*")} == snapshot
        # The rerun resumes and finishes; the subset names the input's own uids (DataComp's subset format).
        openaim("build-dataset", *sets(overrides), timeout=900)
        subset = subset_to_uids(np.load(workdir / "curation" / "subset.npy"))
        assert subset and set(subset) <= set(input_uids)
    finally:
        for pid in processes_with(MARKER_ENV, marker):  # never leave the run behind, even on failure
            os.kill(pid, signal.SIGKILL)


def test_a_survivor_of_a_killed_run_is_killed_before_its_files_are_resumed(tmp_path):
    pool = tmp_path / "pool.partial"
    pool.mkdir()
    token = uuid.uuid4().hex
    (pool / _RUN_FILE).write_text(token)
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                env={**os.environ, _RUN_TOKEN_ENV: token}, start_new_session=True)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 env={**os.environ, _RUN_TOKEN_ENV: "another-run"})
    try:
        assert kill_previous_run(pool) == 1
        assert survivor.wait(timeout=5) == -signal.SIGKILL
        assert unrelated.poll() is None  # only the processes of that run
    finally:
        for p in (survivor, unrelated):
            p.kill()
            p.wait()


def test_damaged_shards_of_a_killed_run_are_dropped_before_resume(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for name, tar_ok in (("00000", True), ("00001", False)):
        member = tmp_path / "a.txt"
        member.write_text("caption")
        with tarfile.open(pool / f"{name}.tar", "w") as tar:
            for i in range(20):
                tar.add(member, arcname=f"{i}.txt")
        if not tar_ok:  # cut short: what a write interrupted by a kill or a full disk leaves
            data = (pool / f"{name}.tar").read_bytes()
            (pool / f"{name}.tar").write_bytes(data[: len(data) // 3])
        pq.write_table(pa.table({"status": ["success"]}), pool / f"{name}.parquet")
        (pool / f"{name}_stats.json").write_text('{"successes": 1}')
    assert verify_shards(pool) == 1
    assert [Path(s).name for s in finished_shards(pool)] == ["00000"]
    assert not Path(pool / "00001.tar").exists() and not Path(pool / "00001_stats.json").exists()
