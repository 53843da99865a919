"""Step 2 of the dedup step (curation.dedup_parts): near copies, cluster-partitioned (SemDeDup-style).

A sample of the exact survivors (~2 (SAMPLE_BASE + 40 sqrt(3 n)) rows), written to storage by the tasks:
half of it trains a PCA (above ``REDUCE_ABOVE`` rows, or with index "ivf") and ~sqrt(3 n) spherical
k-means centroids (up to ``flat_max`` survivors, index "auto": one cluster, exact, one task holding every
survivor), the other half estimates each cluster task's vectors. Every cluster task is bounded to about
``ROWS_PER_TASK`` vectors (curation.dedup_clusters): groups of near copies large enough to matter become
*cores*, resolved against a representative, a cluster still over it is split by a second-level k-means,
and the clusters are packed into tasks. Up to ``dedup.driver_sample`` sample rows the driver reads the
sample and does all this itself; past it, it reads at most that many rows (a seeded subsample) for the PCA
and a coarse k-means, and engine tasks keyed by coarse cluster train the fine centroids and bound the
cluster tasks (curation.dedup_fine); from ``dedup_clusters.LOOKUP_FROM`` fine clusters a vector is then
looked up among the fine clusters of its nearest coarse ones only (``Clusters.assign``).

Every part task takes out its rows inside a core (of each core's rows, the best-scoring one goes on as a
(core, key, score) record, the others are losers, ``near-core/<first part>.npy``), assigns each other row
to its nearest centroid (where it is a *member*) and sends it as a *query* to every other centroid close to
that one, and each zoomed view (curation.copy_detection) the same way: a copy near a boundary is met from
either side. A cluster task keeps the best row of each of its cores (the others are losers), which stands
in for the group with the core's representative as its vector, and compares its members with each other
and its queries with its members, one matrix product per block of rows: on the stored descriptors at the
threshold (exact) without a PCA; with one, in the PCA space at ``threshold - dedup.CANDIDATE_MARGIN``, each
candidate then checked on the stored descriptors. The pairs (with both scores) go to files, resolved into
losers on the engine (curation.dedup_resolve: components, then the keep rule in each), and every loser
reaches its part's file ``near/<part index>.npy`` through the shuffle (``route_to_parts``). Without a core
(every cluster within the target) the losers are those of the keep rule over every pair at the threshold
that the clusters meet; with one, a group's rows drop as soon as a better copy inside the group is found.
"""

from __future__ import annotations

import itertools
import logging
import time
from functools import partial

import numpy as np

from curation import dedup
from curation.dedup_clusters import Clusters, bound_clusters, n_clusters, train_clusters
from curation.dedup_fine import train_two_level
from curation.dedup_plan import Plan, exact_survivors, load, route_to_parts, save, vectors
from curation.dedup_resolve import resolve_pairs
from curation.parts import Part, quantize, read_part, row_key
from shared import fsio

log = logging.getLogger("openaim.curation")

# Versioned by its step: bump VERSION in openaim/steps/dedup.py when this changes the step's results.

REDUCE_ABOVE = 50_000  # more survivors than this: clusters are compared in a PCA-64 space
# Why these values (measured): benchmarks/RESULTS.md, "Curation: dedup design figures".
ROWS_PER_TASK = 4096  # vectors (members + queries) per cluster task: bounds a task's memory (~4 KB per
# 768-d vector at its peak: its float32 form and one int8 copy)
SAMPLE_BASE = 4096  # rows sampled for the PCA, plus dedup.TRAIN_PER_CENTROID per centroid for k-means
DRIVER_FILL = 0.9  # the driver's subsample is drawn at this share of dedup.driver_sample (its count varies
# by ~sqrt of it): the cap, which the driver never reads past, seldom cuts it


def sample_task(plan: Plan, rate: float, driver_rate: float, folder: str,
                indexed: tuple[int, list[Part]]) -> tuple[int, int]:
    """A seeded sample of the exact survivors of a task's parts (each part seeded by its index), their
    dedup vectors and zoomed views [m, views, D] (view 0 trains the PCA and k-means, every view estimates
    where the rows go), written to ``folder/<task>.npy``: the driver reads the files, no sample travels
    back through the engine. The rows drawn below ``driver_rate`` (a subsample of the sample's: one draw
    per row decides both) also go, view 0 alone [d, D], to ``folder/driver-<task>.npy``: what the driver
    reads when the sample is larger than it should hold (curation.dedup_fine). Returns (m, d)."""
    index, task = indexed
    xs, ds = [], []
    for part in task:
        data = read_part(part.path, ("score", "embedding", "copy"))
        rows = exact_survivors(plan, part, data)
        draw = np.random.default_rng(part.index).random(len(rows))
        picked = rows[draw < rate]
        x, views = vectors({k: v[picked] for k, v in data.items() if k != "score"}, plan.cfg.filter_weight)
        xs.append(np.stack([x, *views], axis=1))
        ds.append(x[draw[draw < rate] < driver_rate])
    sample, driver = np.concatenate(xs), np.concatenate(ds)
    if len(sample):
        save(fsio.join(folder, f"{index:08d}.npy"), sample)
    if len(driver):
        save(fsio.join(folder, f"driver-{index:08d}.npy"), driver)
    return len(sample), len(driver)


def emit_clusters(plan: Plan, clusters: Clusters, task: list[Part]):
    """A task's rows to the cluster tasks (``_emit_part_clusters``); the rows inside a core
    (curation.dedup_clusters) are not sent: of each core's rows here, the best-scoring one goes to the
    core's cluster task as a (core, key, score) record and the others are losers, written to
    ``near-core/<first part>.npy``."""
    core_rows: list = []
    for part in task:
        yield from _emit_part_clusters(plan, clusters, part, core_rows)
    if not core_rows:
        return
    core, gids, scores = _best_of_each_core(core_rows, fsio.join(plan.work, "near-core",
                                                                 f"{task[0].index:08d}.npy"))
    for bucket, sel in _by_bucket(clusters.bucket(clusters.core_cluster[core])):
        yield bucket, (core[sel], gids[sel], scores[sel])


def _best_first(group: np.ndarray, gids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, first): rows ordered by group, then score (highest first, NaN lowest), then key; first marks
    each group's best row (the keep rule's choice among rows that are all copies of each other)."""
    order = np.lexsort((gids, -np.nan_to_num(scores, nan=-np.inf), group))
    g = group[order]
    return order, np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, bool)


def _best_of_each_core(records: list, losers_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(core, gid, score) of each core's best row among ``records`` ([(core, gids, scores)]); the other rows
    are losers, written to ``losers_path``."""
    core, gids, scores = (np.concatenate([r[i] for r in records]) for i in range(3))
    order, first = _best_first(core, gids, scores)
    losers = gids[order[~first]]
    if len(losers):
        save(losers_path, losers)
    best = order[first]
    return core[best], gids[best], scores[best]


def _by_bucket(bucket: np.ndarray):
    """(bucket, row indices) for each bucket present, indices in their order."""
    order = np.argsort(bucket, kind="stable")
    cuts = np.flatnonzero(np.diff(bucket[order])) + 1
    for sel in np.split(order, cuts) if len(order) else []:
        yield int(bucket[sel[0]]), sel


def _emit_part_clusters(plan: Plan, clusters: Clusters, part: Part, core_rows: list):
    """(bucket, (cluster, role, keys, scores, stored int8 vectors, PCA-space vectors)) for a part's exact
    survivors, one record of row-aligned arrays per bucket: role 0 = member (a row's own vector in its
    nearest cluster), 1 = query (its vector in another cluster within the margin, or a zoomed view in its
    clusters). The PCA-space vectors (float16, 64-d: a quarter of a 512-d int8 vector's bytes) are None
    when the clusters have no PCA. Rows inside a core go to ``core_rows`` as (core, keys, scores)
    instead."""
    data = read_part(part.path, ("score", "embedding", "copy"))
    rows = exact_survivors(plan, part, data)
    w = plan.cfg.filter_weight
    x, views = vectors({k: v[rows] for k, v in data.items() if k != "score"}, w)
    scores, gids = data["score"][rows].astype(np.float64), row_key(part.index, rows)
    if clusters.cores is not None:
        core, inside = clusters.core_of(_unit(_stored(data, rows, 0, x, w)))
        core_rows.append((core[inside], gids[inside], scores[inside]))
        rows, x, views = rows[~inside], x[~inside], [v[~inside] for v in views]
        scores, gids = scores[~inside], gids[~inside]
    pca = clusters.pca_components is not None
    sent = []  # per view: (row, cluster, role, int8 vectors, PCA-space float16 vectors or None)
    for v, vecs in enumerate([x, *views]):
        packed = _stored(data, rows, v, vecs, w)
        reduced = clusters.reduce(vecs)
        row, cluster, nearest = clusters.assign(reduced)
        sent.append((row, cluster, np.where(nearest & (v == 0), 0, 1).astype(np.int8), packed[row],
                     reduced[row].astype(np.float16) if pca else None))
    row, cluster, role, packed = (np.concatenate([s[i] for s in sent]) for i in range(4))
    reduced = np.concatenate([s[4] for s in sent]) if pca else None
    for bucket, sel in _by_bucket(clusters.bucket(cluster)):
        r = row[sel]
        yield bucket, (cluster[sel], role[sel], gids[r], scores[r], packed[sel],
                       None if reduced is None else reduced[sel])


def _stored(data: dict, rows: np.ndarray, view: int, vecs: np.ndarray, w: float) -> np.ndarray:
    """View ``view`` of ``rows`` in the stored int8 form the pairs are checked on: copy descriptors alone
    (w = 0) are the stored values themselves, else the quantized unit vectors ``vecs``."""
    return data["copy"][rows, view].astype(np.int8) if w <= 0 else quantize(vecs)


def _unit(packed: np.ndarray) -> np.ndarray:
    """Stored int8 vectors as unit float32 rows, normalised in place (no [rows, D] temporary)."""
    unit = packed.astype(np.float32)
    unit /= np.sqrt(np.maximum(np.einsum("ij,ij->i", unit, unit), 1e-24))[:, None]
    return unit


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


def reduce_clusters(plan: Plan, clusters: Clusters, bucket: int, records) -> tuple[int, int, int]:
    """Every cluster of this bucket, one at a time; its pairs to ``near/pairs-<bucket>.npz``. A core whose
    cluster is here: its best-scoring row (over the (core, key, score) records) stays, standing in for the
    group in its cluster with the core's representative as its vector; the others are losers
    (``near-core/bucket-<bucket>.npy``). Returns (vectors received, pairs found, core records)."""
    records = list(records)
    core_records = [r for r in records if len(r) == 3]
    records = [r for r in records if len(r) == 6]
    if core_records:
        records.append(_stand_ins(plan, clusters, bucket, core_records))
    received = sum(len(r[0]) for r in records)
    found = []
    if records:
        cluster, role, gids, scores, packed = (np.concatenate([r[i] for r in records]) for i in range(5))
        reduced = np.concatenate([r[5] for r in records]) if records[0][5] is not None else None
        del records  # the task's peak is ~4 KB per 768-d vector: its float32 form and one int8 copy
        order = np.lexsort((gids, role, cluster))  # by cluster, members first, then by key
        cluster, role, gids, scores = cluster[order], role[order], gids[order], scores[order]
        unit = _unit(packed[order])
        del packed
        if reduced is not None:
            reduced = reduced[order].astype(np.float32)
        starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1], True])
        for c0, c1 in itertools.pairwise(starts):
            members = int((role[c0:c1] == 0).sum())
            if members:
                found += _cluster_pairs(unit[c0:c1], None if reduced is None else reduced[c0:c1],
                                        gids[c0:c1], scores[c0:c1], members, plan.cfg.near_threshold)
    cols = [np.concatenate([p[k] for p in found]) if found else np.zeros(0) for k in range(4)]
    save(fsio.join(plan.work, "near", f"pairs-{bucket:06d}.npz"), a=cols[0].astype(np.int64),
         b=cols[1].astype(np.int64), sa=cols[2], sb=cols[3])
    return received, len(cols[0]), sum(len(r[0]) for r in core_records)


def _stand_ins(plan: Plan, clusters: Clusters, bucket: int, core_records: list) -> tuple:
    """The member record of this bucket's cores' stand-ins (each core's best row, its representative as
    its vector); the other rows of the records are losers, written to ``near-core/bucket-<bucket>.npy``."""
    c, gids, scores = _best_of_each_core(core_records, fsio.join(plan.work, "near-core",
                                                                 f"bucket-{bucket:06d}.npy"))
    reps = clusters.cores[c]
    reduced = clusters.reduce(reps).astype(np.float16) if clusters.pca_components is not None else None
    return (clusters.core_cluster[c], np.zeros(len(c), np.int8), gids, scores, quantize(reps), reduced)


def _train(engine, plan: Plan, tasks: list[list[Part]], survivors: int) -> tuple[Clusters, dict]:
    """(clusters, figures): the clusters (curation.dedup_clusters) from a sample the tasks write to
    storage; every cluster task estimated at about ROWS_PER_TASK vectors (a cluster over it bounded: its
    near-copy groups resolved against a representative, the rest split by a second-level k-means). A
    sample of up to ``dedup.driver_sample`` rows is read whole by the driver; a larger one trains in two
    levels (curation.dedup_fine), the driver reading at most that many rows of it. Figures: the sample's
    rows, the rows the driver read, the coarse clusters (1: one level)."""
    cfg = plan.cfg
    if cfg.index == "flat" or (cfg.index == "auto" and survivors <= cfg.flat_max):
        # one cluster: every pair compared exactly, by one task that holds every survivor
        return Clusters(np.ones((1, 1), np.float32), None, None, 1), {}
    k = n_clusters(survivors)
    # twice the training rows: every other row trains, the rest estimate the tasks' loads (rows the k-means
    # was fit to sit closer to their centroids, and are sent to fewer clusters, than the pool's rows)
    rate = min(1.0, 2 * (SAMPLE_BASE + dedup.TRAIN_PER_CENTROID * k) / max(1, survivors))
    two_level = rate * survivors > cfg.driver_sample
    driver_rate = DRIVER_FILL * cfg.driver_sample / survivors if two_level else 0.0
    folder = fsio.join(plan.work, "sample")
    written = engine.map(partial(sample_task, plan, rate, driver_rate, folder), list(enumerate(tasks)))
    rows = np.array([w[0] for w in written], np.int64)
    reduce = cfg.index == "ivf" or survivors > REDUCE_ABOVE
    if two_level:
        clusters, figures = train_two_level(engine, folder, rows, [w[1] for w in written], survivors, reduce,
                                            cfg.driver_sample, ROWS_PER_TASK, cfg.near_threshold)
        fsio.remove(folder)
        return clusters, {"sample": int(rows.sum())} | figures
    sample = np.concatenate([load(fsio.join(folder, f"{i:08d}.npy")) for i, m in enumerate(rows) if m])
    fsio.remove(folder)
    clusters = train_clusters(np.ascontiguousarray(sample[0::2, 0]), survivors, reduce, 1)
    held_out = sample[1::2]
    clusters = bound_clusters(clusters, held_out, survivors / max(1, len(held_out)), ROWS_PER_TASK,
                              cfg.near_threshold)
    return clusters, {"sample": len(sample), "driver_rows": len(sample), "coarse": 1}


def near_copies(engine, plan: Plan, tasks: list[list[Part]], survivors: int) -> dict:
    """Step 2 (the module doc): the near losers to ``near/<part index>.npy``; returns the cluster tasks'
    figures (the largest task in vectors received, its target, pairs found)."""
    started = time.perf_counter()
    clusters, sampled = _train(engine, plan, tasks, survivors)
    trained = time.perf_counter()
    done = engine.group_reduce(tasks, partial(emit_clusters, plan, clusters),
                               partial(reduce_clusters, plan, clusters), clusters.buckets)
    searched = time.perf_counter()
    pairs = sum(d[1] for d in done)
    pair_files = [fsio.join(plan.work, "near", f"pairs-{b:06d}.npz") for b, d in enumerate(done) if d[1]]
    losers, dropped, rounds = resolve_pairs(engine, pair_files, pairs, fsio.join(plan.work, "resolve"))
    # one file per task or bucket at most
    core_losers = [path for path, _ in fsio.list_files(fsio.join(plan.work, "near-core"))]
    route_to_parts(engine, plan, losers + core_losers, fsio.join(plan.work, "near"))
    figures = {"largest": max(d[0] for d in done), "target": ROWS_PER_TASK, "pairs": pairs} | sampled
    log.info("dedup near: %d survivors, sample %d rows (the driver read %d, %d coarse clusters), %d clusters "
             "(%d cores, %d core records) in %d tasks, %.2f vectors sent per row, largest task %d vectors "
             "(target %d), %d pairs, %d label rounds, %d dropped by the keep rule; %.1f s sample + train, "
             "%.1f s assign + compare, %.1f s resolve", survivors, sampled.get("sample", 0),
             sampled.get("driver_rows", 0), sampled.get("coarse", 1), len(clusters.centroids),
             0 if clusters.cores is None else len(clusters.cores),
             sum(d[2] for d in done), clusters.buckets, sum(d[0] for d in done) / max(1, survivors),
             figures["largest"], ROWS_PER_TASK, pairs, rounds, dropped, trained - started,
             searched - trained, time.perf_counter() - searched)
    return figures
