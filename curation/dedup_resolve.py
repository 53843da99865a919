"""Near-copy pairs -> losers, on the engine (the resolve of curation.dedup_parts' near-copy search).

The keep rule (``dedup.keep_best_of_neighbours``) is a pass over the linked rows in score order; a row's
fate depends on its connected component alone, so components resolved apart drop the rows the whole graph
would. No process holds every pair: rows are spread over ``buckets`` by a hash of their key, and

1. the pair files are shuffled into each bucket's edges (both directions, a pair found in two clusters
   once): ``adj-<b>.npz``; every row's label starts as the least key among it and its neighbours
   (``label-<b>.npz``);
2. labels are propagated along the edges (each row takes the least label of its neighbours) through the
   shuffle, one round at a time, until none changes: every row of a component then holds its least key
   (rounds: about the longest path in a component, a handful for copies);
3. the edges are shuffled by their component's label, and each bucket applies the keep rule to its
   components; the losers go to ``losers-<b>.npy``.

A task holds its bucket's edges: about ``PAIRS_PER_TASK`` directed edges, more when one component is
larger (a near-copy group large enough to matter never becomes pairs: curation.dedup_clusters' cores).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from curation import dedup
from curation.dedup_plan import load, save
from shared import fsio

PAIRS_PER_TASK = 1 << 22  # directed edges per resolve bucket (~2M pairs; ~130 MB at 32 B an edge)


def row_bucket(keys: np.ndarray, buckets: int) -> np.ndarray:
    """The resolve bucket of each row key, mixed (Fibonacci hashing) so one part's rows spread over all."""
    mixed = np.asarray(keys, dtype=np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)


def _by_bucket(bucket: np.ndarray, cols: tuple[np.ndarray, ...]):
    order = np.argsort(bucket, kind="stable")
    cuts = np.flatnonzero(np.diff(bucket[order])) + 1
    for sel in np.split(order, cuts) if len(order) else []:
        yield int(bucket[sel[0]]), tuple(c[sel] for c in cols)


def emit_pairs(buckets: int, path: str):
    """A pair file's pairs as directed edges (row, neighbour, row score, neighbour score), by row bucket."""
    z = load(path)
    a, b, sa, sb = z["a"], z["b"], z["sa"], z["sb"]
    u, v = np.r_[a, b], np.r_[b, a]
    yield from _by_bucket(row_bucket(u, buckets), (u, v, np.r_[sa, sb], np.r_[sb, sa]))


def reduce_edges(folder: str, bucket: int, records) -> int:
    """A bucket's edges, once each, sorted by row, and its rows' first labels; returns its rows."""
    records = list(records)
    u, v, su, sv = (np.concatenate([r[k] for r in records]) if records else np.zeros(0, t)
                    for k, t in enumerate((np.int64, np.int64, np.float64, np.float64)))
    order = np.lexsort((v, u))
    u, v, su, sv = u[order], v[order], su[order], sv[order]
    once = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])] if len(u) else np.zeros(0, bool)
    u, v, su, sv = u[once], v[once], su[once], sv[once]
    save(fsio.join(folder, f"adj-{bucket:06d}.npz"), u=u, v=v, su=su, sv=sv)
    rows, first = np.unique(u, return_index=True)
    labels = np.minimum(rows, np.minimum.reduceat(v, first)) if len(rows) else rows
    save(fsio.join(folder, f"label-{bucket:06d}.npz"), rows=rows, labels=labels)
    return len(rows)


def _labelled(folder: str, bucket: int) -> tuple[dict, np.ndarray]:
    """(a bucket's edges, the label of each edge's row)."""
    adj = load(fsio.join(folder, f"adj-{bucket:06d}.npz"))
    z = load(fsio.join(folder, f"label-{bucket:06d}.npz"))
    rows, labels = z["rows"], z["labels"]
    return adj, labels[np.searchsorted(rows, adj["u"])]


def emit_labels(folder: str, buckets: int, bucket: int):
    """Each row's label to its neighbours' buckets: (neighbour, label)."""
    adj, label = _labelled(folder, bucket)
    yield from _by_bucket(row_bucket(adj["v"], buckets), (adj["v"], label))


def reduce_labels(folder: str, bucket: int, records) -> int:
    """Each row takes the least label offered by its neighbours; returns how many rows' labels fell."""
    path = fsio.join(folder, f"label-{bucket:06d}.npz")
    z = load(path)
    rows, labels = z["rows"], z["labels"]
    new = labels.copy()
    for v, label in records:
        np.minimum.at(new, np.searchsorted(rows, v), label)
    changed = int((new < labels).sum())
    if changed:
        save(path, rows=rows, labels=new)
    return changed


def emit_components(folder: str, buckets: int, bucket: int):
    """Each edge once (row < neighbour) to the bucket of its component's label."""
    adj, label = _labelled(folder, bucket)
    once = adj["u"] < adj["v"]
    yield from _by_bucket(row_bucket(label[once], buckets),
                          tuple(adj[k][once] for k in ("u", "v", "su", "sv")))


def reduce_components(folder: str, bucket: int, records) -> int:
    """The keep rule over this bucket's components (whole: every edge of a component is here); the losers'
    keys to ``losers-<bucket>.npy``. Returns the losers."""
    records = list(records)
    if not records:
        return 0
    u, v, su, sv = (np.concatenate([r[k] for r in records]) for k in range(4))
    linked, inverse = np.unique(np.r_[u, v], return_inverse=True)  # compact ids, in key order
    scores = np.empty(len(linked), np.float64)
    scores[inverse] = np.r_[su, sv]
    keep = dedup.keep_best_of_neighbours(len(linked), inverse[:len(u)], inverse[len(u):], scores)
    losers = linked[~keep]
    if len(losers):
        save(fsio.join(folder, f"losers-{bucket:06d}.npy"), losers)
    return len(losers)


def resolve_pairs(engine, pair_files: list[str], pairs: int, folder: str) -> tuple[list[str], int, int]:
    """(loser files, losers, label rounds) for the pairs in ``pair_files`` (``pairs`` in all), working in
    ``folder``."""
    if not pairs:
        return [], 0, 0
    fsio.makedirs(folder)
    buckets = max(1, math.ceil(2 * pairs / PAIRS_PER_TASK))
    engine.group_reduce(pair_files, partial(emit_pairs, buckets), partial(reduce_edges, folder), buckets)
    rounds = 0
    while True:
        rounds += 1
        changed = engine.group_reduce(range(buckets), partial(emit_labels, folder, buckets),
                                      partial(reduce_labels, folder), buckets)
        if not sum(changed):
            break
    losers = engine.group_reduce(range(buckets), partial(emit_components, folder, buckets),
                                 partial(reduce_components, folder), buckets)
    return [fsio.join(folder, f"losers-{b:06d}.npy") for b, n in enumerate(losers) if n], sum(losers), rounds
