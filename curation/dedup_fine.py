"""The near-copy clusters trained in two levels (curation.dedup_near, when the sample is larger than
``dedup.driver_sample`` rows): the driver holds a bounded subsample, counts and small plans only.

The sample (curation.dedup_near.sample_task) is in files written by the sample tasks: each file [m, views,
D], its rows at even positions of the whole sample train (as in the one-level path) and those at odd ones
are held out; beside it the driver's subsample, view 0 of the rows drawn below ``DRIVER_FILL *
driver_sample / n``.

1. Coarse (driver): at most ``driver_sample`` subsample rows, read file by file (the driver never reads
   past the cap: ``dedup_plan.load_head``), train the PCA (when used) and a spherical k-means of
   ~sqrt(k) coarse centroids, k = n_clusters(n) the fine clusters wanted.
2. Fine (one engine task per coarse cluster): every sample file sends its training rows, in the PCA space,
   to their nearest coarse centroid; the task trains ~k x its share of the training rows fine centroids
   on them. The driver gathers the fine centroids (k x 64 floats: the plan every part task gets anyway).
3. Bounds (one engine task per coarse cluster's range of fine clusters): every sample file assigns its
   held-out rows, every view, to the fine clusters as a part task will (among the fine centroids of their
   nearest coarse clusters: ``Clusters.assign``; a vector sent across a coarse boundary counts where it
   goes) and sends each (row, view, cluster) to the task holding the
   cluster, with the row's vector. The task estimates its clusters' loads, finds near-copy cores among the
   rows sent there and splits its clusters still over the target (the rules of curation.dedup_clusters,
   within its clusters); it returns its clusters' centroids, loads and cores.
The driver concatenates them, keeps one core per group (a core whose representative is a copy of an
earlier one's is dropped: two tasks may meet one group) and packs the clusters into tasks. The coarse
centroids stay in the plan: each fine cluster, split or not, belongs to the coarse cluster whose task
trained or split it, and the part tasks look a vector up among the fine clusters of its nearest coarse
ones.

Load estimates past a task's clusters are conservative: rows a core found in another task takes out are
still counted, and a split cluster's vectors are divided among its own sub-centroids only.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits

from curation import dedup
from curation.dedup_clusters import (
    CORE_SHARE,
    SPLIT_ROUNDS,
    Clusters,
    core_similarity,
    find_cores,
    n_clusters,
    place_and_pack,
    spherical_kmeans,
    train_clusters,
    two_level,
)
from curation.dedup_plan import load, load_head
from shared import fsio


def read_driver_sample(folder: str, counts: list[int], cap: int) -> np.ndarray:
    """[<= cap, D] the driver's subsample: the files in task order (the sample's order, whatever the
    tasks' grouping), the last one read only up to the cap."""
    out, have = [], 0
    for i, rows in enumerate(counts):
        if rows and have < cap:
            out.append(load_head(fsio.join(folder, f"driver-{i:08d}.npy"), cap - have))
            have += len(out[-1])
    return np.concatenate(out)


def _sample_file(folder: str, item: tuple[int, int], held_out: bool) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the whole sample, rows [m, views, D]) of a sample file's training rows (even
    positions) or held-out rows (odd)."""
    index, offset = item
    sample = load(fsio.join(folder, f"{index:08d}.npy"))
    pos = offset + np.arange(len(sample))
    mine = pos % 2 == int(held_out)
    return pos[mine], sample[mine]


def _by_value(values: np.ndarray):
    """(value, row indices) for each value present, in value order."""
    order = np.argsort(values, kind="stable")
    cuts = np.flatnonzero(np.diff(values[order])) + 1
    for sel in np.split(order, cuts) if len(order) else []:
        yield int(values[sel[0]]), sel


def emit_training(coarse: Clusters, folder: str, item: tuple[int, int]):
    """(coarse cluster, (positions, PCA-space training rows)) for a sample file's training rows."""
    pos, rows = _sample_file(folder, item, held_out=False)
    x = coarse.reduce(rows[:, 0])
    _, cluster, nearest = coarse.assign(x)
    nearest_cluster = cluster[nearest]  # one per row, in row order
    for c, sel in _by_value(nearest_cluster):
        yield c, (pos[sel], x[sel])


def train_fine(k: int, train_rows: int, per_centroid: int, coarse: int, records) -> np.ndarray | None:
    """A coarse cluster's fine centroids [k_c, r]: about k x its share of the ``train_rows`` training rows,
    at most one per ``per_centroid`` of its rows (dedup.TRAIN_PER_CENTROID, read on the driver); None when
    no row is here."""
    records = list(records)
    if not records:
        return None
    pos = np.concatenate([r[0] for r in records])
    x = np.concatenate([r[1] for r in records])[np.argsort(pos)]  # the sample's order, not the shuffle's
    k_c = int(max(1, min(round(k * len(x) / train_rows), len(x) // per_centroid)))
    with threadpool_limits(1, user_api="openmp"):  # one core per task (curation.engine)
        return np.ascontiguousarray(spherical_kmeans(x, k_c, seed=coarse), np.float32)


def emit_bounds(fine: Clusters, starts: np.ndarray, folder: str, item: tuple[int, int]):
    """(bound task, record) for a sample file's held-out rows: every view assigned to the fine clusters as
    in a part task (``Clusters.assign``);
    per bound task (a range of fine clusters, ``starts``), the sends there (cluster, row position, view,
    member: the row's own vector in its nearest cluster, PCA-space vector) and the view-0 vectors of the
    rows sent there (position, [D])."""
    pos, rows = _sample_file(folder, item, held_out=True)
    m, views = rows.shape[:2]
    reduced = fine.reduce(rows.reshape(m * views, -1))
    sent, cluster, nearest = fine.assign(reduced)
    row, view = sent // views, sent % views
    for b, sel in _by_value(np.searchsorted(starts, cluster, side="right") - 1):
        here = np.unique(row[sel])
        yield b, (cluster[sel], pos[row[sel]], view[sel], nearest[sel] & (view[sel] == 0),
                  reduced[sent[sel]], pos[here], rows[here, 0])


def _split_sends(centroid: np.ndarray, reduced: np.ndarray, member: np.ndarray, per_row: float,
                 capacity: float, seed: int, rounds: int) -> list[tuple[np.ndarray, float]]:
    """[(centroid, estimated load)]: one cluster, given the vectors sent to it (``reduced``, ``member``
    where it is the row's own nearest), split while over ``capacity`` by a k-means of its members into
    about 2 load / capacity sub-clusters, each vector sent on to its nearest sub-centroids (the margin
    rule of Clusters.assign), up to ``rounds`` times."""
    load = len(reduced) * per_row
    k = min(math.ceil(2 * load / capacity), int(member.sum()) // 2)
    if load <= capacity or rounds == 0 or k < 2:
        return [(centroid, load)]
    with threadpool_limits(1, user_api="openmp"):
        sub = spherical_kmeans(reduced[member], k, seed)
    row, to, nearest = Clusters(np.ascontiguousarray(sub, np.float32), None, None, 1).assign(reduced)
    out = []
    for j in range(k):
        sel = to == j
        out += _split_sends(sub[j], reduced[row[sel]], member[row[sel]] & nearest[sel], per_row, capacity,
                            seed + 1, rounds - 1)
    return out


def bound_fine(fine: Clusters, starts: np.ndarray, per_row: float, capacity: float, threshold: float,
               bucket: int, records) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(centroids [k_b, r], estimated loads [k_b], core representatives ([D] each)) of this task's fine
    clusters (``starts[bucket]`` to ``starts[bucket + 1]``), from the held-out rows sent to them: loads,
    then cores in the clusters that receive enough for one (curation.dedup_clusters.find_cores), then the
    clusters still over ``capacity`` split."""
    lo, hi = int(starts[bucket]), int(starts[bucket + 1])
    records = list(records)
    if not records:
        return fine.centroids[lo:hi], np.zeros(hi - lo), []
    cluster, pos, view, member, reduced = (np.concatenate([r[i] for r in records]) for i in range(5))
    order = np.lexsort((view, pos, cluster))  # the sample's order, not the shuffle's
    cluster, pos, view, member, reduced = cluster[order] - lo, pos[order], view[order], member[order], \
        reduced[order]
    row_pos, first = np.unique(np.concatenate([r[5] for r in records]), return_index=True)
    unit = np.concatenate([r[6] for r in records])[first]  # [rows, D] each row sent here, once
    row = np.searchsorted(row_pos, pos)
    load = np.bincount(cluster, minlength=hi - lo) * per_row
    core_min = core_similarity(threshold)
    own = view == 0
    cores = find_cores(unit, (row[own], cluster[own]), np.flatnonzero(load >= capacity / CORE_SHARE),
                        per_row, capacity, core_min)
    if cores:  # the rows inside a core are not searched: their vectors leave the loads
        keep = ~((unit @ np.array(cores).T).max(axis=1) >= core_min)[row]
        cluster, member, reduced = cluster[keep], member[keep], reduced[keep]
    centroids, loads = [], []
    cuts = np.searchsorted(cluster, np.arange(hi - lo + 1))
    for c in range(hi - lo):
        sel = slice(cuts[c], cuts[c + 1])
        for centroid, estimate in _split_sends(fine.centroids[lo + c], reduced[sel], member[sel], per_row,
                                               capacity, seed=0, rounds=SPLIT_ROUNDS):
            centroids.append(centroid)
            loads.append(estimate)
    return np.array(centroids, np.float32).reshape(-1, fine.centroids.shape[1]), np.array(loads), cores


def distinct_cores(cores: list[np.ndarray], threshold: float) -> list[np.ndarray]:
    """The cores in order, less each whose representative is a copy (>= threshold) of a kept one's: two
    bound tasks may meet one group; its rows then go to the first core or to the ordinary search."""
    kept: list[np.ndarray] = []
    for rep in cores:
        if not kept or float((np.array(kept) @ rep).max()) < threshold:
            kept.append(rep)
    return kept


def train_two_level(engine, folder: str, rows: np.ndarray, driver_rows: list[int], n: int, reduce: bool,
                    cap: int, capacity: float, threshold: float) -> tuple[Clusters, dict]:
    """(clusters, figures) from the sample in ``folder`` (``rows`` per file; module doc): the driver
    reads at most ``cap`` rows of it. Figures: the rows the driver read, the coarse clusters, the coarse
    clusters a vector is looked up in (0: every fine centroid searched)."""
    offsets = np.r_[0, np.cumsum(rows)[:-1]]
    items = [(i, int(offsets[i])) for i in np.flatnonzero(rows)]
    total = int(rows.sum())
    train_rows, held_out = (total + 1) // 2, total // 2

    subsample = read_driver_sample(folder, driver_rows, cap)
    k = int(max(1, min(n_clusters(n), train_rows // dedup.TRAIN_PER_CENTROID)))
    coarse_k = int(max(1, min(math.ceil(math.sqrt(k)), len(subsample) // dedup.TRAIN_PER_CENTROID)))
    coarse = train_clusters(subsample, n, reduce, 1, k=coarse_k)
    read = len(subsample)
    del subsample

    parts = engine.group_reduce(items, partial(emit_training, coarse, folder),
                                partial(train_fine, k, train_rows, dedup.TRAIN_PER_CENTROID),
                                len(coarse.centroids))
    parts = [np.zeros((0, coarse.centroids.shape[1]), np.float32) if c is None else c for c in parts]
    starts = np.r_[0, np.cumsum([len(c) for c in parts])]  # bound task j: coarse cluster j's fine clusters
    fine = two_level(coarse.centroids, parts, coarse.pca_mean, coarse.pca_components)

    per_row = n / max(1, held_out)  # the pool's rows each held-out row stands for
    bounded = engine.group_reduce(items, partial(emit_bounds, fine, starts, folder),
                                  partial(bound_fine, fine, starts, per_row, capacity, threshold), len(parts))
    load = np.concatenate([b[1] for b in bounded])
    cores = distinct_cores([rep for b in bounded for rep in b[2]], threshold)
    # the clusters split by task j stay in coarse cluster j: the lookup finds them where it found theirs
    clusters = two_level(coarse.centroids, [b[0] for b in bounded], coarse.pca_mean, coarse.pca_components)
    if cores:
        clusters = replace(clusters, cores=np.ascontiguousarray(cores, np.float32),
                           core_min=core_similarity(threshold))
    return place_and_pack(clusters, load, capacity), {"driver_rows": read, "coarse": len(coarse.centroids),
                                                      "coarse_probes": clusters.coarse_probes}
