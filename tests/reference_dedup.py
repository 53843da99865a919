"""The single-node dedup, the reference the tests and benchmarks hold the dedup step to.

build-dataset runs the partitioned step (curation.dedup_parts); this module is what it replaced, one
process over arrays in memory, kept to check it against: ``exact_duplicates`` (identical bytes) and
``near_duplicates`` (near copies, by the same keep rule, ``curation.dedup.keep_best_of_neighbours``).

Near duplicates are pairs whose normalised image embeddings have cosine similarity >= threshold, where
extra query views (e.g. zoomed crops, see curation.copy_detection) may stand in for a row. Index:
- up to ``flat_max`` rows ("flat"): an exact flat inner-product index, range search at the threshold.
- past it ("ivf"): (1) a PCA to ``PCA_DIM`` dimensions learnt on a sample (vectors re-normalised); (2) a
  sample of ``TRAIN_PER_CENTROID`` rows per list clustered with faiss k-means (spherical) into
  sqrt(nprobe n) lists, which balances the two big products below; (3) every row assigned to its
  ``IVF_NPROBE`` nearest lists with one faiss search (it lives in the first); (4) each list scanned once
  for all the rows that probe it, as one matrix product [queries of the list] x [members of the list],
  keeping pairs at the looser radius ``threshold - CANDIDATE_MARGIN`` in the reduced space, because
  projection noise can push a true pair's cosine down; (5) each candidate pair verified exactly on the
  full embeddings. A self-join knows every list's queries up front, so one product per list replaces
  faiss's IVF range search (one inner product at a time per query). The PCA is trained with one BLAS
  thread: its eigendecomposition is many short parallel sections, each waiting for a descheduled thread
  on a loaded machine. Why these settings (measured): benchmarks/RESULTS.md, "Curation: dedup design
  figures".
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from curation.dedup import (
    CANDIDATE_MARGIN,
    PCA_DIM,
    PRODUCT_BLOCK,
    SEARCH_CHUNK,
    TRAIN_PER_CENTROID,
    import_faiss,
    keep_best_of_neighbours,
    normalised,
    set_faiss_threads,
    unique_pairs,
)

PCA_SAMPLE = 50_000
IVF_KMEANS_ITER = 10
IVF_NPROBE = 4


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


def range_pairs(index, queries: np.ndarray, radius: float,
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


def flat_pairs(x: np.ndarray, threshold: float,
               views: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Exact: every pair i < j of normalised rows with cosine >= threshold, where view v of row i
    (views[v][i], e.g. a zoomed crop) may stand in for row i as the query."""
    faiss = import_faiss()
    set_faiss_threads()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    found = [range_pairs(index, x, threshold, upper_only=True)]
    found += [range_pairs(index, normalised(v), threshold, upper_only=False) for v in views]
    return unique_pairs(found)


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
        step = max(1, PRODUCT_BLOCK // (m1 - m0))
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
    faiss = import_faiss()
    set_faiss_threads()

    n, d = x.shape
    rng = np.random.default_rng(seed)
    reduced = x
    reduce = normalised
    if d > PCA_DIM:
        pca = faiss.PCAMatrix(d, PCA_DIM)
        with threadpool_limits(1, user_api="blas"):  # one BLAS thread: see the module doc
            pca.train(x[np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False))])
        def reduce(v):  # the projection learnt above, applied to the rows and to every view
            return normalised(pca.apply(np.ascontiguousarray(v, dtype=np.float32)))
        reduced = reduce(x)
    dim = reduced.shape[1]
    # sqrt(nprobe n) lists balance the two products: assigning rows to lists (n x nlist) and scanning
    # the probed lists (n x nprobe x n / nlist).
    nlist = int(max(1, min(np.sqrt(IVF_NPROBE * n), n // TRAIN_PER_CENTROID)))
    kmeans = faiss.Kmeans(dim, nlist, niter=IVF_KMEANS_ITER, seed=seed, spherical=True,
                          min_points_per_centroid=1)  # the sample below is sized for it: no faiss warning
    kmeans.train(reduced[np.sort(rng.choice(n, min(n, nlist * TRAIN_PER_CENTROID), replace=False))])
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
            yield normalised(v), v_reduced, quantizer.search(v_reduced, nprobe)[1]

    found = []
    for q, q_reduced, q_probes in queries():
        ci, cj = _scan_lists(base, order, starts, q_reduced, q_probes, radius, workers)
        if q is x:  # a pair of rows is met from both sides (when each probes the other's list): count it once
            ci, cj = unique_pairs([(ci[ci != cj], cj[ci != cj])])
        else:
            ci, cj = ci[ci != cj], cj[ci != cj]
        # Exact check on the full vectors, in chunks so 10^6 candidates never need a [m, d] copy at once.
        sims = np.empty(len(ci), dtype=np.float32)
        for s in range(0, len(ci), 1 << 18):
            sims[s:s + (1 << 18)] = np.einsum("ij,ij->i", q[ci[s:s + (1 << 18)]], x[cj[s:s + (1 << 18)]])
        ok = sims >= threshold
        found.append((ci[ok], cj[ok]))
    return unique_pairs(found)


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
    x = normalised(emb)
    use_flat = index == "flat" or (index == "auto" and n <= flat_max)
    i, j = flat_pairs(x, threshold, views) if use_flat else ivf_pairs(x, threshold, views=views)
    return keep_best_of_neighbours(n, i, j, np.asarray(scores))
