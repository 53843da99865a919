"""build-dataset with ``workdir: s3://openaim-test/<run>`` against moto's S3 server on loopback (the s3_server
fixture) gives what the same build gives on local disk: the same kept uids (subset.npy), byte-identical
shards, subset parts, keep files, score parts and pairs, and the same step records' outputs hashes.

Both runs read the crawl's WARCs from the bucket. The s3 run does every step, the download included:
img2dataset writes the pool into the bucket, the filter network is trained and uploaded, every later
step reads and writes objects. The mini web stays on local disk (``web.dir``). Its deliberately slow
links time out or not depending on the machine's load, so the local run does not download again: it
starts from the s3 run's pool and filter network (copied out of the bucket with their step records),
runs every other step on local disk, and the two runs are then compared file by file. Before that, a
select on the bucket dies after its first objects are written: no record, and the rerun's objects are the
ones compared. Nothing of the
s3 run may land on local disk under its URL (``s3:/...``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from curation import write
from shared import fsio
from tests.s3_server import BUCKET
from tests.spark_cluster import free_port

# The smallest mini web whose pool has exact and near copies and eval leaks (tests/test_curation_cluster.py).
WEB = ["web.n_images=200", "web.hq_size=200", "web.bench_train_per_class=2", "web.bench_test_per_class=2",
       "web.slow_seconds=1", "curation.download.samples_per_shard=20", "curation.download.timeout=1",
       "curation.download.processes=1", "curation.train_filter.epochs=1"]
# Written by the steps after download and train-filter, compared byte for byte.
COMPARED = ("pairs", "extract_stats.json", "scores/parts", "dedup/keep", "dedup/stats.json", "safety/keep",
            "safety/stats.json", "shards", "subset", "subset.npy", "select_stats.json")
# What the local run takes from the s3 run instead of downloading and training again.
TAKEN = ("curation/pool", "curation/download_stats.json", ".steps/download.json", "curation/filter",
         ".steps/train-filter.json")


def _files(root: str, name: str) -> dict[str, str]:
    """sha256 of every file of ``root/name`` (a file or a folder, recursively), by name under ``root``."""
    top = fsio.join(root, name)
    if fsio.isfile(top):
        return {name: hashlib.sha256(fsio.read_bytes(top)).hexdigest()}
    out = {}
    for path in fsio.listdir(top):
        out |= _files(root, f"{name}/{path}")
    return out


def _records(root: str) -> dict[str, str]:
    return {name: json.loads(fsio.read_bytes(fsio.join(root, ".steps", name)))["outputs_hash"]
            for name in fsio.listdir(fsio.join(root, ".steps"))}


def test_build_dataset_on_s3_equals_the_local_build(s3_server, tmp_path, monkeypatch):
    from openaim.pipeline import build_dataset, pipeline_plan
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    monkeypatch.chdir(tmp_path)  # a URL taken for a path would make a folder "s3:" here
    port = free_port()
    common = [f"web.dir={tmp_path / 'web'}", f"web.port={port}", *WEB]
    web = load_config(None, common).web
    generate_web(web, web.dir)
    crawl = f"s3://{BUCKET}/crawl-{uuid.uuid4().hex[:8]}"  # both runs read the crawl from the bucket
    for warc in sorted((web.dir / "warc").glob("*.warc.gz")):
        fsio.write_bytes(fsio.join(crawl, "warc", warc.name), warc.read_bytes())
    common.append(f"curation.extract.sources=['{crawl}/warc']")
    url = f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}"
    s3_cfg = load_config(None, [f"workdir={url}", *common])
    local = tmp_path / "local"
    local_cfg = load_config(None, [f"workdir={local}", *common])

    with serve_in_background(s3_cfg.web_dir, host="127.0.0.1", port=port):
        # the engine's tasks in two spawned processes, each writing its objects (a worker count changes
        # no result)
        s3_manifest = build_dataset(s3_cfg.model_copy(update={"curation": s3_cfg.curation.model_copy(
            update={"workers": 2})}))
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()
    assert s3_manifest["ran"] == ["extract", "download", "train-filter", "score", "dedup", "safety", "select"]
    # the pool was written by img2dataset into the bucket; the run's outputs are objects there
    pool = fsio.join(url, "curation", "pool")
    assert len(fsio.glob(fsio.join(pool, "*.tar"))) >= 5
    assert s3_manifest["kept"] >= 10 and fsio.isfile(fsio.join(url, "curation", "manifest.json"))
    assert not fsio.exists(fsio.join(url, "curation", "pool.partial"))

    # A select that dies after writing some of its objects (no rename to make them valid: its record is
    # what would) leaves no record, and the rerun replaces what it left.
    shards = fsio.join(url, "curation", "shards")
    before = fsio.listdir(shards)
    real = write.write_part_shards
    written = []  # the pool shards whose kept samples were written before the kill

    def dies_after_the_first_part_it_writes(pool_shard, kept, *args, **kwargs):
        # Which pool shards keep samples depends on which slow links timed out (the machine's load): the
        # kill lands on the task after the first that had samples to write, not on a fixed call.
        if written:
            raise RuntimeError("killed mid-select")
        done = real(pool_shard, kept, *args, **kwargs)
        if kept:
            written.append(fsio.name_of(pool_shard).removesuffix(".tar"))
        return done

    monkeypatch.setattr(write, "write_part_shards", dies_after_the_first_part_it_writes)
    with pytest.raises(RuntimeError, match="killed mid-select"):
        build_dataset(s3_cfg, force=True, only=["select"])
    monkeypatch.setattr(write, "write_part_shards", real)
    assert not fsio.exists(fsio.join(url, ".steps", "select.json"))
    left = fsio.listdir(shards)
    # that first part's tars only
    assert left and set(left) <= set(before) and all(name.startswith(f"{written[0]}-") for name in left)
    assert build_dataset(s3_cfg, only=["select"])["kept"] == s3_manifest["kept"]
    assert fsio.listdir(shards) == before
    # `openaim status` on the bucket: every curation step is fresh (its record and outputs are there)
    plan = dict(pipeline_plan(s3_cfg))
    assert all(plan[name].fresh for name in s3_manifest["ran"]), {n: plan[n].reasons for n in plan}

    for name in TAKEN:
        fsio.download(fsio.join(url, name), local / name)
    local_manifest = build_dataset(local_cfg)  # no server: a download would fail
    assert local_manifest["ran"] == ["extract", "score", "dedup", "safety", "select"]
    assert local_manifest["reused"] == ["download", "train-filter"]

    s3_files, local_files = ({k: v for name in COMPARED for k, v in _files(fsio.join(root, "curation"),
                                                                              name).items()}
                             for root in (url, str(local)))
    assert any(k.startswith("shards/") for k in s3_files) and "subset.npy" in s3_files
    assert s3_files == local_files
    assert _records(url) == _records(str(local))
    same = ("kept", "threshold", "quality", "download_failures")
    assert {k: s3_manifest[k] for k in same} == {k: local_manifest[k] for k in same}
