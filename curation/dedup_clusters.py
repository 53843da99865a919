"""The near-copy clusters of the dedup step (curation.dedup_parts): trained on the driver from a sample,
shipped to every task.

A PCA (optional) and ~sqrt(``CLUSTERS_PER_ROW`` n) spherical k-means centroids. A vector is a *member* of
its nearest centroid's cluster and is sent as a *query* to every other centroid within
``BOUNDARY_MARGIN`` cosine of that one (at most ``MAX_PROBES`` in all), so a copy near a boundary is met
from either side. Clusters are packed into tasks of about equal size (``pack_clusters``). Why these
values (measured): benchmarks/RESULTS.md, "Curation: dedup design figures".
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from curation import dedup

# sqrt(CLUSTERS_PER_ROW * n) clusters balance the two products: assigning rows to centroids (n x k) and
# comparing each vector sent to a cluster with its members (n x probes x n / k).
CLUSTERS_PER_ROW = 3
KMEANS_ITER = 5
MAX_PROBES = 8  # most clusters a vector is sent to
BOUNDARY_MARGIN = 0.1  # a vector is sent to every centroid this close (cosine) to its nearest one


@dataclass(frozen=True)
class Clusters:
    """The trained clustering, shipped to every task: optional PCA (mean, components) and centroids."""

    centroids: np.ndarray  # [k, r] unit
    pca_mean: np.ndarray | None
    pca_components: np.ndarray | None  # [r, D]
    buckets: int
    bucket_of: np.ndarray | None = None  # [k] the task (bucket) of each cluster; None: cluster % buckets

    def reduce(self, v: np.ndarray) -> np.ndarray:
        if self.pca_components is None:
            return v
        return dedup.normalised((v - self.pca_mean) @ self.pca_components.T)

    def assign(self, vr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, cluster, nearest) for every (vector, cluster) it is sent to: its nearest cluster
        (nearest = True), then every other one within ``BOUNDARY_MARGIN`` cosine of it, at most
        ``MAX_PROBES`` in all."""
        n, k = len(vr), len(self.centroids)
        if k == 1:
            return np.arange(n), np.zeros(n, np.int64), np.ones(n, bool)
        faiss = dedup.import_faiss()
        # faiss's top-k (blocked product + heap) rather than numpy: a [rows, k] similarity matrix with
        # r = 64 is memory-bound, and finding the few clusters within the margin in it cost more than the
        # product. One OpenMP thread: a task has one core (curation.engine), and faiss's runtime may have
        # been loaded after the engine set its limits.
        with threadpool_limits(1, user_api="openmp"):
            sims, ids = faiss.knn(np.ascontiguousarray(vr, np.float32), self.centroids, min(MAX_PROBES, k),
                                  metric=faiss.METRIC_INNER_PRODUCT)  # [n, probes], best first
        rows, rank = np.nonzero(sims >= sims[:, :1] - BOUNDARY_MARGIN)
        return rows, ids[rows, rank].astype(np.int64), rank == 0


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


def train_clusters(sample: np.ndarray, n: int, reduce: bool, buckets: int, seed: int = 0) -> Clusters:
    """PCA (when ``reduce``) and k-means on the sample, ~sqrt(CLUSTERS_PER_ROW * n) clusters."""
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
    k = int(max(1, min(n_clusters(n), len(x) // dedup.TRAIN_PER_CENTROID)))
    if k == 1:
        centroids = dedup.normalised(x.mean(axis=0, keepdims=True) if len(x) else np.ones((1, x.shape[1])))
    else:
        kmeans = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITER, seed=seed, spherical=True,
                              min_points_per_centroid=1)
        kmeans.train(np.ascontiguousarray(x, dtype=np.float32))
        centroids = kmeans.centroids
    return Clusters(np.ascontiguousarray(centroids, np.float32), mean, comps, buckets)
