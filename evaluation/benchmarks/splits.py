"""Seeded, stratified index splits: val carved from train, fixed splits, caps on the number of items.

One primitive, ``stratified_order``: a seeded permutation in which every prefix holds the classes in
(almost exactly) their proportions. Taking the first k items of it is a stratified sample of size k,
consecutive chunks are stratified splits, and the result depends only on (labels, seed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def stratified_order(labels: Sequence[int] | np.ndarray, seed: int) -> np.ndarray:
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    _, inverse, counts = np.unique(labels[perm], return_inverse=True, return_counts=True)
    # rank of each (permuted) item inside its class, in permutation order
    by_class = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - starts[inverse[by_class]]
    # an item's position on [0, 1] inside its class: sorting by it interleaves classes proportionally
    position = (rank + 0.5) / counts[inverse]
    return perm[np.argsort(position, kind="stable")]


def carve_val(
    labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), sorted, disjoint, stratified; val is never empty when n >= 2."""
    n = len(labels)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    k = round(n * val_fraction)
    if n >= 2:
        k = min(max(k, 1), n - 1)
    else:
        k = 0
    order = stratified_order(labels, seed)
    return np.sort(order[k:]), np.sort(order[:k])


def fixed_split(
    labels: Sequence[int] | np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split into len(fractions) stratified, disjoint, sorted parts covering every index."""
    n = len(labels)
    order = stratified_order(labels, seed)
    bounds = np.round(np.cumsum([0.0, *fractions]) / sum(fractions) * n).astype(int)
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]


def cap(indices: np.ndarray, labels: np.ndarray, max_items: int | None, seed: int) -> np.ndarray:
    """At most ``max_items`` of ``indices``, a stratified seeded sample (labels are the labels of indices)."""
    if max_items is None or len(indices) <= max_items:
        return indices
    order = stratified_order(labels, seed)
    return np.sort(indices[order[:max_items]])
