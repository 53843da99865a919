"""The near-copy search with bounded cluster tasks (curation.dedup_near, dedup_clusters, dedup_resolve).

A pool whose clusters are far over a (lowered) task target, one of them a group of near copies of one
image that k-means cannot split: every cluster task stays within 2x the target, the group is resolved
against its representative (no pair inside it), and the kept rows are still exactly those of the
single-process rule over every pair. The same with the clusters trained in two levels (dedup.driver_sample
below the sample's rows: curation.dedup_fine), the driver reading at most that many sample rows. The
resolve on the engine (components, then the keep rule in each) drops what the rule over the whole graph
drops.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from curation import dedup, dedup_clusters, dedup_fine, dedup_near, dedup_resolve
from curation.copy_detection import DIM
from curation.dedup_plan import save
from curation.engine import LocalEngine, SparkEngine
from curation.parts import list_parts
from shared.config.curation import DedupConfig
from tests.test_curation_engine import kept, planted, reference_keep, write_parts

GROUP = slice(300, 450)  # 150 rows: near copies of one image (cosine ~0.99 to each other)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = tmp_path_factory.mktemp("bound")
    x, sha, scores = planted(600, seed=1)
    rng = np.random.default_rng(5)
    base = rng.standard_normal(DIM).astype(np.float32)
    base /= np.linalg.norm(base)
    noise = rng.standard_normal((150, DIM)).astype(np.float32)
    x[GROUP, 0] = base + 0.1 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    write_parts(root / "parts", x, sha, scores, per_part=50)
    return root, x, sha, scores


@pytest.mark.parametrize(("with_group", "spark", "driver_sample", "lookup"),
                         [(True, False, None, False), (False, False, None, False), (True, True, None, False),
                          (True, False, 100, False), (False, False, 100, False), (True, True, 100, False),
                          (True, False, 100, True), (False, False, 100, True), (True, True, 100, True)])
def test_cluster_tasks_bounded_and_exact(grouped, tmp_path, monkeypatch, with_group, spark, driver_sample,
                                         lookup):
    """Local engine with and without the group; Spark with it (the same rows as the local engine keeps).
    One level (the driver reads the whole sample) and two (it reads at most 100 rows of the ~560). With
    ``lookup``, two levels with the coarse-then-fine lookup (dedup_clusters.LOOKUP_FROM lowered: the part
    tasks and the load estimate look each vector up among the fine clusters of its 4 nearest coarse
    clusters of 6 only; structureless 768-d vectors, the lookup's hardest case: with 3 of
    6 probed one pair of the pool without the group is missed)."""
    if spark:
        pytest.importorskip("pyspark")
    root, x, sha, scores = grouped
    if not with_group:  # the same pool with the group's rows spread apart again
        x = x.copy()
        x[GROUP] = planted(600, seed=2)[0][GROUP]
        write_parts(tmp_path / "parts", x, sha, scores, per_part=50)
        root = tmp_path
    monkeypatch.setattr(dedup, "TRAIN_PER_CENTROID", 10)
    monkeypatch.setattr(dedup_near, "ROWS_PER_TASK", 96)
    if lookup:  # the plan (built here, on the driver) carries the lookup to the tasks
        monkeypatch.setattr(dedup_clusters, "LOOKUP_FROM", 0)
        monkeypatch.setattr(dedup_clusters, "COARSE_PROBES", 4)
    cfg = DedupConfig(decontaminate=False, flat_max=50, **({"driver_sample": driver_sample} if driver_sample
                                                              else {}))
    engine = SparkEngine(2) if spark else LocalEngine(2)
    try:
        stats = run(engine, root, cfg, tmp_path)
    finally:
        engine.close()
    near = stats["near_tasks"]
    assert near["target"] == 96 and near["largest"] <= 2 * 96, near
    if driver_sample:  # two levels ran: the driver read at most the cap of a larger sample
        assert near["sample"] > 500 and 0 < near["driver_rows"] <= driver_sample and near["coarse"] > 1, near
        # with the lookup: each vector searched among the fine clusters of fewer than all coarse ones
        probes = 4 if lookup else 0
        assert near["coarse_probes"] == probes and near["coarse"] > probes, near
    else:
        assert near["driver_rows"] == near["sample"] > 500 and near["coarse"] == 1, near
    assert np.array_equal(kept(tmp_path / "k"), reference_keep(x, sha, scores, cfg))
    cores = tmp_path / "w" / "near-core"
    if with_group:
        # the group's 150 rows (less its exact copies) became one core: all but its best row dropped, and
        # none of the ~11k pairs inside it was listed
        group_kept = kept(tmp_path / "k")[GROUP]
        assert group_kept.sum() == 1
        assert cores.is_dir() and any(cores.iterdir())
        assert near["pairs"] < 500
    else:
        assert not cores.exists()
    assert stats["dropped"]["near_dup"] > 0


def run(engine, root, cfg, tmp_path):
    from curation.dedup_parts import run_dedup

    return run_dedup(engine, list_parts(root / "parts"), cfg, tmp_path / "w", tmp_path / "k", None)


def test_resolve_on_the_engine_equals_the_rule_over_the_whole_graph(tmp_path, monkeypatch):
    """Chains (several label rounds), stars and pairs found twice, spread over several buckets: the losers
    are those of keep_best_of_neighbours over every pair at once."""
    rng = np.random.default_rng(0)
    keys = np.sort(rng.choice(1 << 40, 3000, replace=False)).astype(np.int64)
    score = rng.random(3000)
    score[5] = score[6]  # a tie: the lower key wins
    chain = np.arange(0, 40)
    a = np.r_[chain[:-1], rng.integers(40, 3000, 1500), np.full(50, 900)]
    b = np.r_[chain[1:], rng.integers(40, 3000, 1500), np.arange(1000, 1050)]
    a, b = a[a != b], b[a != b]
    files = []
    for i, part in enumerate(np.array_split(np.arange(len(a)), 4)):
        sel = np.r_[part, part[:20]]  # some pairs in two files (met in two clusters)
        path = tmp_path / f"pairs-{i}.npz"
        np.savez(path, a=keys[a[sel]], b=keys[b[sel]], sa=score[a[sel]], sb=score[b[sel]])
        files.append(path)
    monkeypatch.setattr(dedup_resolve, "PAIRS_PER_TASK", 500)
    engine = LocalEngine(1)
    loser_files, dropped, rounds = dedup_resolve.resolve_pairs(engine, files, len(a) + 80, tmp_path / "r")
    got = np.sort(np.concatenate([np.load(p) for p in loser_files]))
    i, j = dedup.unique_pairs([(a, b)])
    want = keys[~dedup.keep_best_of_neighbours(len(keys), i, j, score)]
    want = want[np.isin(want, keys[np.r_[a, b]])]
    assert np.array_equal(got, np.sort(want)) and dropped == len(want)
    assert rounds > 5  # the chain needed many rounds: the loop ran until no label changed
    assert len(list((tmp_path / "r").glob("adj-*.npz"))) > 1


def test_driver_sample_read_up_to_the_cap(tmp_path):
    """The driver's subsample files read in task order, the last one only up to the cap: 120 rows of 150
    are the first 120 of their concatenation, and the file past the cap is not opened."""
    rows = [np.full((50, 4), i, np.float32) + np.arange(50)[:, None] for i in range(3)]
    for i, r in zip([0, 2, 3], rows, strict=True):  # task 1 drew no row
        save(str(tmp_path / f"driver-{i:08d}.npy"), r)
    (tmp_path / f"driver-{4:08d}.npy").write_bytes(b"not an array: never read")
    got = dedup_fine.read_driver_sample(str(tmp_path), [50, 0, 50, 50, 7], 120)
    assert np.array_equal(got, np.concatenate([rows[0], rows[1], rows[2][:20]]))


def test_a_lone_sample_row_is_no_core():
    """Where one held-out row stands for more than a core's share of a task (past ~1e9 rows), a core still
    needs two sample rows inside its radius: unrelated rows make none, two copies of one image make one."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sends = (np.arange(50), np.zeros(50, np.int64))
    core_min = dedup_clusters.core_similarity(0.9)
    assert dedup_clusters.find_cores(x, sends, np.array([0]), 1300.0, 4096, core_min) == []
    x[7] = x[3]
    cores = dedup_clusters.find_cores(x, sends, np.array([0]), 1300.0, 4096, core_min)
    assert len(cores) == 1 and float(cores[0] @ x[3]) > 0.999


def test_two_level_lookup_finds_the_nearest_cluster():
    """The coarse-then-fine lookup (Clusters.assign with coarse centroids, as dedup_fine builds them) on a
    clustered 64-d set (vectors around 2,048 sub-topics under 64 topics, cosine ~0.85 to their sub-topic):
    ~8,200 fine centroids (LOOKUP_FROM) in 91 coarse clusters. Each vector is sent only to fine clusters
    of its COARSE_PROBES = 6 nearest coarse clusters, and its nearest cluster is the search over every
    centroid's for >= 99% of the vectors (measured: all 20,000, and every vector's whole send list
    the same; benchmarks/RESULTS.md "Curation: two-level cluster lookup" has other sizes and a noisier
    set, where they differ)."""
    rng = np.random.default_rng(0)

    def unit(v):
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    topics = unit(rng.standard_normal((64, 64)))
    centres = unit(np.repeat(topics, 32, axis=0) + 0.8 * unit(rng.standard_normal((2048, 64))))

    def draw(n):
        return unit(centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, 64)) * 0.6 / 8)

    k = dedup_clusters.LOOKUP_FROM
    g = math.ceil(math.sqrt(k))
    x = draw(10 * k)
    coarse = dedup_clusters.train_clusters(x, len(x), False, 1, k=g)
    _, group, nearest = coarse.assign(x)
    group = group[nearest]
    fine = [dedup_clusters.spherical_kmeans(x[group == j], math.ceil(k * (group == j).mean()), j)
            for j in range(g) if (group == j).any()]
    clusters = dedup_clusters.two_level(coarse.centroids, fine, None, None)
    assert clusters.coarse is not None and len(clusters.centroids) >= k
    q = draw(20_000)
    row, cluster, nearest = clusters.assign(q)
    _, want_cluster, want_nearest = replace(clusters, coarse=None).assign(q)
    assert np.array_equal(row[nearest], np.arange(len(q)))  # one nearest cluster per vector
    # every cluster a vector is sent to is a fine cluster of one of its COARSE_PROBES nearest coarse ones
    sims, p = q @ clusters.coarse.T, dedup_clusters.COARSE_PROBES
    probed_min = -np.partition(-sims, p - 1, axis=1)[:, p - 1]  # each vector's p-th nearest coarse
    owner = np.searchsorted(clusters.coarse_starts, cluster, side="right") - 1
    assert (sims[row, owner] >= probed_min[row] - 1e-5).all()
    same = (cluster[nearest] == want_cluster[want_nearest]).mean()
    assert same >= 0.99, same
