"""Deduplication: identical bytes, near-duplicate images, and evaluation-set leaks.

All three return a boolean keep mask aligned with their input rows and are deterministic: within a
group of copies the highest-scoring member stays (ties: the lowest row index).

Near duplicates (`near_duplicates`) are pairs whose normalised image embeddings have cosine similarity
>= threshold; pairs are joined transitively (connected components of the pair graph, i.e. union-find).

Index choice, measured by benchmarks/curation_bench.py on 2 cores (figures in benchmarks/RESULTS.md):
- up to `flat_max` rows: an exact flat inner-product index, range search at the threshold.
- past it ("ivf"): a flat search is O(n^2 d) (about 2 hours for 10^6 x 512 here) and a plain IVF in 512
  dimensions spends minutes scanning lists. We instead (1) learn a PCA to 128 dimensions on a 50k
  sample (whitening off, vectors re-normalised), which cuts every distance computation 4x while copies
  stay copies; (2) build an IVF-Flat with ~2 sqrt(n) lists, its k-means coarse quantizer trained on a
  sample of 32 vectors per list; (3) range-search every vector with nprobe=4 at a looser radius
  (threshold - 0.08) in the reduced space, because projection noise can push a true pair's cosine
  down; (4) verify each candidate pair exactly on the full embeddings with the real threshold. Near
  copies sit far closer to each other than to anything else, so they almost always share an inverted
  list or a neighbouring one: few probes find them, and step (4) keeps precision exact.
  HNSW was rejected: building a graph over 10^6 x 512 vectors alone takes several minutes on 2 cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

PCA_DIM = 128
PCA_SAMPLE = 50_000
IVF_TRAIN_PER_LIST = 32
IVF_NPROBE = 4
CANDIDATE_MARGIN = 0.08
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


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each row of the graph with edges (i, j): union-find over the pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def exact_duplicates(sha256: Sequence[str], scores: np.ndarray) -> np.ndarray:
    """Keep the highest-scoring member of each group of identical image bytes (same sha256).

    Rows without a digest (None or "") are never grouped.
    """
    digests = ["" if d is None or (isinstance(d, float) and np.isnan(d)) else str(d) for d in sha256]  # NaN: pandas
    n = len(digests)
    if len(scores) != n:
        raise ValueError(f"{n} digests but {len(scores)} scores")
    _, labels = np.unique(np.asarray(digests, dtype=object).astype(str), return_inverse=True)
    labels = labels.astype(np.int64)
    missing = np.array([d == "" for d in digests], dtype=bool)
    labels[missing] = labels.max(initial=0) + 1 + np.arange(missing.sum())  # each its own group
    return _keep_best_per_group(labels, np.asarray(scores))


def _set_threads() -> None:
    import faiss

    faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))


def _range_pairs(index, queries: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All (query row, index row) pairs with inner product >= radius, i < j, in chunks."""
    out_i, out_j = [], []
    for start in range(0, len(queries), SEARCH_CHUNK):
        lims, _, ids = index.range_search(queries[start:start + SEARCH_CHUNK], radius)
        lims = lims.astype(np.int64)  # faiss returns uint64 offsets; np.repeat wants signed counts
        rows = np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims))
        upper = ids > rows
        out_i.append(rows[upper])
        out_j.append(ids[upper])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)


def flat_pairs(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact: every pair i < j of normalised rows with cosine >= threshold."""
    import faiss

    _set_threads()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return _range_pairs(index, x, threshold)


def ivf_pairs(x: np.ndarray, threshold: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate: candidate pairs from a PCA + IVF range search, verified exactly on x (see module doc)."""
    import faiss

    _set_threads()
    n, d = x.shape
    rng = np.random.default_rng(seed)
    reduced = x
    if d > PCA_DIM:
        pca = faiss.PCAMatrix(d, PCA_DIM)
        pca.train(x[np.sort(rng.choice(n, min(n, PCA_SAMPLE), replace=False))])
        reduced = _normalised(pca.apply(x))
    dim = reduced.shape[1]
    nlist = int(max(1, min(2 * np.sqrt(n), n // IVF_TRAIN_PER_LIST)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(reduced[np.sort(rng.choice(n, min(n, nlist * IVF_TRAIN_PER_LIST), replace=False))])
    index.add(reduced)
    index.nprobe = min(IVF_NPROBE, nlist)
    ci, cj = _range_pairs(index, reduced, threshold - CANDIDATE_MARGIN)
    # Exact check on the full vectors, in chunks so 10^6 candidates never need a [m, d] copy at once.
    sims = np.empty(len(ci), dtype=np.float32)
    for s in range(0, len(ci), 1 << 18):
        sims[s:s + (1 << 18)] = np.einsum("ij,ij->i", x[ci[s:s + (1 << 18)]], x[cj[s:s + (1 << 18)]])
    ok = sims >= threshold
    return ci[ok], cj[ok]


def near_duplicates(emb: np.ndarray, scores, threshold: float, index: str = "auto",
                    flat_max: int = 50_000) -> np.ndarray:
    """Keep mask: within each group of near-duplicate images keep only the highest-scoring one.

    index: "flat" (exact), "ivf" (PCA + IVF, verified), or "auto" (flat up to flat_max rows, else ivf).
    """
    if index not in ("auto", "flat", "ivf"):
        raise ValueError(f"unknown index {index!r}")
    n = len(emb)
    if len(scores) != n:
        raise ValueError(f"{n} embeddings but {len(scores)} scores")
    if n == 0:
        return np.zeros(0, dtype=bool)
    x = _normalised(emb)
    use_flat = index == "flat" or (index == "auto" and n <= flat_max)
    i, j = flat_pairs(x, threshold) if use_flat else ivf_pairs(x, threshold)
    return _keep_best_per_group(_components(n, i, j), np.asarray(scores))


def decontaminate(emb: np.ndarray, eval_emb: np.ndarray, threshold: float) -> np.ndarray:
    """Keep mask: drop every pool image whose cosine to any evaluation image is >= threshold."""
    import faiss

    n = len(emb)
    keep = np.ones(n, dtype=bool)
    if n == 0 or len(eval_emb) == 0:
        return keep
    _set_threads()
    ev = _normalised(eval_emb)
    index = faiss.IndexFlatIP(ev.shape[1])
    index.add(ev)
    x = _normalised(emb)
    for start in range(0, n, SEARCH_CHUNK):
        best, _ = index.search(x[start:start + SEARCH_CHUNK], 1)  # [chunk, 1] best eval similarity
        keep[start:start + len(best)] = best[:, 0] < threshold
    return keep
