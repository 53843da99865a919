"""The two-level cluster lookup of the near-copy search (curation.dedup_clusters.Clusters.assign with coarse
centroids) against the search over every fine centroid, on a clustered synthetic set.

    .venv/bin/python benchmarks/curation_cluster_lookup.py [--vectors 100000] [--centroids 2000 10000]
        [--probes 1 2 3 4 6 8] [--no-write]

The set: unit 64-d vectors (the PCA space the clusters live in past 50k survivors) drawn around 2,048
sub-topic directions, 32 under each of 64 topics (a sub-topic is its topic plus a random direction of
weight 0.8, a vector its sub-topic plus Gaussian noise of norm ~1.2: cosine ~0.6 to its sub-topic).
The clusters are trained as curation.dedup_fine trains them: ~sqrt(k) coarse centroids on 65,536 rows,
then each coarse cluster's training rows (dedup.TRAIN_PER_CENTROID per fine centroid in all) into ~k x its
share fine ones. ``--vectors`` fresh vectors are then assigned (one thread, as in a part task) against
every fine centroid (exhaustive) and with the lookup at each coarse probe count. Figures: seconds,
exhaustive / lookup seconds, the share of vectors whose nearest cluster is the exhaustive one's, the share
whose whole send list ((cluster, nearest) pairs) is the same, the share of the exhaustive sends the
lookup makes. Written to benchmarks/RESULTS.md under "## Curation: two-level cluster lookup".
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.results_md import run_line, write_section

SECTION = "## Curation: two-level cluster lookup"
DIM = 64
TOPICS, SUBTOPICS = 64, 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    """[n, DIM] unit vectors around random sub-topic centres, Gaussian noise of norm ~``noise``."""
    pick = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * (noise / np.sqrt(DIM))
    return unit(centres[pick] + noise)


def train(x: np.ndarray, k: int, driver_rows: int):
    """Two-level clusters of ``x`` as curation.dedup_fine trains them (no PCA: ``x`` is 64-d already)."""
    from curation import dedup
    from curation.dedup_clusters import spherical_kmeans, train_clusters, two_level

    coarse_k = int(np.ceil(np.sqrt(k)))
    coarse = train_clusters(x[:driver_rows], len(x), False, 1, k=coarse_k)
    dedup.import_faiss().omp_set_num_threads(1)  # the machine is shared: one core
    _, group, nearest = coarse.assign(x)
    group = group[nearest]
    fine = []
    for j in range(len(coarse.centroids)):
        rows = x[group == j]
        k_j = int(max(1, min(round(k * len(rows) / len(x)), len(rows) // dedup.TRAIN_PER_CENTROID)))
        fine.append(np.ascontiguousarray(spherical_kmeans(rows, k_j, seed=j), np.float32) if len(rows)
                    else np.zeros((0, DIM), np.float32))
    return two_level(coarse.centroids, fine, None, None)


def sends(assigned, n: int) -> tuple[np.ndarray, list[set]]:
    """(nearest cluster of each vector, each vector's set of (cluster, nearest))."""
    row, cluster, nearest = assigned
    best = np.full(n, -1, np.int64)
    best[row[nearest]] = cluster[nearest]
    lists: list[set] = [set() for _ in range(n)]
    for r, c, m in zip(row.tolist(), cluster.tolist(), nearest.tolist(), strict=True):
        lists[r].add((c, m))
    return best, lists


def timed(clusters, q: np.ndarray):
    started = time.perf_counter()
    out = clusters.assign(q)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--centroids", type=int, nargs="+", default=[2000, 4096, 10_000, 40_000])
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.6, 1.2],
                        help="noise norm around a sub-topic (one table block each)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    from curation import dedup, dedup_clusters

    dedup_clusters.LOOKUP_FROM = 0  # the lookup at every size measured
    rng = np.random.default_rng(0)
    topics = unit(rng.standard_normal((TOPICS, DIM)))
    centres = unit(np.repeat(topics, SUBTOPICS, axis=0)
                   + 0.8 * unit(rng.standard_normal((TOPICS * SUBTOPICS, DIM))))
    table = []
    for noise, k in itertools.product(args.noise, args.centroids):
        q = clustered(args.vectors, rng, centres, noise)
        x = clustered(dedup.TRAIN_PER_CENTROID * k, rng, centres, noise)
        clusters = train(x, k, 65_536)
        exhaustive, t_all = timed(replace(clusters, coarse=None, coarse_starts=None), q)
        want_best, want = sends(exhaustive, len(q))
        total = sum(len(s) for s in want)
        for probes in args.probes:
            got, t = timed(replace(clusters, coarse_probes=probes), q)
            best, lists = sends(got, len(q))
            same = sum(a == b for a, b in zip(lists, want, strict=True))
            found = sum(len(a & b) for a, b in zip(lists, want, strict=True))
            table.append(f"| {noise} | {len(clusters.centroids):,} | {len(clusters.coarse)} | {probes} | "
                         f"{t_all:.2f} | {t:.2f} | {t_all / t:.1f} | {(best == want_best).mean():.4f} | "
                         f"{same / len(q):.4f} | {found / total:.4f} |")
            print(table[-1], flush=True)
    text = "\n".join([
        SECTION, "",
        (f"{run_line(__file__, 'one thread')}. The module doc says how the clustered 64-d set and "
         "the clusters are made. "
         f"{args.vectors:,} fresh vectors assigned against every fine centroid (exhaustive) and with the "
         "two-level lookup (the fine centroids of the vector's nearest coarse clusters only); agreement with "
         "the exhaustive assignment: the same nearest cluster, the same whole send list ((cluster, member "
         "or query) pairs), the share of the exhaustive sends made."), "",
        ("| noise | fine centroids | coarse | coarse probes | exhaustive s | lookup s | exhaustive / lookup "
         "| same nearest | same sends | sends made |"),
        "|---|---|---|---|---|---|---|---|---|---|", *table, ""])
    print(text)
    if not args.no_write:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
