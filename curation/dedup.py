"""What the dedup step (curation.dedup_parts) builds on: the keep rule for copies, the eval-leak check,
unit vectors, faiss with passive threads, and the search constants.

The keep rule (``keep_best_of_neighbours``): pairs are *not* joined transitively, since a chain of
look-alikes (A~B, B~C) would merge whole families of distinct images. Instead the linked rows are taken in
score order and each kept row drops its direct neighbours, so a row goes only when a better-scoring copy
*of it* stays. The single-node search these pieces were first written for is kept as the tests' and
benchmarks' reference (tests/reference_dedup.py); measured figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from scipy.sparse import coo_matrix

PCA_DIM = 64  # the reduced space of a search in PCA space
CANDIDATE_MARGIN = 0.05  # PCA-space candidates are kept at threshold - margin, then checked exactly
TRAIN_PER_CENTROID = 40  # k-means training rows per centroid: faiss k-means asks for >= 39
PRODUCT_BLOCK = 1 << 22  # similarities per matrix product in a list or cluster scan (16 MiB of float32)
SEARCH_CHUNK = 65_536  # queries per faiss search: bounds the memory of the result lists


def normalised(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, contiguous; an all-zero row stays zero)."""
    x = np.ascontiguousarray(emb, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def unique_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Union of (i, j) pair lists as unique (min, max) pairs."""
    i = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    j = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    if len(i) == 0:
        return i, j
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    both = np.unique(np.stack([lo, hi], axis=1), axis=0)
    return both[:, 0], both[:, 1]


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
    for r in order.tolist():  # a Python loop over the linked rows only
        if keep[r]:
            keep[indices[indptr[r]:indptr[r + 1]]] = False
    return keep


def import_faiss():
    """faiss, imported with passive OpenMP threads. faiss bundles its own OpenMP runtime, which reads
    OMP_WAIT_POLICY once, at import. Its default (spinning threads) turns into seconds of spin-waiting
    when other jobs hold the cores. Set before the first import unless the user chose a policy; torch's
    separate runtime is not affected."""
    if "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


def set_faiss_threads() -> None:
    """faiss (imported by ``import_faiss``) on every core."""
    import_faiss().omp_set_num_threads(max(1, os.cpu_count() or 1))


def decontaminate(emb: np.ndarray, eval_emb: np.ndarray, threshold: float) -> np.ndarray:
    """Keep mask: drop every pool image whose cosine to any evaluation vector is >= threshold
    (pass each evaluation image's zoomed views as extra rows of eval_emb to catch cropped copies)."""
    n = len(emb)
    keep = np.ones(n, dtype=bool)
    if n == 0 or len(eval_emb) == 0:
        return keep
    faiss = import_faiss()
    set_faiss_threads()

    ev = normalised(eval_emb)
    index = faiss.IndexFlatIP(ev.shape[1])
    index.add(ev)
    x = normalised(emb)
    for start in range(0, n, SEARCH_CHUNK):
        best, _ = index.search(x[start:start + SEARCH_CHUNK], 1)  # [chunk, 1] best eval similarity
        keep[start:start + len(best)] = best[:, 0] < threshold
    return keep
