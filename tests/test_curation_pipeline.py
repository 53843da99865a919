"""`openaim build-dataset` end to end on the mini web, over real HTTP on 127.0.0.1.

One mini web is generated and served by this test process for the whole module and curated once through
the CLI with our own trained filter network (the `built` fixture). Against it:
- quality against the mini web's ground truth, recomputed here from the shards themselves;
- reruns after a selection or dedup change touch only the downstream steps (no download, no scoring);
- kill -9 of the CLI during download, then a rerun: no finished pool shard is fetched again and the
  final shards equal the uninterrupted run's, byte for byte;
- bad inputs fail in one line on stderr, without a traceback, and leave the finished shards untouched.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli_output import problem_lines

ROOT = Path(__file__).resolve().parents[1]
GOOD_KINDS = {"match", "near_dup", "exact_dup"}
# Small enough for 2 cores, big enough for the filter network to learn what a good caption is.
WEB = ["web.n_images=1000", "web.hq_size=1200", "web.bench_train_per_class=4", "web.bench_test_per_class=10",
       "web.slow_seconds=6", "curation.download.samples_per_shard=250", "curation.train_filter.epochs=6"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_args(overrides: list[str]) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    return [sys.executable, "-m", "openaim", "build-dataset", *sets]


def _cli(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(_cli_args(overrides), cwd=ROOT, capture_output=True, text=True, timeout=900,
                          check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _manifest(workdir: Path) -> dict:
    return json.loads((workdir / "curation" / "manifest.json").read_text())


def _step_records(workdir: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((workdir / ".steps").glob("*.json"))}


def shard_samples(shards: Path) -> list[tuple[str, str, str, str]]:
    """(shard/key, sha256 of the jpg bytes, caption, json) of every sample, in shard and tar order."""
    out = []
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            files: dict[str, dict[str, bytes]] = {}
            for m in tar.getmembers():
                key, _, ext = m.name.rpartition(".")
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, f in files.items():
            out.append((f"{tar_path.name}/{key}", hashlib.sha256(f["jpg"]).hexdigest(), f["txt"].decode(),
                        f["json"].decode()))
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))}


def _curation_steps() -> list[str]:
    """The cached build-dataset steps of the pipeline's list, in run order."""
    from openaim.steps import STEPS

    return [s.name for s in STEPS if s.stage == "build-dataset" and s.cached]


def _rerun_after(changed: str) -> list[str]:
    """The curation steps that rerun when ``changed``'s config changes (and with it its outputs): it and
    every cached build-dataset step that reads it, directly or through another, in run order."""
    from openaim.steps import STEPS

    out: list[str] = []
    for s in STEPS:
        if s.stage == "build-dataset" and s.cached and (s.name == changed or set(s.reads) & set(out)):
            out.append(s.name)
    return out


def _workdir_sharing_web(base: Path, web_dir: Path) -> Path:
    """A run folder whose web/ is the module's served mini web (same URLs, so same uids)."""
    base.mkdir(parents=True)
    (base / "web").symlink_to(web_dir, target_is_directory=True)
    return base


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(web_dir, port, server): the mini web, generated once and served by this process."""
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    root = tmp_path_factory.mktemp("curation")
    port = _free_port()
    cfg = load_config(None, [f"workdir={root / 'a'}", f"web.port={port}", *WEB])
    generate_web(cfg.web, root / "web")
    with serve_in_background(root / "web", host="127.0.0.1", port=port) as server:
        yield root / "web", port, server


@pytest.fixture(scope="module")
def built(served, tmp_path_factory):
    """(workdir, overrides, shard samples): the default curation of the served web, own filter network."""
    web_dir, port, _ = served
    workdir = _workdir_sharing_web(tmp_path_factory.mktemp("built") / "run", web_dir)
    overrides = [f"workdir={workdir}", f"web.port={port}", *WEB]
    out = _cli(overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir, overrides, shard_samples(workdir / "curation" / "shards")


def test_quality_on_the_mini_web(built, served):
    workdir, _, samples = built
    web_dir, _, server = served
    truth = pq.read_table(web_dir / "truth.parquet").to_pylist()
    by_url = {}
    for row in truth:
        by_url.setdefault(row["url"], []).append(row)
    kinds, groups = [], []
    for _, _, caption, meta in samples:
        url = json.loads(meta)["url"]
        rows = [r for r in by_url[url] if " ".join(r["alt"].split()) == caption] or by_url[url]
        kinds.append(rows[0]["kind"])
        if rows[0]["kind"] in GOOD_KINDS and rows[0]["group"] is not None:
            groups.append(rows[0]["group"])
    precision = sum(k in GOOD_KINDS for k in kinds) / len(kinds)
    q = _manifest(workdir)["quality"]
    print(f"\nkept {len(kinds)}: precision {precision:.4f}, by kind {q['kept_by_kind']}")
    assert len(kinds) >= 30
    assert precision >= 0.95
    assert kinds.count("eval_leak") == 0
    # The manifest's quality block says the same as the shards.
    assert q["kept"] == len(kinds) and q["precision"] == pytest.approx(precision, abs=1e-4)
    assert q["max_kept_per_duplicate_group"] == max(collections.Counter(groups).values())
    assert q["eval_leak_kept"] == 0
    assert q["unsafe_urls_requested"] == 0
    # No unsafe URL ever reached the server; no local file content in any shard.
    unsafe_paths = {urlsplit(r["url"]).path for r in truth
                    if r["kind"] == "unsafe_url" and r["url"].startswith("http")}
    assert unsafe_paths and not unsafe_paths & set(server.request_log)
    for tar in (workdir / "curation" / "shards").glob("*.tar"):
        data = tar.read_bytes()
        assert b"root:x:0:0" not in data and Path("/etc/passwd").read_bytes().splitlines()[0] not in data


def test_at_most_one_copy_of_an_image_kept(built):
    workdir, _, _ = built
    q = _manifest(workdir)["quality"]
    assert q["max_kept_per_duplicate_group"] <= 1, f"{q['duplicate_groups_kept_twice']} groups kept twice"


def test_manifest_counts_every_step_and_failures(built):
    import numpy as np

    from curation.select import subset_to_uids

    workdir, _, samples = built
    m = _manifest(workdir)
    assert m["fraction"] == pytest.approx(0.15)
    assert set(m["steps"]) >= {"extract", "download", "score", "dedup", "safety", "select"}
    assert sum(m["download_failures"].values()) >= 50, "the mini web's broken links are counted under reasons"
    assert {"http 404", "timeout"} <= set(m["download_failures"])
    assert sorted(m["ran"]) == sorted(_curation_steps())
    subset = np.load(workdir / "curation" / "subset.npy")
    uids = subset_to_uids(subset)
    assert uids == sorted(uids), "a DataComp subset is sorted"
    assert sorted(uids) == sorted(json.loads(s[3])["uid"] for s in samples)
    assert m["kept"] == len(samples)


def test_selection_and_dedup_changes_rerun_only_downstream(built, served):
    workdir, overrides, samples = built
    _, _, server = served
    records = _step_records(workdir)
    n_requests = len(server.request_log)

    out = _cli([*overrides, "curation.select.fraction=0.3"])
    assert out.returncode == 0, out.stderr[-2000:]
    m = _manifest(workdir)
    assert m["ran"] == _rerun_after("select")
    assert "download" in m["reused"] and "score" in m["reused"] and "train-filter" in m["reused"]
    assert m["fraction"] == pytest.approx(0.3) and m["kept"] > len(samples)

    out = _cli([*overrides, "curation.dedup.near_threshold=0.95"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert _manifest(workdir)["ran"] == _rerun_after("dedup")

    after = _step_records(workdir)
    for step in ("extract", "download", "train-filter", "score", "safety"):
        assert after[step] == records[step], f"{step} was redone"
    assert len(server.request_log) == n_requests, "a rerun fetched images again"

    out = _cli(overrides)  # back to the first settings: the same shards again
    assert out.returncode == 0, out.stderr[-2000:]
    assert _manifest(workdir)["ran"] == _rerun_after("dedup")
    assert shard_samples(workdir / "curation" / "shards") == samples


def test_kill9_during_download_then_rerun_equals_uninterrupted(built, served, tmp_path):
    workdir_a, _, reference = built
    web_dir, port, server = served
    workdir = _workdir_sharing_web(tmp_path / "run", web_dir)
    # The filter network the uninterrupted run trained: training it again would only cost time.
    overrides = [f"workdir={workdir}", f"web.port={port}", *WEB,
                 f"curation.filter.model=local-dir:{workdir_a / 'curation' / 'filter'}"]
    pool = workdir / "curation" / "pool.partial"  # staged here, swapped in when done
    child = subprocess.Popen(_cli_args(overrides), cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and child.poll() is None and not list(pool.glob("*_stats.json")):
            time.sleep(0.02)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the CLI and img2dataset's worker processes
        child.wait()
    done = sorted(pool.glob("*_stats.json"))
    n_shards = sum(-(-pq.ParquetFile(p).metadata.num_rows // 250)  # img2dataset shards each file alone
                   for p in (workdir / "curation" / "download_list").glob("*.parquet"))
    assert 1 <= len(done) < n_shards, "the kill must land inside the download"
    assert not (workdir / ".steps" / "download.json").exists()
    finished = set()
    for stats in done:
        finished |= {urlsplit(u).path for u in pq.read_table(str(stats).replace("_stats.json", ".parquet"),
                                                             columns=["url"]).column("url").to_pylist()}

    start = len(server.request_log)
    out = _cli(overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    refetched = set(server.request_log[start:]) & finished
    assert not refetched, f"{len(refetched)} URLs of finished shards fetched again"
    assert len(server.request_log) > start, "the unfinished shards were fetched"
    assert shard_samples(workdir / "curation" / "shards") == reference


def _copy_run(src: Path, dst: Path, web_dir: Path) -> Path:
    """A copy of a finished run (outputs + stage records) sharing the served web."""
    _workdir_sharing_web(dst, web_dir)
    shutil.copytree(src / "curation", dst / "curation", symlinks=True)
    shutil.copytree(src / ".steps", dst / ".steps")
    return dst


def test_spark_engine_equals_local_engine(built, served, tmp_path):
    """`--set curation.engine=spark` (Spark local[2]) on a copy of the finished run whose extract, dedup,
    safety and select records are dropped: those steps rerun as Spark tasks, the download and the scores
    are reused (the pairs come out identical), and the kept uids and every shard's bytes are the local
    engine's."""
    pytest.importorskip("pyspark")
    workdir_a, overrides, samples = built
    web_dir, _, _ = served
    workdir = _copy_run(workdir_a, tmp_path / "run", web_dir)
    for step in ("extract", "dedup", "safety", "select"):
        (workdir / ".steps" / f"{step}.json").unlink()
    shutil.rmtree(workdir / "curation" / "shards")
    out = _cli([*[o for o in overrides if not o.startswith("workdir=")], f"workdir={workdir}",
                "curation.engine=spark", "curation.workers=2"])
    assert out.returncode == 0, out.stderr[-3000:]
    m = _manifest(workdir)
    assert m["ran"] == ["extract", "dedup", "safety", "select"] and "download" in m["reused"]
    subset = (workdir / "curation" / "subset.npy").read_bytes()
    assert subset == (workdir_a / "curation" / "subset.npy").read_bytes()
    assert shard_samples(workdir / "curation" / "shards") == samples
    assert _digest(workdir / "curation" / "shards") == _digest(workdir_a / "curation" / "shards")


@pytest.mark.parametrize("case", ["missing path", "unreadable warc", "empty pool", "unloadable filter"])
def test_bad_input_is_one_line_and_damages_nothing(built, served, case, tmp_path):
    workdir_a, overrides, _ = built
    web_dir, _, _ = served
    # Every case runs on a copy of the finished run: the shards there must come out byte-identical.
    workdir = _copy_run(workdir_a, tmp_path / "run", web_dir)
    shards = workdir / "curation" / "shards"
    before = _digest(shards)
    finished = {name: (workdir / "curation" / name).read_bytes() for name in ("manifest.json", "subset.npy")}
    assert before
    if case == "missing path":
        extra = [f"curation.extract.sources=[{tmp_path / 'nope.warc.gz'}]"]
    elif case == "unreadable warc":
        bad = tmp_path / "bad.warc.gz"
        bad.write_bytes(os.urandom(4096))
        extra = [f"curation.extract.sources=[{bad}]"]
    elif case == "empty pool":  # every download fails: nothing listens on that port
        dead = _free_port()
        pq.write_table(pa.table({"url": [f"http://127.0.0.1:{dead}/img/{i}.jpg" for i in range(4)],
                                 "caption": [f"a red circle {i}" for i in range(4)]}),
                       tmp_path / "urls.parquet")
        extra = [f"curation.extract.sources=[{tmp_path / 'urls.parquet'}]"]
    else:  # offline: not in the Hugging Face cache and the hub is unreachable
        extra = ["curation.filter.model=hf-hub:apple/DFN-public"]
    out = _cli([*overrides, f"workdir={workdir}", *extra])
    assert out.returncode != 0
    lines = problem_lines(out.stderr)  # not the progress records of the steps before the failure
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("error:") and "Traceback" not in out.stderr
    assert _digest(shards) == before
    assert {name: (workdir / "curation" / name).read_bytes() for name in finished} == finished


def test_select_rerun_reads_no_upstream_output_to_identify_it(built, monkeypatch):
    """After `curation.select.fraction` changes, build-dataset decides extract, download, score, dedup and
    safety are fresh without hashing any of their outputs (no tree hash at all), and records the select
    step from its tasks' digests. Runs in this process on the finished run (the last test of the module:
    it leaves the run at that fraction), with the hash functions patched to log what they read."""
    from openaim import pipeline
    from openaim.steps import train_filter as train_filter_step
    from shared import stage_cache
    from shared.config import load_config

    workdir, overrides, _ = built
    cfg = load_config(None, [*overrides, "curation.select.fraction=0.4"])
    hashed: list[Path] = []
    real_file, real_path = stage_cache.hash_file, stage_cache.hash_path

    def logged_file(path):
        hashed.append(Path(path))
        return real_file(path)

    def logged_path(path):  # a whole tree read: only the train-filter step's small input (web/hq) may be
        hashed.append(Path(path))
        return real_path(path)

    monkeypatch.setattr(stage_cache, "hash_file", logged_file)
    monkeypatch.setattr(stage_cache, "hash_path", logged_path)
    monkeypatch.setattr(train_filter_step, "hash_path", logged_path)
    manifest = pipeline.build_dataset(cfg)
    assert manifest["ran"] == _rerun_after("select")
    cur = (workdir / "curation").resolve()
    upstream = [cur / d for d in ("pairs", "pool", "scores", "dedup", "safety", "filter")]
    read = [p for p in hashed if any(p.resolve().is_relative_to(u) for u in upstream)]
    assert not read, f"upstream outputs hashed to decide freshness: {read[:5]}"
    assert [p for p in hashed if p.suffix == ".tar"], "the select tasks took their tars' digests"
    trees = [p for p in hashed if p.resolve().is_relative_to(cur) and p.is_dir()]
    assert not trees, f"output trees hashed whole: {trees}"
