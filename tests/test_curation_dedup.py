"""Dedup on planted duplicates: exact by digest, near by embedding (flat and PCA+IVF agree), decontamination."""

from __future__ import annotations

import numpy as np

from curation.dedup import decontaminate, exact_duplicates, near_duplicates


def _planted(n: int, d: int, n_dups: int, seed: int = 0):
    """n random unit vectors, the last n_dups of them noisy copies of earlier rows; (emb, scores, source)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    src = rng.choice(n - n_dups, size=n_dups, replace=False)
    emb[n - n_dups:] = emb[src] + 0.02 * rng.normal(size=(n_dups, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, rng.random(n).astype(np.float32), src


def test_exact_duplicates_keep_the_highest_score():
    digests = ["a", "b", "a", "c", "b", "a"]
    scores = np.array([0.1, 0.9, 0.7, 0.5, 0.2, 0.3])
    keep = exact_duplicates(digests, scores)
    assert keep.tolist() == [False, True, True, True, False, False]


def test_near_duplicates_found_and_best_kept():
    emb, scores, src = _planted(2000, 64, 100, seed=1)
    keep = near_duplicates(emb, scores, threshold=0.95, index="flat")
    dup = np.arange(1900, 2000)
    assert keep.sum() == 1900  # exactly one of each planted pair goes
    for original, copy in zip(src, dup):
        best = original if scores[original] >= scores[copy] else copy
        assert keep[best] and not keep[original + copy - best]


def test_flat_and_ivf_agree_on_20k_planted():
    emb, scores, _ = _planted(20_000, 64, 500, seed=2)
    flat = near_duplicates(emb, scores, threshold=0.95, index="flat")
    ivf = near_duplicates(emb, scores, threshold=0.95, index="ivf")
    assert flat.sum() == 19_500
    assert (flat == ivf).mean() >= 0.999


def test_decontaminate_drops_leaks_only():
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(500, 32)).astype(np.float32)
    evals = rng.normal(size=(40, 32)).astype(np.float32)
    leaked = [5, 77, 300]
    pool[leaked] = evals[[0, 1, 2]] * 3 + 0.01 * rng.normal(size=(3, 32))  # scale does not hide a leak
    keep = decontaminate(pool, evals, threshold=0.95)
    assert sorted(np.flatnonzero(~keep).tolist()) == leaked
