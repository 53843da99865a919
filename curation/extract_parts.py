"""The extract step on an engine: one task per source file, a hash shuffle for the global pair dedup.

Each task reads one WARC/WAT/parquet source (curation.extract's readers), drops empty captions and
URLs that fail the safety check (curation.netsafety, inside the task), and sends every pair to the bucket
of its (url, caption) hash; its counts go to a small stats file. Each bucket task keeps the first
occurrence of every pair (source order, then link order: the single-process rule) and writes
``pairs/part-<bucket>.parquet`` (uid, url, caption, page_url, source) sorted by uid. No process holds a
``seen`` set of the crawl: a bucket holds the pairs of about ``SOURCE_BYTES_PER_BUCKET`` bytes of sources
(the number of buckets follows the crawl's bytes, not its number of files: a crawl of many small files
does not make sources x buckets shuffle blocks).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path

import pyarrow as pa

from curation import extract
from curation.engine import stable_bucket
from curation.parts import write_table
from shared import fsio
from shared.config.curation import ExtractConfig
from shared.stage_cache import combine_digests, hash_json

# Versioned by its step: bump VERSION in openaim/steps/extract.py when this changes the step's results.
SOURCE_BYTES_PER_BUCKET = 4 << 30  # source bytes per bucket: ~4 Common Crawl WARC files of ~1 GB each
URL_SOURCE_BYTES = 1 << 30  # an http(s) source counts as one such file: its size is not asked for
COLUMNS = ("uid", "url", "caption", "page_url", "source")


def source_pairs(cfg: ExtractConfig, buckets: int, stats_dir: str, task: tuple[int, str]):
    """One extract task: (bucket, (url, caption, page_url, source name, uid or None, source index, link
    index)) for every fetchable, captioned link of one source; its counts to ``stats_dir/<index>.json``."""
    index, src = task
    stats = extract.ExtractStats()
    name = fsio.name_of(src)
    with tempfile.TemporaryDirectory(prefix="openaim-extract-") as tmpdir:
        local = extract._open_source(src, cfg.allow_hosts, Path(tmpdir))
        links = extract.file_links(local, src, stats, cfg.max_page_bytes)
        for n, (url, alt, page_url, uid) in enumerate(links):
            caption = extract.screen_link(url, alt, cfg, stats)  # the URL safety check, in the task
            if caption is not None:
                key = stable_bucket(f"{url}\x00{caption}", buckets)
                yield key, (url, caption, page_url, name, uid, index, n)
    fsio.write_json(fsio.join(stats_dir, f"{index:06d}.json"), stats.as_dict())


def write_bucket(out_dir: str, bucket: int, rows) -> dict:
    """One bucket: the first occurrence of each (url, caption) (source order, then link order: the
    single-process rule), with its input uid or our hash, sorted by uid, to one parquet part."""
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[5], r[6]))
    first = [r for k, r in enumerate(rows) if k == 0 or rows[k - 1][:2] != r[:2]]
    table = sorted((r[4] or extract.pair_uid(r[0], r[1]), *r[:4]) for r in first)
    digest = write_table(fsio.join(out_dir, f"part-{bucket:05d}.parquet"),
                         pa.table({c: [t[i] for t in table] for i, c in enumerate(COLUMNS)},
                                  schema=pa.schema([(c, pa.string()) for c in COLUMNS])))
    return {"kept": len(first), "duplicate pair": len(rows) - len(first), "digest": digest}


def source_bytes(src: str) -> int:
    """A source's size: a file's (local or in object storage), ``URL_SOURCE_BYTES`` for an http(s) URL."""
    return URL_SOURCE_BYTES if src.startswith(("http://", "https://")) else fsio.size(src)


def run_extract(engine, cfg: ExtractConfig, sources: list[str], out_dir: str, stats_path: str) -> dict:
    """The extract step: ``out_dir`` (swapped in whole) gets the pair parts, ``stats_path`` the counts.
    Returns the counts and, under ``outputs_digest``, the digest of both (the tasks' records of the parts
    they wrote, and the counts): the step's identity without reading its outputs."""
    buckets = max(1, math.ceil(sum(map(source_bytes, sources)) / SOURCE_BYTES_PER_BUCKET))
    work = f"{os.fspath(out_dir).rstrip('/')}.stats"
    fsio.remove(work)
    fsio.makedirs(work)
    with fsio.replaced_dir(out_dir) as tmp:
        kept = engine.group_reduce(list(enumerate(sources)), partial(source_pairs, cfg, buckets, work),
                                   partial(write_bucket, tmp), buckets)
    total = {"records": 0, "corrupt_records": 0, "oversized_records": 0, "links": 0}
    dropped: Counter = Counter()
    for path, _ in fsio.list_files(work, "*.json"):
        s = json.loads(fsio.read_bytes(path))
        for k in total:
            total[k] += s[k]
        dropped.update(s["dropped"])
    fsio.remove(work)
    dropped["duplicate pair"] += sum(k["duplicate pair"] for k in kept)
    stats = {**total, "kept": sum(k["kept"] for k in kept),
             "dropped": dict(sorted((k, v) for k, v in dropped.items() if v))}
    fsio.write_json(stats_path, stats)
    return stats | {"outputs_digest": combine_digests([*(k["digest"] for k in kept), hash_json(stats)])}
