"""The dedup step over score parts, on an engine (curation.engine): exact copies, near copies, eval leaks.

1. Exact copies: a shuffle by sha256 (``stable_bucket``). Each bucket keeps the best of every group of
   identical bytes (the highest score, then the lowest global id) and writes the losers'
   global ids to one small file per part they came from.
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
   the linked rows only (memory: the pairs, not the pool).
3. Eval leaks: the evaluation index (curation.eval_index, small) is shipped to every part task, which
   also writes the part's keep file ``dedup/keep/<shard>.parquet`` (uid, keep, reason: exact_dup,
   near_dup, eval_leak, in that precedence).
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import dedup
from curation.copy_detection import dedup_vectors
from curation.dedup_clusters import Clusters, n_clusters, pack_clusters, train_clusters
from curation.engine import stable_bucket
from curation.parts import Part, quantize, read_part
from shared.atomic import atomic_path
from shared.config.curation import DedupConfig

log = logging.getLogger("openaim.curation")

# Bump when the keep files (this module, dedup.py, dedup_clusters.py, copy_detection.py, eval_index.py,
# parts.py) change for
# the same config and inputs: this step and every step after it rerun (shared/stage_cache.py). Edits that
# change no result (comments, refactors) need no bump. 2: cluster-partitioned, registry eval sets, int8.
# 3: nearest cluster by faiss's top-k, within-cluster candidates in the PCA space (when used), verified.
VERSION = 3

REDUCE_ABOVE = 50_000  # more survivors than this: clusters are compared in a PCA-64 space
# Why these values (measured): benchmarks/RESULTS.md, "Curation: dedup design figures".
ROWS_PER_TASK = 4096  # vectors (members + queries) per cluster task: bounds a task's memory (~4 KB per
# 768-d vector at its peak: its float32 form and one int8 copy)
SAMPLE_BASE = 4096  # rows sampled for the PCA, plus dedup.TRAIN_PER_CENTROID per centroid for k-means
EXACT_ROWS_PER_BUCKET = 200_000


@dataclass(frozen=True)
class Plan:
    """What every dedup task needs (picklable: it travels to Spark and process-pool workers)."""

    parts: list[Part]
    work: Path
    cfg: DedupConfig
    offsets: np.ndarray = field(default=None)  # type: ignore[assignment]

    def part_of(self, gids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, gids, side="right") - 1


def make_plan(parts: list[Part], work: Path, cfg: DedupConfig) -> Plan:
    return Plan(parts, work, cfg, np.array([p.offset for p in parts], dtype=np.int64))


def _vectors(data: dict, w: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """A part's unit dedup vectors [n, D] and its zoomed views (each [n, D])."""
    emb, copies = data["embedding"], data["copy"]
    x = dedup_vectors(emb, copies[:, 0], w)
    return x, [dedup_vectors(emb, copies[:, v], w) for v in range(1, copies.shape[1])]


def _losers(folder: Path, index: int) -> np.ndarray:
    files = sorted(folder.glob(f"p{index:06d}-*.npy")) if folder.is_dir() else []
    return np.concatenate([np.load(f) for f in files]) if files else np.zeros(0, np.int64)


def _write_losers(plan: Plan, folder: Path, tag: str, gids: np.ndarray) -> None:
    """Route global ids back to their parts: one file per part (p<part>-<tag>.npy)."""
    folder.mkdir(parents=True, exist_ok=True)
    gids = np.sort(np.asarray(gids, dtype=np.int64))
    owner = plan.part_of(gids)
    for p in np.unique(owner):
        with atomic_path(folder / f"p{int(p):06d}-{tag}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, gids[owner == p])


# -- 1. exact copies -----------------------------------------------------------------------------------


def emit_sha(plan: Plan, buckets: int, index: int):
    part = plan.parts[index]
    data = read_part(part.path, ("sha256", "score"))
    for r, (sha, score) in enumerate(zip(data["sha256"], data["score"].tolist(), strict=True)):
        if sha:  # rows without a digest are never grouped
            yield stable_bucket(sha, buckets), (sha, score, part.offset + r)


def reduce_exact(plan: Plan, bucket: int, rows) -> int:
    """Keep the best of each sha256 group (highest score, NaN lowest, then lowest global id)."""
    rows = sorted(rows, key=lambda t: (t[0], -(t[1] if t[1] == t[1] else -math.inf), t[2]))
    losers = [g for k, (sha, _, g) in enumerate(rows) if k > 0 and rows[k - 1][0] == sha]
    _write_losers(plan, plan.work / "exact", f"b{bucket:06d}", np.array(losers, dtype=np.int64))
    return len(losers)


# -- 2. near copies ------------------------------------------------------------------------------------


def _survivors(plan: Plan, index: int, data: dict) -> np.ndarray:
    """Row indices of the part that survived exact dedup."""
    lost = _losers(plan.work / "exact", index) - plan.parts[index].offset
    keep = np.ones(len(data["score"]), dtype=bool)
    keep[lost] = False
    return np.flatnonzero(keep)


def sample_part(plan: Plan, rate: float, index: int) -> tuple[np.ndarray, int]:
    """A seeded sample of a part's exact survivors' dedup vectors (the k-means / PCA training set) and
    the number of views each row has (the vector and its zoomed views)."""
    data = read_part(plan.parts[index].path, ("score", "embedding", "copy"))
    rows = _survivors(plan, index, data)
    rng = np.random.default_rng(index)
    picked = rows[rng.random(len(rows)) < rate]
    x, _ = _vectors({k: v[picked] for k, v in data.items() if k != "score"}, plan.cfg.filter_weight)
    return x, data["copy"].shape[1]


def emit_clusters(plan: Plan, clusters: Clusters, index: int):
    """(bucket, (cluster, role, gids, scores, stored int8 vectors, PCA-space vectors)) for a part's exact
    survivors, one record of row-aligned arrays per bucket: role 0 = member (a row's own vector in its
    nearest cluster), 1 = query (its vector in another cluster within the margin, or a zoomed view in its
    clusters). The PCA-space vectors (float16, 64-d: a quarter of a 512-d int8 vector's bytes) are None
    when the clusters have no PCA."""
    part = plan.parts[index]
    data = read_part(part.path, ("score", "embedding", "copy"))
    rows = _survivors(plan, index, data)
    w = plan.cfg.filter_weight
    x, views = _vectors({k: v[rows] for k, v in data.items() if k != "score"}, w)
    scores, gids = data["score"][rows].astype(np.float64), part.offset + rows
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
        order = np.lexsort((gids, role, cluster))  # by cluster, members first, then by global id
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
    """Driver: the union of the cluster pairs -> keep best of direct neighbours -> near losers per part."""
    a, b, sa, sb = [], [], [], []
    for path in sorted((plan.work / "near").glob("pairs-*.npz")):
        with np.load(path) as z:
            a.append(z["a"]), b.append(z["b"]), sa.append(z["sa"]), sb.append(z["sb"])
    if not a or not sum(len(x) for x in a):
        return 0
    a, b, sa, sb = (np.concatenate(v) for v in (a, b, sa, sb))
    linked, inverse = np.unique(np.r_[a, b], return_inverse=True)  # compact ids, in global order
    scores = np.empty(len(linked), np.float64)
    scores[inverse] = np.r_[sa, sb]
    i, j = inverse[:len(a)], inverse[len(a):]
    i, j = dedup.unique_pairs([(i, j)])
    keep = dedup.keep_best_of_neighbours(len(linked), i, j, scores)
    _write_losers(plan, plan.work / "near", "all", linked[~keep])
    return int((~keep).sum())


# -- 3. eval leaks + the keep files --------------------------------------------------------------------


def finish_part(plan: Plan, eval_index: Path | None, out: Path, index: int) -> dict:
    """The part's keep file from the exact and near losers and the eval-leak check; returns its counts."""
    part = plan.parts[index]
    data = read_part(part.path, ("uid", "embedding", "copy") if eval_index is not None else ("uid",))
    n = len(data["uid"])
    reason = np.full(n, "", dtype=object)
    near = _losers(plan.work / "near", index) - part.offset
    reason[near] = "near_dup"
    exact = _losers(plan.work / "exact", index) - part.offset
    reason[exact] = "exact_dup"
    if eval_index is not None and n:
        x, _ = _vectors(data, plan.cfg.filter_weight)
        ev = np.load(eval_index)
        leak = ~dedup.decontaminate(x, ev, plan.cfg.eval_threshold)
        reason[leak & (reason == "")] = "eval_leak"
    keep = reason == ""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{part.stem}.parquet") as tmp:
        pq.write_table(pa.table({"uid": data["uid"], "keep": keep.tolist(),
                                 "reason": [str(r) for r in reason]}), tmp)
    return {"in": n, "out": int(keep.sum()),
            **{r: int((reason == r).sum()) for r in ("exact_dup", "near_dup", "eval_leak")}}


def run_dedup(engine, parts: list[Part], cfg: DedupConfig, work: Path, out: Path,
              eval_index: Path | None) -> dict:
    """The whole dedup step over ``parts`` (see the module doc); ``out`` gets one keep file per part."""
    shutil.rmtree(work, ignore_errors=True)  # a killed run's loser files are not this run's
    work.mkdir(parents=True)
    plan = make_plan(parts, work, cfg)
    n = sum(p.rows for p in parts)
    items = range(len(parts))
    near_tasks: dict = {}
    if cfg.exact:
        buckets = max(1, math.ceil(n / EXACT_ROWS_PER_BUCKET))
        engine.group_reduce(items, partial(emit_sha, plan, buckets), partial(reduce_exact, plan), buckets)
    if cfg.near and n > 1:
        started = time.perf_counter()
        survivors = n - sum(len(_losers(work / "exact", i)) for i in items)
        if cfg.index == "flat" or (cfg.index == "auto" and survivors <= cfg.flat_max):
            # one cluster: every pair compared exactly, by one task that holds every survivor
            clusters = Clusters(np.ones((1, 1), np.float32), None, None, 1)
        else:
            k = n_clusters(survivors)
            rate = min(1.0, (SAMPLE_BASE + dedup.TRAIN_PER_CENTROID * k) / max(1, survivors))
            samples = engine.map(partial(sample_part, plan, rate), items)
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
        done = engine.group_reduce(items, partial(emit_clusters, plan, clusters),
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
    counts = engine.map(partial(finish_part, plan, eval_index, out), items)
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    return {"in": total["in"], "out": total["out"],
            "dropped": {r: total[r] for r in ("exact_dup", "near_dup", "eval_leak")}, **near_tasks}
