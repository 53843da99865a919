"""The downloaded pool (``pool/``) on disk: img2dataset's shards, their samples and their failures.

img2dataset writes per shard ``NNNNN.tar`` (successes: jpg + txt + json with our ``uid``), ``NNNNN.parquet``
(every input row with ``status`` and ``error_message``) and ``NNNNN_stats.json``, whose presence marks the
shard done. The later steps (score, write, the report) read the samples of the finished shards here, with
the one webdataset reader (shared.wds_reader); the download step (curation.download) checks and counts
the shards here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.engine import TASK_BYTES, LocalEngine, byte_groups
from curation.netsafety import BLOCKED
from shared import fsio
from shared.wds_reader import read_samples

POOL_FIELDS = ("jpg", "txt", "json")  # what img2dataset writes for each downloaded image

# Ordered: the first pattern that matches an img2dataset error message names its reason.
_REASONS: list[tuple[str, str]] = [
    (re.escape(BLOCKED), BLOCKED),
    (r"No space left on device|\[Errno 28\]", "disk full"),
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


def pool_shards(pool_dir: str) -> list[str]:
    """The finished pool shards' tars, paths or URLs (a tar counts only once img2dataset wrote its stats
    file)."""
    tars = {path for path, _ in fsio.list_files(pool_dir, "[0-9]*.tar")}
    return [shard_file(s, ".tar") for s in finished_shards(pool_dir) if shard_file(s, ".tar") in tars]


def shard_samples(shard: str) -> Iterator[tuple[str, bytes, str, dict]]:
    """Yield (key, jpg bytes, caption, meta dict) for every complete sample of one pool tar, in tar order."""
    for sample in read_samples(shard):
        if all(field in sample for field in POOL_FIELDS):
            yield sample["__key__"], sample["jpg"], sample["txt"].decode("utf-8"), json.loads(sample["json"])


def iter_pool(pool_dir: str, uids: set[str] | None = None) -> Iterator[tuple[str, bytes, str, dict]]:
    """Yield (uid, jpg bytes, caption, meta dict) for each sample of the pool (only ``uids`` if given)."""
    for shard in pool_shards(pool_dir):
        for _, jpg, caption, meta in shard_samples(shard):
            if uids is None or meta.get("uid") in uids:
                yield meta.get("uid"), jpg, caption, meta


def normalise_error(message: str | None) -> str:
    """Map an img2dataset error message to a short reason ('http 404', 'timeout', ...)."""
    if not message:
        return "unknown"
    for pattern, label in _REASONS:
        m = re.search(pattern, message, flags=re.IGNORECASE)
        if m:
            return label.format(*m.groups())
    return message.strip().splitlines()[0][:60]


def finished_shards(pool_dir: str) -> list[str]:
    """Paths or URLs without suffix (``pool/00003``) of the shards img2dataset finished (their stats file
    exists): one listing of the pool."""
    return [p[: -len("_stats.json")] for p, _ in fsio.list_files(pool_dir, "[0-9]*_stats.json")]


def shard_file(shard: str, suffix: str) -> str:
    """One file of a finished shard: ``pool/00003`` + ``.tar`` -> ``pool/00003.tar``."""
    return f"{shard}{suffix}"


def shard_failures(shards: list[str]) -> tuple[int, int, Counter]:
    """One task: (requested, downloaded, failures by normalised reason) of a group of finished shards, from
    their parquet files (each distinct message normalised once)."""
    hist: Counter = Counter()
    n_ok = n_total = 0
    for shard in shards:
        with fsio.open_file(shard_file(shard, ".parquet")) as f:
            t = pq.read_table(f, columns=["status", "error_message"])
        ok = pc.equal(pc.fill_null(t.column("status"), ""), "success")
        failed = t.filter(pc.invert(ok)).column("error_message")
        n_total, n_ok = n_total + t.num_rows, n_ok + t.num_rows - len(failed)
        for message, count in Counter(failed.to_pylist()).items():
            hist[normalise_error(message)] += count
    return n_total, n_ok, hist


def failure_histogram(pool_dir: str, engine=None) -> dict:
    """Counts of successes and of each normalised failure reason, from the finished shards' parquet files:
    tasks of ``engine`` (in this process when None) count groups of shards, the driver adds the counts."""
    shards = finished_shards(pool_dir)
    sizes = dict(fsio.list_files(pool_dir, "[0-9]*.parquet"))
    groups = byte_groups([sizes.get(shard_file(s, ".parquet"), 0) for s in shards], TASK_BYTES)
    counted = (engine or LocalEngine()).map(shard_failures, [[shards[i] for i in g] for g in groups])
    hist: Counter = Counter()
    for _, _, h in counted:
        hist.update(h)
    n_total, n_ok = sum(c[0] for c in counted), sum(c[1] for c in counted)
    return {"requested": n_total, "downloaded": n_ok, "failed": n_total - n_ok,
            "failures": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))}


def _tar_is_complete(path: str) -> bool:
    """A closed tar ends in whole 512-byte blocks, the last two all zero (end of archive): a write cut short
    does not. O(1): a resume checks every shard without reading the pool."""
    size = fsio.size(path)
    if size < 1024 or size % 512:
        return False
    with fsio.open_file(path, "rb") as f:
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def verify_shards(pool_dir: str, checked: set[str] = frozenset()) -> int:
    """Drop finished-looking shards whose stats, tar or parquet is incomplete (a write cut short by a kill or
    a full disk), so a resume fetches them again; shards named in ``checked`` (verified earlier in this
    run) are not opened again. Returns how many shards were dropped."""
    dropped = 0
    for shard in finished_shards(pool_dir):
        if fsio.name_of(shard) in checked:
            continue
        try:
            json.loads(fsio.read_bytes(shard_file(shard, "_stats.json")))
            with fsio.open_file(shard_file(shard, ".parquet")) as f:
                pq.read_metadata(f)  # the footer: written last
            if not _tar_is_complete(shard_file(shard, ".tar")):
                raise ValueError("truncated tar")
        except Exception:  # noqa: BLE001 - any damage means: fetch this shard again
            for suffix in ("_stats.json", ".tar", ".parquet"):  # stats first: it marks the shard done
                fsio.remove(shard_file(shard, suffix))
            dropped += 1
    return dropped
