"""The dedup step over score parts, on an engine (curation.engine): exact copies, near copies, eval leaks.

Tasks are groups of consecutive parts of about ``task_bytes`` (curation.engine.byte_groups); rows are
named by their key (curation.parts.row_key: part index, row), so no task carries a table of the parts.

1. Exact copies: a shuffle by sha256 (``stable_bucket``). Each bucket keeps the best of every group of
   identical bytes (the highest score, then the lowest key) and writes its losers' keys to one file; a
   second shuffle, keyed by the task that owns each loser's part (``route_to_parts``), files them as one
   file per part, ``exact/<part index>.npy``, which the part's tasks open by name.
2. Near copies, cluster-partitioned (curation.dedup_near): clusters trained from a sample, each cluster
   task bounded; the pairs resolved into losers on the engine; one file per part with losers,
   ``near/<part index>.npy``.
3. Eval leaks: the evaluation index (curation.eval_index), memory-mapped once per worker process, is
   searched by every part task, which also writes the part's keep file ``dedup/keep/<shard>.parquet``
   (uid, keep, reason: exact_dup, near_dup, eval_leak, in that precedence).
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache, partial

import numpy as np
import pyarrow as pa

from curation import dedup
from curation.dedup_near import near_copies
from curation.dedup_plan import Plan, losers, make_plan, route_to_parts, save, vectors
from curation.engine import TASK_BYTES, byte_groups, stable_bucket
from curation.parts import Part, count_rows, read_part, row_key, write_table
from shared import fsio
from shared.config.curation import DedupConfig
from shared.stage_cache import combine_digests

log = logging.getLogger("openaim.curation")

# Versioned by its step: bump VERSION in openaim/steps/dedup.py when this changes the step's results.

EXACT_BYTES_PER_BUCKET = 512 << 20  # score-part bytes per exact-copy bucket (~200k rows at 2.5 KB a row)


# -- 1. exact copies -----------------------------------------------------------------------------------


def emit_sha(plan: Plan, buckets: int, task: list[Part]):
    """(bucket, (sha256 or None, score, key)) for every row of a task's parts: rows without a digest go to
    a bucket by key (counted, never grouped)."""
    for part in task:
        data = read_part(part.path, ("sha256", "score"))
        keys = row_key(part.index, np.arange(len(data["score"]))).tolist()
        for key, sha, score in zip(keys, data["sha256"], data["score"].tolist(), strict=True):
            if sha:
                yield stable_bucket(sha, buckets), (sha, score, key)
            else:
                yield key % buckets, (None, score, key)


def reduce_exact(plan: Plan, bucket: int, rows) -> tuple[int, int]:
    """Keep the best of each sha256 group (highest score, NaN lowest, then lowest key); the losers' keys to
    ``exact/bucket-<bucket>.npy``. Returns (rows, losers)."""
    rows = list(rows)
    grouped = sorted((r for r in rows if r[0] is not None),
                     key=lambda t: (t[0], -(t[1] if t[1] == t[1] else -math.inf), t[2]))
    losers = [g for k, (sha, _, g) in enumerate(grouped) if k > 0 and grouped[k - 1][0] == sha]
    if losers:
        save(fsio.join(plan.work, "exact-buckets", f"bucket-{bucket:06d}.npy"),
             np.array(losers, dtype=np.int64))
    return len(rows), len(losers)


# -- 2. near copies ------------------------------------------------------------------------------------


# -- 3. eval leaks + the keep files --------------------------------------------------------------------


@lru_cache(maxsize=1)
def _eval_vectors(path: str) -> np.ndarray:
    """The evaluation index, memory-mapped once per worker process (every part task of the process
    shares it; the page cache holds it once per machine; under a URL one local copy per process)."""
    return np.load(fsio.process_copy(path), mmap_mode="r")


def finish_task(plan: Plan, eval_index: str | None, out: str, task: list[Part]) -> dict:
    """The keep files of a task's parts; their counts summed and their digests combined."""
    counts = [finish_part(plan, eval_index, out, part) for part in task]
    return {**{k: sum(c[k] for c in counts) for k in counts[0] if k != "digest"},
            "digest": combine_digests(c["digest"] for c in counts)}


def finish_part(plan: Plan, eval_index: str | None, out: str, part: Part) -> dict:
    """The part's keep file from the exact and near losers and the eval-leak check; returns its counts."""
    data = read_part(part.path, ("uid", "embedding", "copy") if eval_index is not None else ("uid",))
    n = len(data["uid"])
    reason = np.full(n, "", dtype=object)
    reason[losers(fsio.join(plan.work, "near"), part)] = "near_dup"
    reason[losers(fsio.join(plan.work, "exact"), part)] = "exact_dup"
    if eval_index is not None and n:
        x, _ = vectors(data, plan.cfg.filter_weight)
        leak = ~dedup.decontaminate(x, _eval_vectors(str(eval_index)), plan.cfg.eval_threshold)
        reason[leak & (reason == "")] = "eval_leak"
    keep = reason == ""
    digest = write_table(fsio.join(out, f"{part.stem}.parquet"),
                         pa.table({"uid": data["uid"], "keep": keep.tolist(),
                                   "reason": [str(r) for r in reason]}))
    return {"in": n, "out": int(keep.sum()), "digest": digest,
            **{r: int((reason == r).sum()) for r in ("exact_dup", "near_dup", "eval_leak")}}


def run_dedup(engine, parts: list[Part], cfg: DedupConfig, work: str, out: str,
              eval_index: str | None, task_bytes: int = TASK_BYTES) -> dict:
    """The whole dedup step over ``parts`` (see the module doc); ``out`` gets one keep file per part.
    Parts are grouped into tasks of about ``task_bytes``."""
    work = os.fspath(work)  # a path or a URL
    fsio.remove(work)  # a killed run's loser files are not this run's
    fsio.makedirs(work)
    tasks = [[parts[i] for i in group] for group in byte_groups([p.bytes for p in parts], task_bytes)]
    plan = make_plan(tasks, work, cfg)
    near_tasks: dict = {}
    if cfg.exact:
        buckets = max(1, math.ceil(sum(p.bytes for p in parts) / EXACT_BYTES_PER_BUCKET))
        done = engine.group_reduce(tasks, partial(emit_sha, plan, buckets), partial(reduce_exact, plan),
                                   buckets)
        n, exact_losers = sum(d[0] for d in done), sum(d[1] for d in done)
        sources = [fsio.join(work, "exact-buckets", f"bucket-{b:06d}.npy")
                   for b, d in enumerate(done) if d[1]]
        route_to_parts(engine, plan, sources, fsio.join(work, "exact"))
    else:
        n, exact_losers = sum(engine.map(count_rows, tasks)), 0
    if cfg.near and n > 1:
        near_tasks = {"near_tasks": near_copies(engine, plan, tasks, n - exact_losers)}
    counts = engine.map(partial(finish_task, plan, eval_index, out), tasks)
    total = {k: sum(c[k] for c in counts) for k in counts[0] if k != "digest"}
    return {"in": total["in"], "out": total["out"],
            "dropped": {r: total[r] for r in ("exact_dup", "near_dup", "eval_leak")}, **near_tasks,
            "keep_digest": combine_digests(c["digest"] for c in counts)}
