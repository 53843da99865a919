"""Near-copy recall of the dedup step against the exact search, at 1e5 rows with a planted near-copy group.

    .venv/bin/python benchmarks/curation_near_recall.py [--parts 1000] [--rows 100] [--group 2000 10000]
        [--driver-sample ROWS] [--lookup-from CENTROIDS]

A synthetic pool (benchmarks/synthetic_parts.make_pool: 32-d copy descriptors, every tenth row an exact
copy, every tenth another a near copy at cosine ~0.99, the first ``--group`` rows near copies of one
image; one run per group size) runs through the dedup step (curation.dedup_parts on the local engine,
2 worker processes, dedup.flat_max = 1,000 so the near-copy search is cluster-partitioned with bounded
tasks; ``--driver-sample`` below the sample's rows trains the clusters in two levels, curation.dedup_fine;
``--lookup-from`` at or below their fine clusters looks each vector up among the fine clusters of its
nearest coarse ones, curation.dedup_clusters.LOOKUP_FROM)
and through the exact reference (tests/reference_dedup: exact copies by digest, then every pair at
the threshold by a flat index and the same keep rule) on the same stored descriptors. Recall: the share of
the reference's near losers that the step drops as near copies; precision: the share of the step's near
losers the reference drops; the near-copy search's "assign + compare" seconds are read from its log
line. Figures go to benchmarks/RESULTS.md under "## Curation: near-copy recall".
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from benchmarks.results_md import run_line, write_section
from benchmarks.synthetic_parts import make_pool
from shared.config.curation import DRIVER_SAMPLE

SECTION = "## Curation: near-copy recall"
TASK_PARTS = 100  # curation.task_bytes set to this many parts' bytes (benchmarks/curation_parts_scale.py)


class _AssignSeconds(logging.Handler):
    """The "s assign + compare" figure of curation.dedup_near.near_copies's log line."""

    value = float("nan")

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"([0-9.]+) s assign \+ compare", record.getMessage())
        if found:
            self.value = float(found.group(1))


def step_losers(root: Path, parts, workers: int, driver_sample: int) -> tuple[np.ndarray, dict, float]:
    """(near losers mask over the pool's rows, the step's stats, wall seconds) of the partitioned step."""
    import pyarrow.parquet as pq

    from curation.dedup_parts import run_dedup
    from curation.engine import LocalEngine
    from shared.config.curation import DedupConfig

    engine = LocalEngine(workers, scratch_root=root)
    task_bytes = TASK_PARTS * int(np.median([p.bytes for p in parts]))
    seconds = _AssignSeconds()
    logging.getLogger("openaim.curation").addHandler(seconds)
    logging.getLogger("openaim.curation").setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        cfg = DedupConfig(flat_max=1000, decontaminate=False, driver_sample=driver_sample)
        stats = run_dedup(engine, parts, cfg, root / "work", root / "keep", None, task_bytes)
    finally:
        engine.close()
        logging.getLogger("openaim.curation").removeHandler(seconds)
    wall = time.perf_counter() - started
    stats["near_tasks"]["assign_compare_s"] = seconds.value
    reasons = [pq.read_table(root / "keep" / f"{p.stem}.parquet").column("reason").to_pylist() for p in parts]
    return np.array([r == "near_dup" for rs in reasons for r in rs]), stats, wall


def reference_losers(parts, threshold: float) -> tuple[np.ndarray, float]:
    """(near losers mask, wall seconds) of the exact single-process rule on the stored descriptors."""
    from curation.parts import read_part
    from tests.reference_dedup import exact_duplicates, near_duplicates

    started = time.perf_counter()
    data = [read_part(p.path, ("sha256", "score", "copy")) for p in parts]
    sha = [s for d in data for s in d["sha256"]]
    scores = np.concatenate([d["score"] for d in data])
    copy = np.concatenate([d["copy"] for d in data])
    copy /= np.linalg.norm(copy, axis=2, keepdims=True)
    survivors = np.flatnonzero(exact_duplicates(sha, scores))
    keep = near_duplicates(copy[survivors, 0], scores[survivors], threshold, index="flat",
                           views=[copy[survivors, v] for v in range(1, copy.shape[1])])
    losers = np.zeros(len(scores), bool)
    losers[survivors[~keep]] = True
    return losers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100, help="rows per part")
    parser.add_argument("--group", type=int, nargs="+", default=[2000, 10_000],
                        help="planted near-copy group sizes, one run each (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--driver-sample", type=int, default=DRIVER_SAMPLE,
                        help="dedup.driver_sample: most sample rows the driver reads (below the sample's "
                             "rows: two-level clusters)")
    parser.add_argument("--lookup-from", type=int, default=None,
                        help="dedup_clusters.LOOKUP_FROM: fine clusters from which the two-level lookup "
                             "is used (default: the module's)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    from curation import dedup_clusters
    from curation.parts import list_parts
    from shared.config.curation import DedupConfig

    if args.lookup_from is not None:  # read on the driver (this process) when the plan is built
        dedup_clusters.LOOKUP_FROM = args.lookup_from

    rows, worst = [], 1.0
    for group in args.group:
        base = Path(tempfile.mkdtemp(prefix="near-recall-"))
        try:
            make_pool(base, args.parts, args.rows, group=group, tars=False)
            parts = list_parts(base / "scores" / "parts")
            got, stats, step_wall = step_losers(base, parts, args.workers, args.driver_sample)
            want, ref_wall = reference_losers(parts, DedupConfig().near_threshold)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        both = int((got & want).sum())
        recall, precision = both / max(1, want.sum()), both / max(1, got.sum())
        worst = min(worst, recall)
        near = stats["near_tasks"]
        rows.append(f"| {group:,} | {int(want.sum()):,} | {int(got.sum()):,} | {both:,} | {recall:.4f} | "
                    f"{precision:.4f} | {step_wall:.1f} | {ref_wall:.1f} | "
                    f"{near['largest'] / near['target']:.2f} | {near['pairs']:,} | {near['sample']:,} | "
                    f"{near['driver_rows']:,} | {near['coarse']} | {near.get('coarse_probes', 0)} | "
                    f"{near['assign_compare_s']:.1f} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        SECTION, "",
        (f"{run_line(__file__)}. {args.parts * args.rows:,} rows ({args.parts:,} parts of "
         f"{args.rows}, 32-d copy "
         "descriptors) with a planted group of near copies of one image; the dedup step on the local engine "
         f"({args.workers} workers, dedup.flat_max = 1,000: clusters; dedup.driver_sample = "
         f"{args.driver_sample:,}: coarse clusters > 1 = two levels; dedup_clusters.LOOKUP_FROM = "
         f"{dedup_clusters.LOOKUP_FROM:,}: coarse probes > 0 = the two-level lookup) against the exact "
         "search (tests/reference_dedup, flat index, the same keep rule) on the same stored "
         "descriptors."), "",
        ("| group | near losers: reference | step | both | recall | precision | step wall s | "
         "reference wall s | largest near task / target | pairs listed | sample rows | rows the driver read "
         "| coarse clusters | coarse probes | assign + compare s |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(text)
    if not args.no_write:
        write_section(SECTION, text)
    print(f"recall={worst:.4f} (the lowest)")


if __name__ == "__main__":
    main()
