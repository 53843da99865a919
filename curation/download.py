"""Step 2 of curation: fetch the extracted pairs' images with img2dataset into webdataset shards (``pool/``).

img2dataset writes per shard ``NNNNN.tar`` (successes: jpg + txt + json with our ``uid``), ``NNNNN.parquet``
(every input row with ``status`` and ``error_message``) and ``NNNNN_stats.json``, whose presence marks the
shard done: with ``incremental_mode="incremental"`` a killed run resumes and never refetches a finished shard.

Safety: img2dataset fetches whatever it is given, ``file://`` included, so every URL is checked again here
(shared.netsafety, host names resolved) right before the list is handed over. Its default opt-out header
check (X-Robots-Tag noai/noimageai/noindex/noimageindex) stays on. Decompression bombs: OpenCV (which
img2dataset decodes with) refuses images over ``OPENCV_IO_MAX_IMAGE_PIXELS`` *before* allocating, which we
set from ``cfg.max_image_pixels``; ``max_image_area`` repeats the cap, and PIL's MAX_IMAGE_PIXELS covers our
own later decodes.

Distributors: ``multiprocessing`` (default, one machine) or ``pyspark``. With pyspark we reuse the active
SparkSession or start a local one (``local[processes]``). On a real cluster, start the session yourself:

    spark-submit --master spark://HOST:7077 --num-executors 16 --executor-cores 4 \\
        --conf spark.task.maxFailures=100 --py-files openaim.zip \\
        -m shared.cli build-dataset --config my.yaml --set curation.download.distributor=pyspark

(or, in a driver script, build ``SparkSession.builder.master("spark://HOST:7077")...getOrCreate()`` and call
``build_dataset(cfg)``); ``pool/`` must then be on storage every executor can write (HDFS, S3, NFS).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path

from shared.config.curation import DownloadConfig
from shared.errors import InputError
from shared.netsafety import url_rejection

log = logging.getLogger("openaim.curation")

# Ordered: the first pattern that matches an img2dataset error message names its reason.
_REASONS: list[tuple[str, str]] = [
    (r"HTTP Error (\d+)", "http {0}"),
    (r"timed? ?out|timeout", "timeout"),
    (r"Connection refused", "connection refused"),
    (r"Connection reset|RemoteDisconnected|BrokenPipe|closed connection", "connection reset"),
    (r"IncompleteRead|truncated", "truncated body"),
    (r"redirect", "redirect loop"),
    (r"X-Robots-Tag", "opted out (x-robots-tag)"),
    (r"image area too large|exceeds limit|too large|pixel", "image too large"),
    (r"decod|cannot identify|Unsupported image", "not an image"),
    (r"Name or service not known|getaddrinfo|nodename", "dns failure"),
    (r"unknown url type|unsafe", "unsafe url"),
]


def normalise_error(message: str | None) -> str:
    """Map an img2dataset error message to a short reason ('http 404', 'timeout', ...)."""
    if not message:
        return "unknown"
    for pattern, label in _REASONS:
        m = re.search(pattern, message, flags=re.IGNORECASE)
        if m:
            return label.format(*m.groups())
    return message.strip().splitlines()[0][:60]


def failure_histogram(pool_dir: Path) -> dict:
    """Counts of successes and of each normalised failure reason, from img2dataset's per-shard parquet files."""
    import pyarrow.parquet as pq

    hist: Counter = Counter()
    n_ok = n_total = 0
    for p in sorted(glob.glob(str(pool_dir / "[0-9]*.parquet"))):
        t = pq.read_table(p, columns=["status", "error_message"])
        for status, err in zip(t.column("status").to_pylist(), t.column("error_message").to_pylist()):
            n_total += 1
            if status == "success":
                n_ok += 1
            else:
                hist[normalise_error(err)] += 1
    return {"requested": n_total, "downloaded": n_ok, "failed": n_total - n_ok,
            "failures": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))}


def safe_download_list(pairs_path: Path, out_path: Path, allow_hosts: list[str]) -> tuple[int, Counter]:
    """Write img2dataset's input (url, caption, uid) keeping only URLs that pass the safety check now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared.atomic import atomic_path

    t = pq.read_table(pairs_path, columns=["uid", "url", "caption"])
    keep_idx, rejected = [], Counter()
    for i, url in enumerate(t.column("url").to_pylist()):
        why = url_rejection(url, allow_hosts, resolve=True)
        if why:
            rejected[why.split(" ")[0]] += 1
        else:
            keep_idx.append(i)
    with atomic_path(out_path) as tmp:
        pq.write_table(t.take(pa.array(keep_idx, type=pa.int64())), tmp)
    return len(keep_idx), rejected


@contextlib.contextmanager
def _quiet_library_output():
    """img2dataset's worker processes import albumentations (which warns and checks PyPI for updates) and draw
    tqdm bars on stderr: a failed build must end in one error line. Environment set only for the call."""
    quiet = {"NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1",
             "PYTHONWARNINGS": "ignore::UserWarning,ignore::DeprecationWarning"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _spark_session(processes: int):
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    # Local workers must run this interpreter (the venv with img2dataset), not whatever python3 is on PATH;
    # pyspark takes the worker interpreter from the environment when the context starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{processes}]").appName("openaim-download")
             .config("spark.pyspark.python", sys.executable).config("spark.pyspark.driver.python", sys.executable)
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "2g")
             .config("spark.task.maxFailures", "10").getOrCreate())
    return spark, True


def download_pool(cfg: DownloadConfig, pairs_path: Path, pool_dir: Path, allow_hosts: list[str]) -> dict:
    """Download every safe pair of ``pairs_path`` into ``pool_dir`` (resumes a killed run), return the summary.

    Raises InputError when no image at all could be downloaded (the pool would be empty).
    """
    import PIL.Image

    pool_dir.mkdir(parents=True, exist_ok=True)
    url_list = pool_dir.parent / "download_list.parquet"
    n_safe, rejected = safe_download_list(pairs_path, url_list, allow_hosts)
    if rejected:
        log.warning("download: %d URLs refused by the safety check: %s", sum(rejected.values()), dict(rejected))
    if n_safe == 0:
        raise InputError("no downloadable URL: every extracted pair was empty or unsafe")

    # Cap decompression bombs before any pixel buffer is allocated (OpenCV reads this when first used,
    # and img2dataset's worker processes inherit the environment).
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_image_pixels)
    PIL.Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

    with _quiet_library_output():
        from img2dataset import download

        spark, own_spark = (None, False)
        if cfg.distributor == "pyspark":
            spark, own_spark = _spark_session(cfg.processes)
        try:
            download(
                url_list=str(url_list), input_format="parquet", url_col="url", caption_col="caption",
                save_additional_columns=["uid"], output_folder=str(pool_dir), output_format="webdataset",
                image_size=cfg.image_size, resize_mode=cfg.resize_mode, processes_count=cfg.processes,
                thread_count=cfg.threads, number_sample_per_shard=cfg.samples_per_shard, timeout=cfg.timeout,
                retries=cfg.retries, distributor=cfg.distributor, incremental_mode="incremental",
                max_image_area=float(cfg.max_image_pixels), compute_hash="sha256", enable_wandb=False,
                subjob_size=1000, oom_shard_count=5,
            )
        finally:
            if own_spark and spark is not None:
                spark.stop()
    summary = failure_histogram(pool_dir)
    summary["refused_before_download"] = dict(rejected)
    if summary["downloaded"] == 0:
        raise InputError(f"empty pool: all {summary['requested']} downloads failed "
                         f"({', '.join(f'{k}: {v}' for k, v in list(summary['failures'].items())[:3])})")
    return summary


def pool_shards(pool_dir: Path) -> list[Path]:
    """The finished pool shards (a tar counts only once img2dataset wrote its stats file)."""
    return [Path(p) for p in sorted(glob.glob(str(pool_dir / "[0-9]*.tar")))
            if Path(p[:-4] + "_stats.json").is_file()]


def shard_samples(shard: Path):
    """Yield (key, jpg bytes, caption, meta dict) for every complete sample of one pool tar, in tar order."""
    import tarfile

    with tarfile.open(shard) as tar:
        pending: dict[str, dict[str, bytes]] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition(".")
            entry = pending.setdefault(key, {})
            entry[ext] = tar.extractfile(member).read()
            if {"jpg", "txt", "json"} <= entry.keys():
                del pending[key]
                yield key, entry["jpg"], entry["txt"].decode("utf-8"), json.loads(entry["json"])


def iter_pool(pool_dir: Path, uids: set[str] | None = None):
    """Yield (uid, jpg bytes, caption, meta dict) for each sample of the pool (only ``uids`` if given)."""
    for shard in pool_shards(pool_dir):
        for _, jpg, caption, meta in shard_samples(shard):
            if uids is None or meta.get("uid") in uids:
                yield meta.get("uid"), jpg, caption, meta
