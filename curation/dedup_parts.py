"""The dedup step over score parts, on an engine (curation.engine): exact copies, near copies, eval leaks.

Tasks are groups of consecutive parts of about ``task_bytes`` (curation.engine.byte_groups); rows are
named by their key (curation.parts.row_key: part index, row), so no task carries a table of the parts.

1. Exact copies: a shuffle by sha256 (``stable_bucket``). Each bucket keeps the best of every group of
   identical bytes (the highest score, then the lowest key) and writes its losers' keys to one file; a
   second shuffle, keyed by the task that owns each loser's part (``route_to_parts``), files them as one
   file per part, ``exact/<part index>.npy``, which the part's tasks open by name.
2. Near copies, cluster-partitioned (SemDeDup-style): a sample of the exact survivors (a bounded number of
   rows per part) trains, on the driver, a PCA (above ``REDUCE_ABOVE`` rows, or with index "ivf") and
   ~sqrt(3 n) spherical k-means centroids (up to ``flat_max`` survivors, index "auto": one cluster, exact,
   one task holding every survivor). Every part task assigns each row to its nearest centroid (where it
   is a *member*) and sends it as a *query* to every other centroid close to that one
   (curation.dedup_clusters), and each zoomed view (curation.copy_detection) the same way: a copy
   near a boundary is met from either side. A cluster task compares its members with each other and its
   queries with its members, one matrix product per block of rows: on the stored descriptors at the
   threshold (exact) without a PCA; with one, in the PCA space at ``threshold - dedup.CANDIDATE_MARGIN``,
   each candidate then checked on the stored descriptors. The
   pairs (with both scores) come back as files; the driver applies ``dedup.keep_best_of_neighbours`` to
   the linked rows only (memory: the pairs, not the pool) and writes one file per part with losers,
   ``near/<part index>.npy``.
3. Eval leaks: the evaluation index (curation.eval_index), memory-mapped once per worker process, is
   searched by every part task, which also writes the part's keep file ``dedup/keep/<shard>.parquet``
   (uid, keep, reason: exact_dup, near_dup, eval_leak, in that precedence).
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import dedup
from curation.copy_detection import dedup_vectors
from curation.dedup_clusters import Clusters, n_clusters, pack_clusters, train_clusters
from curation.engine import TASK_BYTES, byte_groups, stable_bucket
from curation.parts import Part, count_rows, key_part, key_row, quantize, read_part, row_key
from shared.atomic import atomic_path
from shared.config.curation import DedupConfig
from shared.stage_cache import combine_digests, digest_file

log = logging.getLogger("openaim.curation")

# Versioned by its step: bump VERSION in openaim/steps/dedup.py when this changes the step's results.

REDUCE_ABOVE = 50_000  # more survivors than this: clusters are compared in a PCA-64 space
# Why these values (measured): benchmarks/RESULTS.md, "Curation: dedup design figures".
ROWS_PER_TASK = 4096  # vectors (members + queries) per cluster task: bounds a task's memory (~4 KB per
# 768-d vector at its peak: its float32 form and one int8 copy)
SAMPLE_BASE = 4096  # rows sampled for the PCA, plus dedup.TRAIN_PER_CENTROID per centroid for k-means
EXACT_BYTES_PER_BUCKET = 512 << 20  # score-part bytes per exact-copy bucket (~200k rows at 2.5 KB a row)


@dataclass(frozen=True)
class Plan:
    """What every dedup task needs (picklable: it travels to Spark and process-pool workers). Small: no
    table of the parts (a task gets its own parts; a row key names its part)."""

    work: Path
    cfg: DedupConfig
    task_starts: np.ndarray  # [tasks] the index of each task's first part (tasks are consecutive parts)

    def task_of(self, part_index: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.task_starts, part_index, side="right") - 1


def make_plan(tasks: list[list[Part]], work: Path, cfg: DedupConfig) -> Plan:
    return Plan(work, cfg, np.array([t[0].index for t in tasks], dtype=np.int64))


def _vectors(data: dict, w: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """A part's unit dedup vectors [n, D] and its zoomed views (each [n, D])."""
    emb, copies = data["embedding"], data["copy"]
    x = dedup_vectors(emb, copies[:, 0], w)
    return x, [dedup_vectors(emb, copies[:, v], w) for v in range(1, copies.shape[1])]


def _losers(folder: Path, part: Part) -> np.ndarray:
    """Rows of ``part`` that lost in ``folder`` (exact or near): its one file there, if any."""
    path = folder / f"{part.index:08d}.npy"
    return key_row(np.load(path)) if path.is_file() else np.zeros(0, np.int64)


def _write_part_keys(folder: Path, keys: np.ndarray) -> int:
    """Sorted row keys to one file per part they belong to (``<part index>.npy``); the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = np.sort(np.asarray(keys, dtype=np.int64))
    owner = key_part(keys)
    cuts = np.flatnonzero(np.diff(owner)) + 1
    for chunk in np.split(keys, cuts) if len(keys) else []:
        with atomic_path(folder / f"{int(key_part(chunk[:1])[0]):08d}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, chunk)
    return len(cuts) + 1 if len(keys) else 0


def emit_to_tasks(plan: Plan, path: Path):
    """Route one file of row keys (any parts) to the tasks that own their parts."""
    keys = np.load(path)
    task = plan.task_of(key_part(keys))
    order = np.argsort(task, kind="stable")
    cuts = np.flatnonzero(np.diff(task[order])) + 1
    for sel in np.split(order, cuts) if len(order) else []:
        yield int(task[sel[0]]), keys[sel]


def write_routed(folder: Path, task: int, chunks) -> int:
    """One task's share of the routed keys: one file per part (``folder/<part index>.npy``)."""
    chunks = list(chunks)
    return _write_part_keys(folder, np.concatenate(chunks)) if chunks else 0


def route_to_parts(engine, plan: Plan, sources: list[Path], folder: Path) -> None:
    """Row keys in ``sources`` (files of keys from any parts) to one file per part in ``folder``, through
    the engine's shuffle keyed by the task that owns the part: no folder of (source, part) files, no
    listing per part."""
    engine.group_reduce(sources, partial(emit_to_tasks, plan), partial(write_routed, folder),
                        len(plan.task_starts))


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
        folder = plan.work / "exact-buckets"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"bucket-{bucket:06d}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.array(losers, dtype=np.int64))
    return len(rows), len(losers)


# -- 2. near copies ------------------------------------------------------------------------------------


def _survivors(plan: Plan, part: Part, data: dict) -> np.ndarray:
    """Row indices of the part that survived exact dedup."""
    keep = np.ones(len(data["score"]), dtype=bool)
    keep[_losers(plan.work / "exact", part)] = False
    return np.flatnonzero(keep)


def sample_task(plan: Plan, rate: float, task: list[Part]) -> tuple[np.ndarray, int]:
    """A seeded sample of the exact survivors' dedup vectors of a task's parts (the k-means / PCA training
    set; each part seeded by its index) and the number of views each row has (vector + zoomed views)."""
    xs, views = [], 1
    for part in task:
        data = read_part(part.path, ("score", "embedding", "copy"))
        rows = _survivors(plan, part, data)
        rng = np.random.default_rng(part.index)
        picked = rows[rng.random(len(rows)) < rate]
        vectors = {k: v[picked] for k, v in data.items() if k != "score"}
        xs.append(_vectors(vectors, plan.cfg.filter_weight)[0])
        views = max(views, data["copy"].shape[1])
    return np.concatenate(xs), views


def emit_clusters(plan: Plan, clusters: Clusters, task: list[Part]):
    for part in task:
        yield from _emit_part_clusters(plan, clusters, part)


def _emit_part_clusters(plan: Plan, clusters: Clusters, part: Part):
    """(bucket, (cluster, role, keys, scores, stored int8 vectors, PCA-space vectors)) for a part's exact
    survivors, one record of row-aligned arrays per bucket: role 0 = member (a row's own vector in its
    nearest cluster), 1 = query (its vector in another cluster within the margin, or a zoomed view in its
    clusters). The PCA-space vectors (float16, 64-d: a quarter of a 512-d int8 vector's bytes) are None
    when the clusters have no PCA."""
    data = read_part(part.path, ("score", "embedding", "copy"))
    rows = _survivors(plan, part, data)
    w = plan.cfg.filter_weight
    x, views = _vectors({k: v[rows] for k, v in data.items() if k != "score"}, w)
    scores, gids = data["score"][rows].astype(np.float64), row_key(part.index, rows)
    pca = clusters.pca_components is not None
    sent = []  # per view: (row, cluster, role, int8 vectors, PCA-space float16 vectors or None)
    for v, vecs in enumerate([x, *views]):
        # copy descriptors alone (w = 0) are the stored int8 values themselves; the tasks check pairs on
        # the stored form (normalised again), and search in the PCA space when there is one
        packed = data["copy"][rows, v].astype(np.int8) if w <= 0 else quantize(vecs)
        reduced = clusters.reduce(vecs)
        row, cluster, nearest = clusters.assign(reduced)
        sent.append((row, cluster, np.where(nearest & (v == 0), 0, 1).astype(np.int8), packed[row],
                     reduced[row].astype(np.float16) if pca else None))
    row, cluster, role, packed = (np.concatenate([s[i] for s in sent]) for i in range(4))
    reduced = np.concatenate([s[4] for s in sent]) if pca else None
    bucket = cluster % clusters.buckets if clusters.bucket_of is None else clusters.bucket_of[cluster]
    order = np.argsort(bucket, kind="stable")
    cuts = np.flatnonzero(np.diff(bucket[order])) + 1
    for sel in np.split(order, cuts) if len(order) else []:
        r = row[sel]
        yield int(bucket[sel[0]]), (cluster[sel], role[sel], gids[r], scores[r], packed[sel],
                                    None if reduced is None else reduced[sel])


def _cluster_pairs(f: np.ndarray, reduced: np.ndarray | None, gids: np.ndarray, scores: np.ndarray,
                   members: int, threshold: float):
    """Copy pairs (gid_a, gid_b, score_a, score_b) within one cluster: ``f`` holds its unit vectors,
    members first (``members`` of them), then queries; every member against every member and every
    query against every member, one matrix product per block of rows. Without ``reduced`` the products
    are taken on ``f`` at the threshold (exact). With it (the vectors in the clusters' PCA space) they are
    taken there at ``threshold - dedup.CANDIDATE_MARGIN`` (8x fewer operations at 512-d) and each
    candidate is checked on ``f``."""
    search = f if reduced is None else reduced
    radius = threshold if reduced is None else threshold - dedup.CANDIDATE_MARGIN
    out = []
    step = max(1, dedup.PRODUCT_BLOCK // max(1, members))
    for s in range(0, len(f), step):
        a, b = np.nonzero(search[s:s + step] @ search[:members].T >= radius)
        a += s
        # member-member pairs once (a < b); query-member pairs unless both are one row
        wanted = np.where(a < members, a < b, gids[a] != gids[b])
        a, b = a[wanted], b[wanted]
        if reduced is not None:
            ok = np.einsum("ij,ij->i", f[a], f[b]) >= threshold
            a, b = a[ok], b[ok]
        out.append((gids[a], gids[b], scores[a], scores[b]))
    return out


def reduce_clusters(plan: Plan, bucket: int, records) -> tuple[int, int]:
    """Every cluster of this bucket, one at a time; its pairs to ``near/pairs-<bucket>.npz``. Returns
    (vectors received, pairs found)."""
    records = list(records)
    received = sum(len(r[0]) for r in records)
    found = []
    if records:
        cluster, role, gids, scores, packed = (np.concatenate([r[i] for r in records]) for i in range(5))
        reduced = np.concatenate([r[5] for r in records]) if records[0][5] is not None else None
        del records  # the task's peak is ~4 KB per 768-d vector: its float32 form and one int8 copy
        order = np.lexsort((gids, role, cluster))  # by cluster, members first, then by key
        cluster, role, gids, scores = cluster[order], role[order], gids[order], scores[order]
        unit = packed[order].astype(np.float32)
        del packed
        # in place, norms without a [rows, D] temporary: no third copy
        unit /= np.sqrt(np.maximum(np.einsum("ij,ij->i", unit, unit), 1e-24))[:, None]
        if reduced is not None:
            reduced = reduced[order].astype(np.float32)
        starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True])
        for c0, c1 in itertools.pairwise(starts):
            members = int((role[c0:c1] == 0).sum())
            if members:
                found += _cluster_pairs(unit[c0:c1], None if reduced is None else reduced[c0:c1],
                                        gids[c0:c1], scores[c0:c1], members, plan.cfg.near_threshold)
    cols = [np.concatenate([p[k] for p in found]) if found else np.zeros(0) for k in range(4)]
    folder = plan.work / "near"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"pairs-{bucket:06d}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, a=cols[0].astype(np.int64), b=cols[1].astype(np.int64), sa=cols[2], sb=cols[3])
    return received, len(cols[0])


def resolve_near(plan: Plan) -> int:
    """Driver: the union of the cluster pairs -> keep best of direct neighbours -> near losers, one file
    per part that has any (``near/<part index>.npy``)."""
    a, b, sa, sb = [], [], [], []
    for path in sorted((plan.work / "near").glob("pairs-*.npz")):
        with np.load(path) as z:
            a.append(z["a"]), b.append(z["b"]), sa.append(z["sa"]), sb.append(z["sb"])
    if not a or not sum(len(x) for x in a):
        return 0
    a, b, sa, sb = (np.concatenate(v) for v in (a, b, sa, sb))
    linked, inverse = np.unique(np.r_[a, b], return_inverse=True)  # compact ids, in key order
    scores = np.empty(len(linked), np.float64)
    scores[inverse] = np.r_[sa, sb]
    i, j = inverse[:len(a)], inverse[len(a):]
    i, j = dedup.unique_pairs([(i, j)])
    keep = dedup.keep_best_of_neighbours(len(linked), i, j, scores)
    _write_part_keys(plan.work / "near", linked[~keep])
    return int((~keep).sum())


# -- 3. eval leaks + the keep files --------------------------------------------------------------------


@lru_cache(maxsize=1)
def _eval_vectors(path: str) -> np.ndarray:
    """The evaluation index, memory-mapped once per worker process (every part task of the process
    shares it; the page cache holds it once per machine)."""
    return np.load(path, mmap_mode="r")


def finish_task(plan: Plan, eval_index: Path | None, out: Path, task: list[Part]) -> dict:
    """The keep files of a task's parts; their counts summed and their digests combined."""
    counts = [finish_part(plan, eval_index, out, part) for part in task]
    return {**{k: sum(c[k] for c in counts) for k in counts[0] if k != "digest"},
            "digest": combine_digests(c["digest"] for c in counts)}


def finish_part(plan: Plan, eval_index: Path | None, out: Path, part: Part) -> dict:
    """The part's keep file from the exact and near losers and the eval-leak check; returns its counts."""
    data = read_part(part.path, ("uid", "embedding", "copy") if eval_index is not None else ("uid",))
    n = len(data["uid"])
    reason = np.full(n, "", dtype=object)
    reason[_losers(plan.work / "near", part)] = "near_dup"
    reason[_losers(plan.work / "exact", part)] = "exact_dup"
    if eval_index is not None and n:
        x, _ = _vectors(data, plan.cfg.filter_weight)
        leak = ~dedup.decontaminate(x, _eval_vectors(str(eval_index)), plan.cfg.eval_threshold)
        reason[leak & (reason == "")] = "eval_leak"
    keep = reason == ""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{part.stem}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"uid": data["uid"], "keep": keep.tolist(),
                                 "reason": [str(r) for r in reason]}), tmp)
    return {"in": n, "out": int(keep.sum()), "digest": digest_file(path),
            **{r: int((reason == r).sum()) for r in ("exact_dup", "near_dup", "eval_leak")}}


def run_dedup(engine, parts: list[Part], cfg: DedupConfig, work: Path, out: Path,
              eval_index: Path | None, task_bytes: int = TASK_BYTES) -> dict:
    """The whole dedup step over ``parts`` (see the module doc); ``out`` gets one keep file per part.
    Parts are grouped into tasks of about ``task_bytes``."""
    shutil.rmtree(work, ignore_errors=True)  # a killed run's loser files are not this run's
    work.mkdir(parents=True)
    tasks = [[parts[i] for i in group] for group in byte_groups([p.bytes for p in parts], task_bytes)]
    plan = make_plan(tasks, work, cfg)
    near_tasks: dict = {}
    if cfg.exact:
        buckets = max(1, math.ceil(sum(p.bytes for p in parts) / EXACT_BYTES_PER_BUCKET))
        done = engine.group_reduce(tasks, partial(emit_sha, plan, buckets), partial(reduce_exact, plan),
                                   buckets)
        n, exact_losers = sum(d[0] for d in done), sum(d[1] for d in done)
        sources = [work / "exact-buckets" / f"bucket-{b:06d}.npy" for b, d in enumerate(done) if d[1]]
        route_to_parts(engine, plan, sources, work / "exact")
    else:
        n, exact_losers = sum(engine.map(count_rows, tasks)), 0
    if cfg.near and n > 1:
        started = time.perf_counter()
        survivors = n - exact_losers
        if cfg.index == "flat" or (cfg.index == "auto" and survivors <= cfg.flat_max):
            # one cluster: every pair compared exactly, by one task that holds every survivor
            clusters = Clusters(np.ones((1, 1), np.float32), None, None, 1)
        else:
            k = n_clusters(survivors)
            rate = min(1.0, (SAMPLE_BASE + dedup.TRAIN_PER_CENTROID * k) / max(1, survivors))
            samples = engine.map(partial(sample_task, plan, rate), tasks)
            sample, views = np.concatenate([s[0] for s in samples]), max(s[1] for s in samples)
            reduce = cfg.index == "ivf" or survivors > REDUCE_ABOVE
            clusters = train_clusters(sample, survivors, reduce, 1)
            # each cluster's vectors, estimated from where the sample's rows are sent (their zoomed views
            # assumed to go where they go), packed into tasks of ~ROWS_PER_TASK vectors
            _, sent, _ = clusters.assign(clusters.reduce(sample))
            load = np.bincount(sent, minlength=len(clusters.centroids)) * (views * survivors / len(sample))
            bucket_of, buckets = pack_clusters(load, ROWS_PER_TASK)
            clusters = replace(clusters, buckets=buckets, bucket_of=bucket_of)
        trained = time.perf_counter()
        done = engine.group_reduce(tasks, partial(emit_clusters, plan, clusters),
                                   partial(reduce_clusters, plan), clusters.buckets)
        searched = time.perf_counter()
        dropped = resolve_near(plan)
        # the largest cluster task (vectors received) against its target, for benchmarks/curation_parts_scale
        near_tasks = {"near_tasks": {"largest": max(d[0] for d in done), "target": ROWS_PER_TASK,
                                     "pairs": sum(d[1] for d in done)}}
        log.info("dedup near: %d survivors, %d clusters in %d tasks, %.2f vectors sent per row, %d pairs, "
                 "%d dropped; %.1f s sample + train, %.1f s assign + compare, %.1f s resolve", survivors,
                 len(clusters.centroids), clusters.buckets, sum(d[0] for d in done) / max(1, survivors),
                 sum(d[1] for d in done), dropped, trained - started, searched - trained,
                 time.perf_counter() - searched)
    counts = engine.map(partial(finish_task, plan, eval_index, out), tasks)
    total = {k: sum(c[k] for c in counts) for k in counts[0] if k != "digest"}
    return {"in": total["in"], "out": total["out"],
            "dropped": {r: total[r] for r in ("exact_dup", "near_dup", "eval_leak")}, **near_tasks,
            "keep_digest": combine_digests(c["digest"] for c in counts)}
