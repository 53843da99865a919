"""Deduplication: identical bytes, near-duplicate images, and evaluation-set leaks.

All three return a boolean keep mask aligned with their input rows and are deterministic: within a
group of copies the highest-scoring member stays (ties: the lowest row index).

Near duplicates (`near_duplicates`) are pairs whose normalised image embeddings have cosine similarity
>= threshold, where extra query views (e.g. zoomed crops, see curation.copy_detection) may stand in for
a row. Pairs are *not* joined transitively: a chain of look-alikes (A~B, B~C) would otherwise merge
whole families of distinct images (on the demo web, connected components dropped 1501 of 1984 images).
Instead the rows are taken in score order and each kept row drops its direct neighbours, so a row goes
only when a better-scoring copy *of it* stays.

Index choice, measured by benchmarks/curation_bench.py on 2 shared cores (figures in benchmarks/RESULTS.md):
- up to `flat_max` rows: an exact flat inner-product index, range search at the threshold.
- past it ("ivf"): a flat search is O(n^2 d) (about 2 hours for 10^6 x 512 here). We (1) learn a PCA to
  64 dimensions on a 50k sample (vectors re-normalised), which cuts every product 8x while copies stay
  copies; (2) cluster a sample of 40 rows per list with faiss k-means (spherical, 10 iterations) into
  sqrt(nprobe n) lists, which balances the two big products below; (3) assign every row to its
  nprobe = 4 nearest lists with one faiss search (it lives in the first); (4) scan each list once for
  all the rows that probe it, as one matrix product [queries of the list] x [members of the list], and
  keep pairs at a looser radius (threshold - 0.05) in the reduced space, because projection noise can
  push a true pair's cosine down; (5) verify each candidate pair exactly on the full embeddings.
  Step (4) is the change that pays: faiss's IVF range search computes one inner product at a time per
  query, whereas in a self-join every list's queries are known up front, so one BLAS product per list
  does the same work ~6x faster (10^6 rows, nprobe 2, load ~7: 40 s for the faiss scan, 7 s for ours).
  On the benchmark's 10^6 x 512 clustered vectors with 10^4 planted copies `near_duplicates` takes
  37.6 s at load 3.9 on 2 cores (40.2 s at load 4.6; planted-pair recall 1.0), against 107.5 s (92.8 s)
  for the previous PCA-128 + IndexIVFFlat (2 sqrt(n) lists, nprobe 4) range search in the same runs.
  The PCA is trained with one BLAS thread: faiss's OpenMP threads otherwise spin-wait through the
  eigendecomposition on a loaded machine (10.6 s instead of 0.2 s at load 4). nprobe 4 rather than 2
  (ivf_pairs alone at 10^6, one run, load ~7: 28.9 s vs 21.8 s, recall 1.0 vs 0.9997) because
  unclustered data is the hard case for any IVF: on 20k isotropic random 512-d vectors nprobe 2 found
  0.93-0.95 of the copies, 3 found 0.98, 4 found 0.99. The margin 0.05 found as many planted pairs as
  0.08 with 9x fewer candidates to verify.
  HNSW was rejected: building a graph over 10^6 x 512 vectors alone takes several minutes on 2 cores.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.sparse import coo_matrix
from threadpoolctl import threadpool_limits

PCA_DIM = 64
PCA_SAMPLE = 50_000
IVF_TRAIN_PER_LIST = 40  # faiss k-means asks for >= 39 training points per centroid
IVF_KMEANS_ITER = 10
IVF_NPROBE = 4
CANDIDATE_MARGIN = 0.05
SCAN_BLOCK = 1 << 22  # similarities per matrix product in the list scan (16 MiB of float32)
SEARCH_CHUNK = 65_536  # queries per range search: bounds the memory of the result lists


def _normalised(emb: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(emb, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _keep_best_per_group(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """keep[i] = row i is the best-scoring row of its group (ties -> lowest index)."""
    n = len(labels)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((np.arange(n), -scores, labels))  # by group, then score desc, then index
    first = np.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keep[order[first]] = True
    return keep


def keep_best_of_neighbours(n: int, i: np.ndarray, j: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Keep mask over n rows with copy edges (i, j): in score order (ties: lowest index) each row that no
    kept row has dropped is kept and drops its neighbours. Every dropped row has a kept copy that scores
    at least as high; no two kept rows are copies of each other."""
    keep = np.ones(n, dtype=bool)
    if len(i) == 0:
        return keep
    graph = coo_matrix((np.ones(2 * len(i), dtype=np.int8), (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    indptr, indices = graph.indptr, graph.indices
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    linked = np.flatnonzero(np.diff(indptr) > 0)  # rows without an edge are kept without a look
    order = linked[np.lexsort((linked, -scores[linked]))]
    for r in order.tolist():  # python loop over linked rows only: ~1 s per 10^6 at real duplicate rates
        if keep[r]:
            keep[indices[indptr[r]:indptr[r + 1]]] = False
    return keep


def exact_duplicates(sha256: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Keep the highest-scoring member of each group of identical image bytes (same sha256).

    Rows without a digest (None or "") are never grouped.
    """
    # NaN: pandas' missing value
    digests = ["" if d is None or (isinstance(d, float) and np.isnan(d)) else str(d) for d in sha256]
    n = len(digests)
    if len(scores) != n:
        raise ValueError(f"{n} digests but {len(scores)} scores")
    _, labels = np.unique(np.asarray(digests, dtype=object).astype(str), return_inverse=True)
    labels = labels.astype(np.int64)
    missing = np.array([d == "" for d in digests], dtype=bool)
    labels[missing] = labels.max(initial=0) + 1 + np.arange(missing.sum())  # each its own group
    return _keep_best_per_group(labels, np.asarray(scores))


def import_faiss():
    """faiss, imported with passive OpenMP threads. faiss bundles its own OpenMP runtime, which reads
    OMP_WAIT_POLICY once, at import. Its default (spinning threads) turns into seconds of spin-waiting
    when other jobs hold the cores (measured: PCA training 10.6 s -> 0.2 s at load 4 with PASSIVE). Set
    before the first import unless the user chose a policy; torch's separate runtime is not affected."""
    if "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


def _set_threads() -> None:
    """faiss (imported by ``import_faiss``) on every core."""
    import_faiss().omp_set_num_threads(max(1, os.cpu_count() or 1))


def _range_pairs(index, queries: np.ndarray, radius: float,
                 upper_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index row) pairs with inner product >= radius and query row != index row, in chunks;
    upper_only keeps query row < index row (the queries are the indexed rows: each pair is found twice)."""
    out_i, out_j = [], []
    for start in range(0, len(queries), SEARCH_CHUNK):
        lims, _, ids = index.range_search(queries[start:start + SEARCH_CHUNK], radius)
        lims = lims.astype(np.int64)  # faiss returns uint64 offsets; np.repeat wants signed counts
        rows = np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims))
        wanted = ids > rows if upper_only else ids != rows
        out_i.append(rows[wanted])
        out_j.append(ids[wanted])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def _unique_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Union of (i, j) pair lists as unique (min, max) pairs."""
    i = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    j = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    if len(i) == 0:
        return i, j
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    both = np.unique(np.stack([lo, hi], axis=1), axis=0)
    return both[:, 0], both[:, 1]


def flat_pairs(x: np.ndarray, threshold: float,
               views: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Exact: every pair i < j of normalised rows with cosine >= threshold, where view v of row i
    (views[v][i], e.g. a zoomed crop) may stand in for row i as the query."""
    _set_threads()  # before the import: see there
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    found = [_range_pairs(index, x, threshold, upper_only=True)]
    found += [_range_pairs(index, _normalised(v), threshold, upper_only=False) for v in views]
    return _unique_pairs(found)


def _scan_lists(base: np.ndarray, order: np.ndarray, starts: np.ndarray, queries: np.ndarray,
                probes: np.ndarray, radius: float, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(query row, base row) pairs with inner product >= radius, each query compared with every member of
    each list it probes. The members of list L are base[starts[L]:starts[L+1]] (rows order[...]), stored
    contiguously, so a list is scanned for all its queries at once by one matrix product."""
    nlist = len(starts) - 1
    rows = np.repeat(np.arange(len(queries), dtype=np.int64), probes.shape[1])
    lists = probes.ravel()
    rows, lists = rows[lists >= 0], lists[lists >= 0]  # faiss pads with -1 when nlist < nprobe
    by_list = np.argsort(lists, kind="stable")
    rows = rows[by_list]
    q_starts = np.searchsorted(lists[by_list], np.arange(nlist + 1))

    def scan(lst: int) -> list[tuple[np.ndarray, np.ndarray]]:
        m0, m1 = starts[lst], starts[lst + 1]
        qs = rows[q_starts[lst]:q_starts[lst + 1]]
        out = []
        if m1 == m0:
            return out
        members = base[m0:m1]
        step = max(1, SCAN_BLOCK // (m1 - m0))
        for b in range(0, len(qs), step):
            qb = qs[b:b + step]
            qi, mj = np.nonzero(queries[qb] @ members.T >= radius)
            out.append((qb[qi], order[m0 + mj]))
        return out

    # Each product is small (~10^3 x 10^3 x 64): one BLAS thread per product and the lists spread over
    # `workers` threads (numpy drops the GIL in matmul); BLAS's own threads would sync at every product.
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, workers)) as pool:
        found = [pair for part in pool.map(scan, range(nlist)) for pair in part]
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return (np.concatenate([f[0] for f in found]).astype(np.int64),
            np.concatenate([f[1] for f in found]).astype(np.int64))


def ivf_pairs(x: np.ndarray, threshold: float, seed: int = 0,
              views: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Approximate: candidate pairs from an IVF self-join in PCA space, verified exactly on x (module doc)."""
    _set_threads()  # before the import: see there
    import faiss  # imported after _set_threads: faiss's OpenMP reads OMP_WAIT_POLICY once, at import

    n, d = x.shape
    rng = np.random.default_rng(seed)
    reduced = x
    reduce = _normalised
    if d > PCA_DIM:
        pca = faiss.PCAMatrix(d, PCA_DIM)
        # One BLAS thread: the eigendecomposition is small but made of many short parallel sections, and
        # on a loaded machine each one waits for a descheduled thread (measured 10.6 s vs 0.2 s at load 4).
        with threadpool_limits(1, user_api="blas"):
            pca.train(x[np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False))])
        def reduce(v):  # the projection learnt above, applied to the rows and to every view
            return _normalised(pca.apply(np.ascontiguousarray(v, dtype=np.float32)))
        reduced = reduce(x)
    dim = reduced.shape[1]
    # sqrt(nprobe n) lists balance the two products: assigning rows to lists (n x nlist) and scanning
    # the probed lists (n x nprobe x n / nlist).
    nlist = int(max(1, min(np.sqrt(IVF_NPROBE * n), n // IVF_TRAIN_PER_LIST)))
    kmeans = faiss.Kmeans(dim, nlist, niter=IVF_KMEANS_ITER, seed=seed, spherical=True,
                          min_points_per_centroid=1)  # the sample below is sized for it: no faiss warning
    kmeans.train(reduced[np.sort(rng.choice(n, min(n, nlist * IVF_TRAIN_PER_LIST), replace=False))])
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    nprobe = min(IVF_NPROBE, nlist)
    _, probes = quantizer.search(reduced, nprobe)  # each row's nprobe nearest lists; it lives in the first
    order = np.argsort(probes[:, 0], kind="stable")
    starts = np.searchsorted(probes[:, 0][order], np.arange(nlist + 1))
    base = reduced[order]
    radius = threshold - CANDIDATE_MARGIN
    workers = faiss.omp_get_max_threads()

    def queries():  # the rows themselves, then each view (one at a time: a view is as large as x)
        yield x, reduced, probes
        for v in views:
            v_reduced = reduce(v)
            yield _normalised(v), v_reduced, quantizer.search(v_reduced, nprobe)[1]

    found = []
    for q, q_reduced, q_probes in queries():
        ci, cj = _scan_lists(base, order, starts, q_reduced, q_probes, radius, workers)
        if q is x:  # a pair of rows is met from both sides (when each probes the other's list): count it once
            ci, cj = _unique_pairs([(ci[ci != cj], cj[ci != cj])])
        else:
            ci, cj = ci[ci != cj], cj[ci != cj]
        # Exact check on the full vectors, in chunks so 10^6 candidates never need a [m, d] copy at once.
        sims = np.empty(len(ci), dtype=np.float32)
        for s in range(0, len(ci), 1 << 18):
            sims[s:s + (1 << 18)] = np.einsum("ij,ij->i", q[ci[s:s + (1 << 18)]], x[cj[s:s + (1 << 18)]])
        ok = sims >= threshold
        found.append((ci[ok], cj[ok]))
    return _unique_pairs(found)


def near_duplicates(emb: np.ndarray, scores, threshold: float, index: str = "auto",
                    flat_max: int = 50_000, views: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Keep mask: a row goes when a better-scoring near copy of it stays (see `keep_best_of_neighbours`).

    index: "flat" (exact), "ivf" (PCA + IVF, verified), or "auto" (flat up to flat_max rows, else ivf).
    views: extra query vectors row-aligned with emb (e.g. zoomed crops): row i matches row j when
    emb[i] or any views[v][i] has cosine >= threshold with emb[j].
    """
    if index not in ("auto", "flat", "ivf"):
        raise ValueError(f"unknown index {index!r}")
    n = len(emb)
    if len(scores) != n:
        raise ValueError(f"{n} embeddings but {len(scores)} scores")
    if n == 0:
        return np.zeros(0, dtype=bool)
    if any(len(v) != n for v in views):
        raise ValueError("every query view must be row-aligned with the embeddings")
    x = _normalised(emb)
    use_flat = index == "flat" or (index == "auto" and n <= flat_max)
    i, j = flat_pairs(x, threshold, views) if use_flat else ivf_pairs(x, threshold, views=views)
    return keep_best_of_neighbours(n, i, j, np.asarray(scores))


def decontaminate(emb: np.ndarray, eval_emb: np.ndarray, threshold: float) -> np.ndarray:
    """Keep mask: drop every pool image whose cosine to any evaluation vector is >= threshold
    (pass each evaluation image's zoomed views as extra rows of eval_emb to catch cropped copies)."""
    n = len(emb)
    keep = np.ones(n, dtype=bool)
    if n == 0 or len(eval_emb) == 0:
        return keep
    _set_threads()  # before the import: see there
    import faiss

    ev = _normalised(eval_emb)
    index = faiss.IndexFlatIP(ev.shape[1])
    index.add(ev)
    x = _normalised(emb)
    for start in range(0, n, SEARCH_CHUNK):
        best, _ = index.search(x[start:start + SEARCH_CHUNK], 1)  # [chunk, 1] best eval similarity
        keep[start:start + len(best)] = best[:, 0] < threshold
    return keep
