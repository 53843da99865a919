"""The near-copy clusters of the dedup step (curation.dedup_parts): trained from a sample (on the driver, or
in two levels with engine tasks: curation.dedup_fine), shipped to every task.

A PCA (optional) and ~sqrt(``CLUSTERS_PER_ROW`` n) spherical k-means centroids. A vector is a *member* of
its nearest centroid's cluster and is sent as a *query* to every other centroid within
``BOUNDARY_MARGIN`` cosine of that one (at most ``MAX_PROBES`` in all), so a copy near a boundary is met
from either side. From ``LOOKUP_FROM`` clusters trained in two levels (curation.dedup_fine) the coarse
centroids are kept: a vector is then looked up among the fine centroids of its ``COARSE_PROBES`` nearest
coarse clusters only (``Clusters.assign``), not among all of them. Clusters are packed into tasks of about
equal size (``pack_clusters``). Why these values (measured): benchmarks/RESULTS.md, "Curation: dedup design
figures" and "Curation: two-level cluster lookup".

Every cluster task is bounded to about a task's target (``bound_clusters``), from the sample:
- a *core*: a group of near copies of one image large enough to matter (an estimated 1 / ``CORE_SHARE``
  of a task or more, seen in ``CORE_MIN_ROWS`` sample rows or more; k-means cannot split it: its vectors
  are all alike, and the pairs inside it grow as its size squared). Its
  representative r is the mean of the group; every vector within ``core_similarity(threshold)`` of r is a
  copy of every other (the angle between two of them is at most twice that radius, cosine >= threshold),
  so the group is resolved against r alone: the best-scoring vector within the radius stays in the search,
  standing in for the group, the others are losers (curation.dedup_parts), with no pair among them;
- a cluster still estimated over the target is split by a second-level k-means inside it (its centroids
  replace the cluster's), up to ``SPLIT_ROUNDS`` times.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace

import numpy as np
from threadpoolctl import threadpool_limits

from curation import dedup

# sqrt(CLUSTERS_PER_ROW * n) clusters balance the two products: assigning rows to centroids (n x k) and
# comparing each vector sent to a cluster with its members (n x probes x n / k).
CLUSTERS_PER_ROW = 3
KMEANS_ITER = 5
MAX_PROBES = 8  # most clusters a vector is sent to
BOUNDARY_MARGIN = 0.1  # a vector is sent to every centroid this close (cosine) to its nearest one
COARSE_PROBES = 6  # two levels: coarse clusters whose fine centroids a vector is looked up among ...
LOOKUP_FROM = 8192  # ... when there are at least this many fine centroids (below, searching all of them is
# exact and costs at most ~2x more)
SPLIT_ROUNDS = 3  # second-level k-means passes over the clusters still above the target
CORE_SAMPLE = 4096  # most sample rows of one cluster searched for cores on the driver ([rows, rows] products)
CORES_PER_CLUSTER = 4  # most near-copy groups taken out of one cluster
CORE_SHARE = 8  # a group is a core when it is estimated to hold at least 1 / CORE_SHARE of a task's target
CORE_MIN_ROWS = 2  # ... and seen in at least this many sample rows (past ~1e9 rows one held-out row stands
# for more than target / CORE_SHARE rows: a lone row is no evidence of a group)


def core_similarity(threshold: float) -> float:
    """The radius (cosine to a core's representative) within which any two vectors are copies: the angle
    between two of them is at most twice the radius's, cos(2a) = 2 cos(a)^2 - 1 >= threshold; the small
    excess covers float32 rounding of the tasks' products."""
    return math.sqrt((1 + threshold) / 2) + 1e-4


@dataclass(frozen=True)
class Clusters:
    """The trained clustering, shipped to every task: optional PCA (mean, components) and centroids."""

    centroids: np.ndarray  # [k, r] unit
    pca_mean: np.ndarray | None
    pca_components: np.ndarray | None  # [r, D]
    buckets: int
    bucket_of: np.ndarray | None = None  # [k] the task (bucket) of each cluster; None: cluster % buckets
    cores: np.ndarray | None = None  # [c, D] unit representatives of near-copy groups (stored space)
    core_cluster: np.ndarray | None = None  # [c] the cluster whose task resolves each core's group
    core_min: float = 1.0  # core_similarity(threshold)
    coarse: np.ndarray | None = None  # [g, r] unit coarse centroids (two_level; None: all searched)
    coarse_starts: np.ndarray | None = None  # [g + 1] coarse cluster j's fine centroids are the rows
    # coarse_starts[j]:coarse_starts[j + 1] of ``centroids`` (none empty)
    coarse_probes: int = 0  # coarse clusters a vector's fine centroids are looked up in (COARSE_PROBES)

    def bucket(self, cluster: np.ndarray) -> np.ndarray:
        return cluster % self.buckets if self.bucket_of is None else self.bucket_of[cluster]

    def core_of(self, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(core, inside) for unit vectors in the stored space: the nearest core representative and
        whether the vector is within its radius (then a copy of every other vector inside it)."""
        if self.cores is None or not len(unit):
            return np.zeros(len(unit), np.int64), np.zeros(len(unit), bool)
        sims = unit @ self.cores.T
        core = sims.argmax(axis=1)
        return core, sims[np.arange(len(unit)), core] >= self.core_min

    def reduce(self, v: np.ndarray) -> np.ndarray:
        if self.pca_components is None:
            return v
        return dedup.normalised((v - self.pca_mean) @ self.pca_components.T)

    def assign(self, vr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, cluster, nearest) for every (vector, cluster) it is sent to, by vector, nearest first: its
        nearest cluster (nearest = True), then every other one within ``BOUNDARY_MARGIN`` cosine of it, at
        most ``MAX_PROBES`` in all. With coarse centroids the clusters are looked for among the fine
        centroids of the vector's ``coarse_probes`` nearest coarse clusters only (``_assign_two_level``)."""
        n, k = len(vr), len(self.centroids)
        if k == 1:
            return np.arange(n), np.zeros(n, np.int64), np.ones(n, bool)
        faiss = dedup.import_faiss()
        vr = np.ascontiguousarray(vr, np.float32)
        # faiss's top-k (blocked product + heap) rather than numpy: a [rows, k] similarity matrix with
        # r = 64 is memory-bound, and finding the few clusters within the margin in it cost more than the
        # product. One OpenMP thread: a task has one core (curation.engine), and faiss's runtime may have
        # been loaded after the engine set its limits.
        with threadpool_limits(1, user_api="openmp"):
            if self.coarse is not None:
                return self._assign_two_level(vr)
            sims, ids = faiss.knn(vr, self.centroids, min(MAX_PROBES, k),
                                  metric=faiss.METRIC_INNER_PRODUCT)  # [n, probes], best first
        rows, rank = np.nonzero(sims >= sims[:, :1] - BOUNDARY_MARGIN)
        return rows, ids[rows, rank].astype(np.int64), rank == 0

    def _assign_two_level(self, vr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``assign`` among the fine centroids of each vector's ``coarse_probes`` nearest coarse clusters:
        ~(g + probes k / g) products per vector instead of k (benchmarks/RESULTS.md, "Curation: two-level
        cluster lookup": how often it differs from the search over every centroid)."""
        if not len(vr):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
        faiss = dedup.import_faiss()
        n, probes = len(vr), min(self.coarse_probes, len(self.coarse))
        _, near = faiss.knn(vr, self.coarse, probes, metric=faiss.METRIC_INNER_PRODUCT)  # [n, probes]
        # each (vector, probe)'s top MAX_PROBES fine centroids in that coarse cluster; -inf: none there
        sims = np.full((n, probes, MAX_PROBES), -np.inf, np.float32)
        ids = np.zeros((n, probes, MAX_PROBES), np.int64)
        flat = near.ravel()
        order = np.argsort(flat, kind="stable")
        cuts = np.searchsorted(flat[order], np.arange(len(self.coarse) + 1))
        for j in np.flatnonzero(np.diff(cuts)).tolist():
            vec, probe = np.divmod(order[cuts[j]:cuts[j + 1]], probes)  # the vectors that probe j
            lo, hi = int(self.coarse_starts[j]), int(self.coarse_starts[j + 1])
            top = min(MAX_PROBES, hi - lo)
            sims[vec, probe, :top], ids[vec, probe, :top] = faiss.knn(
                vr[vec], self.centroids[lo:hi], top, metric=faiss.METRIC_INNER_PRODUCT)
            ids[vec, probe, :top] += lo
        sims, ids = sims.reshape(n, -1), ids.reshape(n, -1)
        best = np.argsort(-sims, axis=1, kind="stable")[:, :MAX_PROBES]  # [n, MAX_PROBES], best first
        sims, ids = np.take_along_axis(sims, best, axis=1), np.take_along_axis(ids, best, axis=1)
        rows, rank = np.nonzero(sims >= sims[:, :1] - BOUNDARY_MARGIN)
        return rows, ids[rows, rank], rank == 0


def two_level(coarse: np.ndarray, fine: list[np.ndarray], pca_mean: np.ndarray | None,
              pca_components: np.ndarray | None) -> Clusters:
    """Clusters whose centroids are the fine centroids ``fine[j]`` ([k_j, r]) of each coarse centroid
    ``coarse[j]``, in that order. From ``LOOKUP_FROM`` fine centroids the coarse ones are kept for the
    lookup (``Clusters.assign``), less those without fine centroids (a vector probing one would find
    none there)."""
    have = [j for j, f in enumerate(fine) if len(f)]
    centroids = np.ascontiguousarray(np.concatenate([fine[j] for j in have]), np.float32)
    if len(centroids) < LOOKUP_FROM:
        return Clusters(centroids, pca_mean, pca_components, 1)
    starts = np.r_[0, np.cumsum([len(fine[j]) for j in have])].astype(np.int64)
    return Clusters(centroids, pca_mean, pca_components, 1,
                    coarse=np.ascontiguousarray(coarse[have], np.float32), coarse_starts=starts,
                    coarse_probes=COARSE_PROBES)


def pack_clusters(load: np.ndarray, capacity: float) -> tuple[np.ndarray, int]:
    """(bucket of each cluster, buckets): ceil(total / capacity) buckets, clusters placed largest first on
    the least loaded bucket, so tasks hold about the same number of vectors (``cluster % buckets`` put
    far more than the target in some tasks: benchmarks/RESULTS.md)."""
    buckets = int(max(1, min(len(load), math.ceil(load.sum() / capacity))))
    heap = [(0.0, b) for b in range(buckets)]
    bucket_of = np.zeros(len(load), np.int64)
    for c in np.argsort(-load, kind="stable").tolist():
        total, b = heapq.heappop(heap)
        bucket_of[c] = b
        heapq.heappush(heap, (total + float(load[c]), b))
    return bucket_of, buckets


def n_clusters(n: int) -> int:
    return math.ceil(math.sqrt(CLUSTERS_PER_ROW * n))


def spherical_kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[k, d] unit centroids of the unit rows ``x`` (k = 1: their normalised mean)."""
    if k == 1:
        return dedup.normalised(x.mean(axis=0, keepdims=True) if len(x) else np.ones((1, x.shape[1])))
    kmeans = dedup.import_faiss().Kmeans(x.shape[1], k, niter=KMEANS_ITER, seed=seed, spherical=True,
                                         min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
    return kmeans.centroids


def train_clusters(sample: np.ndarray, n: int, reduce: bool, buckets: int, seed: int = 0,
                   k: int | None = None) -> Clusters:
    """PCA (when ``reduce``) and k-means on the sample, ~sqrt(CLUSTERS_PER_ROW * n) clusters (``k`` when
    given), at most one per dedup.TRAIN_PER_CENTROID sample rows."""
    dedup.set_faiss_threads()
    faiss = dedup.import_faiss()

    mean = comps = None
    x = sample
    if reduce and sample.shape[1] > dedup.PCA_DIM:
        pca = faiss.PCAMatrix(sample.shape[1], dedup.PCA_DIM)
        # One BLAS thread: the eigendecomposition is many short parallel sections, each of which waits
        # for a descheduled thread on a loaded machine.
        with threadpool_limits(1, user_api="blas"):
            pca.train(np.ascontiguousarray(sample, dtype=np.float32))
        mean = faiss.vector_to_array(pca.mean).astype(np.float32)
        comps = faiss.vector_to_array(pca.A).reshape(dedup.PCA_DIM, sample.shape[1]).astype(np.float32)
        x = dedup.normalised((sample - mean) @ comps.T)
    k = int(max(1, min(n_clusters(n) if k is None else k, len(x) // dedup.TRAIN_PER_CENTROID)))
    centroids = spherical_kmeans(x, k, seed)
    return Clusters(np.ascontiguousarray(centroids, np.float32), mean, comps, buckets)


def _estimated_load(clusters: Clusters, sample: np.ndarray, per_row: float):
    """(vectors each cluster's task is estimated to receive, each sample row's nearest cluster, (sample row,
    cluster) for every cluster each row's own vector is sent to): where the sample's vectors ([m, views,
    D]: each row and its zoomed views) are sent, each standing for ``per_row`` vectors."""
    m, views = sample.shape[:2]
    if not m:
        return np.zeros(len(clusters.centroids)), np.zeros(0, np.int64), (np.zeros(0, np.int64),) * 2
    row, sent, nearest = clusters.assign(clusters.reduce(sample.reshape(m * views, -1)))
    own = row % views == 0
    member_of = np.zeros(m, np.int64)
    member_of[row[nearest & own] // views] = sent[nearest & own]
    load = np.bincount(sent, minlength=len(clusters.centroids)) * per_row
    return load, member_of, (row[own] // views, sent[own])


def _worth_a_core(rows: int, per_row: float, capacity: float) -> bool:
    """Whether ``rows`` sample rows of one group, each standing for ``per_row`` vectors, make a core."""
    return rows >= CORE_MIN_ROWS and rows * per_row >= capacity / CORE_SHARE


def find_cores(sample: np.ndarray, sends: tuple[np.ndarray, np.ndarray], candidates: np.ndarray,
               per_row: float, capacity: float, core_min: float) -> list[np.ndarray]:
    """Representatives of the near-copy groups met in the clusters ``candidates``: in each, among (at most
    CORE_SAMPLE of) the sample rows sent there (members and queries: k-means cuts a large group among many
    clusters whose centroids are close, and each of its rows is sent to several of them) and not already
    inside a core, the row with the most rows within ``core_min`` of it, the mean of those, while the
    rows there inside that mean's radius (CORE_MIN_ROWS or more) stand for capacity / CORE_SHARE vectors or
    more (a lower bound of the group: its other rows are elsewhere)."""
    cores: list[np.ndarray] = []
    taken = np.zeros(len(sample), bool)
    row, cluster = sends
    order = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[order], np.arange(candidates.max(initial=0) + 2))
    for c in candidates.tolist():
        rows = row[order[starts[c]:starts[c + 1]]]
        for _ in range(CORES_PER_CLUSTER):
            s = sample[rows[~taken[rows]][:CORE_SAMPLE]]
            if not len(s):
                break
            close = s @ s.T >= core_min
            counts = close.sum(axis=1)
            # most clusters: no row has many copies
            if not _worth_a_core(int(counts.max()), per_row, capacity):
                break
            rep = dedup.normalised(s[close[int(counts.argmax())]].mean(axis=0, keepdims=True))[0]
            if not _worth_a_core(int((s @ rep >= core_min).sum()), per_row, capacity):
                break
            cores.append(rep)
            taken |= sample @ rep >= core_min  # the group's rows in every cluster
    return cores


def _split(clusters: Clusters, reduced: np.ndarray, member_of: np.ndarray, load: np.ndarray,
           capacity: float, seed: int) -> Clusters:
    """Each cluster over ``capacity`` replaced by a k-means of its members' sample rows into about
    2 load / capacity clusters (fewer when it has few sample rows)."""
    keep, added = np.ones(len(load), bool), []
    for c in np.flatnonzero(load > capacity).tolist():
        rows = reduced[member_of == c]
        k = min(math.ceil(2 * load[c] / capacity), len(rows) // 2)
        if k < 2:
            continue
        keep[c] = False
        added.append(spherical_kmeans(rows, k, seed))
    if not added:
        return clusters
    centroids = np.concatenate([clusters.centroids[keep], *added])
    return replace(clusters, centroids=np.ascontiguousarray(centroids, np.float32))


def bound_clusters(clusters: Clusters, sample: np.ndarray, per_row: float, capacity: float,
                   threshold: float, seed: int = 0) -> Clusters:
    """The clusters with every task estimated at most ~``capacity`` vectors where the data allows (module
    doc): cores taken out of the clusters over it, those still over it split, then packed into tasks.
    ``sample``: [m, views, D] the sample's unit vectors (each row's views); ``per_row``: the pool's rows
    each sample row stands for."""
    dedup.set_faiss_threads()
    core_min = core_similarity(threshold)
    load, member_of, sends = _estimated_load(clusters, sample, per_row)
    # a group of near copies is searched for in every cluster that receives enough rows to hold one worth
    # a core (k-means may have cut a group among many clusters, none of them over the target)
    candidates = np.flatnonzero(load >= capacity / CORE_SHARE)
    cores = find_cores(sample[:, 0], sends, candidates, per_row, capacity, core_min)
    if cores:
        clusters = replace(clusters, cores=np.ascontiguousarray(cores, np.float32), core_min=core_min)
        _, inside = clusters.core_of(sample[:, 0])
        sample = sample[~inside]
        load, member_of, _ = _estimated_load(clusters, sample, per_row)
    for r in range(SPLIT_ROUNDS):
        if not len(sample) or load.max() <= capacity:
            break
        split = _split(clusters, clusters.reduce(sample[:, 0]), member_of, load, capacity, seed + r)
        if split is clusters:
            break
        clusters = split
        load, member_of, _ = _estimated_load(clusters, sample, per_row)
    return place_and_pack(clusters, load, capacity)


def place_and_pack(clusters: Clusters, load: np.ndarray, capacity: float) -> Clusters:
    """Each core's group resolved in its representative's nearest cluster (one stand-in vector added to
    its load), then the clusters packed into tasks of about ``capacity`` vectors."""
    if clusters.cores is not None:
        _, nearest, _ = _estimated_load(clusters, clusters.cores[:, None], 0)
        clusters = replace(clusters, core_cluster=nearest)
        load = load + np.bincount(clusters.core_cluster, minlength=len(load))  # one stand-in per core
    bucket_of, buckets = pack_clusters(load, capacity)
    return replace(clusters, buckets=buckets, bucket_of=bucket_of)
