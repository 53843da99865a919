"""Step 2 of curation: fetch the extracted pairs' images with img2dataset into webdataset shards (``pool/``).

img2dataset writes the pool's shards (their layout: curation.pool); a ``NNNNN_stats.json`` marks a shard
done: with ``incremental_mode="incremental"`` a killed run resumes and never refetches a finished shard.

The pipeline never downloads into ``pool/`` itself: a new download is fetched into the sibling
``pool.partial/`` (where a killed run also resumes) and swapped in place of ``pool/`` only once it succeeded
(``stage_pool`` then ``swap_in_pool``). A download that fails, in which every request failed, or that is
interrupted leaves the previous ``pool/`` as it was.

Safety: img2dataset fetches whatever it is given, ``file://`` included, and follows redirects on its own. Its
worker processes therefore fetch through ``curation.netsafety.guarded_opener`` (installed in each worker by
``curation.img2dataset_run.GuardedDownloader``): every connection, redirect hops included, goes only to a
checked, pinned address, and a refused fetch is recorded as "blocked by policy" with nothing about what lay
behind it (a name that does not resolve is refused the same way). URLs that fail the textual check are
dropped before the list is handed over, by the engine tasks that write it (``download_list/``, one parquet
file per pairs partition, which img2dataset reads file by file: no process holds the whole list). Its default
opt-out header check (X-Robots-Tag noai/noimageai/noindex/noimageindex) stays on.
Decompression bombs: OpenCV (which img2dataset decodes with) refuses images over
``OPENCV_IO_MAX_IMAGE_PIXELS`` *before* allocating, which we set from ``cfg.max_image_pixels``;
``max_image_area`` repeats the cap, and PIL's MAX_IMAGE_PIXELS covers our own later decodes.

Processes: with the multiprocessing distributor img2dataset runs in a child process in its own session,
killed whole whenever build-dataset stops (curation.img2dataset_run). A staged download is resumed only
after any process left from a previous run is killed, and only from shards whose files are complete
(``curation.pool.verify_shards``).

Distributors: ``multiprocessing`` (default, one machine) or ``pyspark``. With pyspark we reuse the active
SparkSession or start a local one (``local[processes]``). On a real cluster, start the session yourself:

    spark-submit --master spark://HOST:7077 --num-executors 16 --executor-cores 4 \\
        --conf spark.task.maxFailures=100 --py-files openaim.zip \\
        openaim/__main__.py build-dataset --config my.yaml --set curation.download.distributor=pyspark

(or, in a driver script, build ``SparkSession.builder.master("spark://HOST:7077")...getOrCreate()`` and call
``build_dataset(cfg)``); ``pool/`` must then be on storage every executor can write (HDFS, S3, NFS).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import Counter
from pathlib import Path

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

from curation.engine import LocalEngine
from curation.img2dataset_run import download_in_own_session, kill_previous_run, run_img2dataset
from curation.netsafety import BLOCKED, url_rejection
from curation.pool import failure_histogram, finished_shards, normalise_error, shard_file, verify_shards
from shared import fsio
from shared.config.curation import DownloadConfig
from shared.errors import InputError, OpenAIMError, disk_full_as_error

# Versioned by its step: bump VERSION in openaim/steps/download.py when this changes the step's results.

log = logging.getLogger("openaim.curation")


def pairs_partitions(pairs_path: str) -> list[str]:
    """The pairs partitions: the extract step's ``pairs/part-*.parquet`` (a folder), or one parquet file."""
    if fsio.isdir(pairs_path):
        return [path for path, _ in fsio.list_files(pairs_path, "*.parquet")]
    return [os.fspath(pairs_path)]


def download_list_part(allow_hosts: list[str], out_dir: str, part: str) -> tuple[int, int]:
    """One task: the rows (url, caption, uid) of one pairs partition whose URL passes the textual check, to
    ``out_dir/<part name>`` (none when no row does; ``out_dir`` is swapped in whole); (kept, refused). The
    binding check: on each connection."""
    with fsio.open_file(part) as f:
        t = pq.read_table(f, columns=["uid", "url", "caption"])
    keep = [not url_rejection(url, allow_hosts) for url in t.column("url").to_pylist()]
    kept = sum(keep)
    if kept:
        with fsio.local_file(fsio.join(out_dir, fsio.name_of(part))) as tmp:
            pq.write_table(t.filter(pa.array(keep, type=pa.bool_())), tmp)
    return kept, len(keep) - kept


def write_download_list(engine, pairs_path: str, out_dir: str,
                        allow_hosts: list[str]) -> tuple[int, Counter]:
    """img2dataset's input: a folder of parquet files, one per pairs partition, written by engine tasks (the
    URL check runs in the tasks; nothing here holds more than the counts). Refusals are counted as "blocked
    by policy" only."""
    with fsio.replaced_dir(out_dir) as tmp:
        task = functools.partial(download_list_part, allow_hosts, tmp)
        counts = engine.map(task, pairs_partitions(pairs_path))
    refused = sum(r for _, r in counts)
    return sum(k for k, _ in counts), Counter({BLOCKED: refused} if refused else {})




def download_pool(cfg: DownloadConfig, pairs_path: str | Path, pool_dir: str | Path, allow_hosts: list[str],
                  engine=None) -> dict:
    """Download every safe pair of ``pairs_path`` (a pairs folder or file) into ``pool_dir`` (resumes a killed
    run), return a summary. The download list is written by ``engine``'s tasks (in-process when None).

    Raises InputError when no image at all could be downloaded (the pool would be empty), DiskFullError
    when the disk fills up.
    """
    pool_dir, pairs_path = os.fspath(pool_dir), os.fspath(pairs_path)
    with disk_full_as_error(pool_dir):
        fsio.makedirs(pool_dir)
        kill_previous_run(pool_dir)
        if verify_shards(pool_dir):
            log.warning("download: damaged shards of an earlier run in %s will be fetched again", pool_dir)
        url_list = fsio.join(fsio.parent(pool_dir), "download_list")
        n_safe, rejected = write_download_list(engine or LocalEngine(), pairs_path, url_list, allow_hosts)
        if rejected:
            log.warning("download: %d URLs %s", sum(rejected.values()), BLOCKED)
        if n_safe == 0:
            raise InputError("no downloadable URL: every extracted pair was empty or unsafe")

        # Cap decompression bombs before any pixel buffer is allocated (OpenCV reads this when first used,
        # and img2dataset's worker processes inherit the environment).
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_image_pixels)
        PIL.Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

        done_before = {fsio.name_of(p) for p in finished_shards(pool_dir)}
        if cfg.distributor == "pyspark":
            run_img2dataset(cfg, url_list, pool_dir, allow_hosts)  # Spark owns its executors' lifetimes
        else:
            download_in_own_session(cfg, url_list, pool_dir, allow_hosts)
        verify_shards(pool_dir, checked=done_before)  # the shards of this call: the others were at the start
        _drop_failed_run(pool_dir, done_before)
        summary = failure_histogram(pool_dir, engine)
    summary["refused_before_download"] = dict(rejected)
    if summary["downloaded"] == 0:
        raise InputError(f"empty pool: all {summary['requested']} downloads failed "
                         f"({', '.join(f'{k}: {v}' for k, v in list(summary['failures'].items())[:3])})")
    return summary


def _drop_failed_run(pool_dir: str, done_before: set[str]) -> None:
    """If every request of the shards this call fetched failed (server down, network gone), remove those
    shards and raise: kept, they would count as done, and a resume would never fetch them again."""
    new = [s for s in finished_shards(pool_dir) if fsio.name_of(s) not in done_before]
    if not new or any(json.loads(fsio.read_bytes(shard_file(s, "_stats.json"))).get("successes", 0)
                      for s in new):
        return
    hist: Counter = Counter()
    for shard in new:
        parquet = shard_file(shard, ".parquet")
        if fsio.isfile(parquet):
            with fsio.open_file(parquet) as f:
                hist.update(normalise_error(e) for e in pq.read_table(f, columns=["error_message"])
                            .column("error_message").to_pylist())
        for suffix in ("_stats.json", ".tar", ".parquet"):  # the stats file first: it marks the shard done
            fsio.remove(shard_file(shard, suffix))
    raise InputError(f"download failed: all {sum(hist.values())} requests of this run failed "
                     f"({', '.join(f'{k}: {v}' for k, v in hist.most_common(3))})")


# The state of a staged download. Not named *.json: img2dataset's resume reads every *.json as shard stats.
_STATE = ".openaim-download.state"


def staging_dir(pool_dir: str) -> str:
    """Where a new pool is downloaded (and a killed download resumes) before it replaces ``pool_dir``."""
    return f"{os.fspath(pool_dir).rstrip('/')}.partial"


def _old_dir(pool_dir: str) -> str:
    return f"{os.fspath(pool_dir).rstrip('/')}.old"


def _state(folder: str) -> dict:
    try:
        return json.loads(fsio.read_bytes(fsio.join(folder, _STATE)))
    except (OSError, ValueError):
        return {}


def _finish_interrupted_swap(pool_dir: str) -> None:
    """A local run killed mid-swap: put the previous pool back if the new one never arrived, else drop it.
    (On an object store the swap is a copy whose record is written last: nothing to repair, see
    ``swap_in_pool``.)"""
    old = _old_dir(pool_dir)
    if not fsio.is_url(pool_dir) and os.path.exists(old):
        if os.path.exists(pool_dir):
            fsio.remove(old)
        else:
            os.rename(old, pool_dir)


def stage_pool(cfg: DownloadConfig, pairs_path: str, pool_dir: str, allow_hosts: list[str],
               fingerprint: str, restart: bool = False, engine=None) -> None:
    """Get a finished download for ``fingerprint`` (the download step's fingerprint) ready to swap in, without
    touching ``pool_dir``: download it into ``staging_dir(pool_dir)``, resuming a killed download of the same
    fingerprint there (unless ``restart``). Nothing to do if ``pool_dir`` already holds it (its step record
    was lost). Raises InputError, ``pool_dir`` untouched, when no image could be downloaded."""
    _finish_interrupted_swap(pool_dir)
    if not restart and _state(pool_dir).get("fingerprint") == fingerprint:
        return
    stage = staging_dir(pool_dir)
    state = _state(stage)
    if fsio.exists(stage) and (restart or state.get("fingerprint") != fingerprint):
        fsio.remove(stage)  # an abandoned download of other settings (or --force): start afresh
        state = {}
    if state.get("complete"):
        return
    fsio.makedirs(stage)
    fsio.write_json(fsio.join(stage, _STATE), {"fingerprint": fingerprint, "complete": False})
    try:
        summary = download_pool(cfg, pairs_path, stage, allow_hosts, engine)
    except InputError as exc:
        name = fsio.name_of(pool_dir)
        kept = f"{name}/ was kept as it was" if fsio.exists(pool_dir) else f"no {name}/ was made"
        raise InputError(f"{exc}; {kept}") from None
    fsio.write_json(fsio.join(stage, _STATE),
                    {"fingerprint": fingerprint, "complete": True, "summary": summary})


def swap_in_pool(pool_dir: str, fingerprint: str) -> dict:
    """Put the finished staged download in place of ``pool_dir`` and return its download summary.

    Locally: rename the old one away, the new one in, delete the old one; each rename is atomic, and a run
    killed between them is repaired by the next ``stage_pool``. On an object store (no rename): the old
    pool is removed and the staged objects copied in (server-side), the download record last, then the
    staged ones removed; a run killed before that record repeats the copy."""
    _finish_interrupted_swap(pool_dir)
    stage, old = staging_dir(pool_dir), _old_dir(pool_dir)
    state = _state(stage)
    if state.get("complete") and state.get("fingerprint") == fingerprint:
        if fsio.is_url(pool_dir):
            if _state(pool_dir) != state:
                fsio.remove(pool_dir)
                fsio.copy_dir(stage, pool_dir, last=_STATE)
            fsio.remove(stage)
        else:
            if os.path.exists(pool_dir):
                os.rename(pool_dir, old)
            os.rename(stage, pool_dir)
            fsio.remove(old)
    state = _state(pool_dir)
    if not (state.get("complete") and state.get("fingerprint") == fingerprint):
        raise OpenAIMError(f"no finished download to put in place of {pool_dir}: rerun to download it")
    return state["summary"]

