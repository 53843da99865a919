"""The benchmark table: rows = the benchmarks with results, columns = (run, checkpoint, probe), best per row
and probe in bold. Benchmarks without results are listed in the Missing/Failed table instead."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from evaluation.results import RANDOM_INIT
from openaim.report.document import Table
from openaim.report.run_data import BenchmarkInfo, ResultRow, RunData

PROBES = ("attentive", "linear")
DASH = "—"


@dataclass(frozen=True)
class Column:
    run: RunData
    checkpoint: str
    probe: str
    shared: bool = False  # the same random-init numbers in every run: shown once, not per run

    def header(self, several_runs: bool) -> str:
        if self.shared:
            name = f"{self.checkpoint} (every run)"
        else:
            name = f"{self.run.label}: {self.checkpoint}" if several_runs else self.checkpoint
        return f"{name} · {self.probe}"

    def value(self, benchmark: str) -> float | None:
        return self.run.top1(self.checkpoint, benchmark, self.probe)


def fmt(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def probes_present(runs: list[RunData]) -> list[str]:
    found = {r.probe for run in runs for r in run.rows}
    return [p for p in PROBES if p in found] + sorted(found - set(PROBES))


def _random_results(run: RunData, probe: str) -> dict[str, float | None]:
    return {r.benchmark: r.top1 for r in run.rows if r.checkpoint == RANDOM_INIT and r.probe == probe}


def table_columns(runs: list[RunData]) -> list[Column]:
    """Attentive columns of every run's main checkpoints, then the linear ones (so each probe reads as a
    block). A random-init column whose numbers another run already shows (same architecture and seed, so
    the same trunk) appears once."""
    columns: list[Column] = []
    for probe in probes_present(runs):
        shown_random: list[dict[str, float | None]] = []
        randoms = [_random_results(run, probe) for run in runs]
        for run, random_results in zip(runs, randoms, strict=True):
            for ckpt in run.main_checkpoints():
                if not any(r.checkpoint == ckpt and r.probe == probe for r in run.rows):
                    continue
                if ckpt == RANDOM_INIT:
                    if random_results in shown_random:
                        continue
                    shown_random.append(random_results)
                    shared = len(runs) > 1 and randoms.count(random_results) == len(runs)
                    columns.append(Column(run, ckpt, probe, shared))
                else:
                    columns.append(Column(run, ckpt, probe))
    return columns


def table_benchmarks(catalog: list[BenchmarkInfo], runs: list[RunData]) -> list[BenchmarkInfo]:
    """The benchmarks some run has results for, in the catalog's order (the paper's first)."""
    with_results = {b for run in runs for b in run.benchmarks()}
    rows = [b for b in catalog if b.name in with_results]
    known = {b.name for b in catalog}
    rows += [BenchmarkInfo(n, n, "generic", "", "") for n in sorted(with_results - known)]
    return rows


def _best(values: list[float | None], idx: list[int]) -> set[int]:
    present = [values[i] for i in idx if values[i] is not None]
    if len(present) < 2:
        return set()
    top = max(present)
    return {i for i in idx if values[i] is not None and abs(values[i] - top) < 1e-9}


def benchmark_table(catalog: list[BenchmarkInfo], runs: list[RunData]) -> Table:
    columns = table_columns(runs)
    several = len(runs) > 1
    headers = ["benchmark"] + [c.header(several) for c in columns]
    rows, bold = [], set()
    benches = table_benchmarks(catalog, runs)
    grid = [[c.value(b.name) for c in columns] for b in benches]
    by_probe = {p: [j for j, c in enumerate(columns) if c.probe == p] for p in {c.probe for c in columns}}
    for i, (bench, values) in enumerate(zip(benches, grid, strict=True)):
        rows.append([bench.title] + [fmt(v) for v in values])
        for idx in by_probe.values():
            bold |= {(i, j + 1) for j in _best(values, idx)}
    footer = 0
    if columns:
        # Averages are comparable only over the same benchmarks: use those every column has.
        common = [values for values in grid if all(v is not None for v in values)]
        if common:
            means = [sum(col) / len(common) for col in zip(*common, strict=True)]
            label = f"average over the {len(common)} benchmark(s) with every column"
        else:
            means = [_mean([v for v in col if v is not None]) for col in zip(*grid, strict=True)]
            label = "average over each column's own benchmarks"
        i = len(rows)
        rows.append([label] + [fmt(m) for m in means])
        for idx in by_probe.values():
            bold |= {(i, j + 1) for j in _best(means, idx)}
        footer = 1
    caption = (
        f"Top-1 accuracy (%) of probes on frozen trunks; best per row and probe in bold; {DASH} = no result."
    )
    return Table(headers, rows, bold, caption, footer_rows=footer, text_columns=1)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pretrained_checkpoint(run: RunData) -> str | None:
    """The run's headline checkpoint: its '-final' one, else its first main checkpoint that is not
    random-init."""
    names = [n for n in run.main_checkpoints() if n != RANDOM_INIT]
    finals = [n for n in names if n.endswith("-final") or n == "final"]
    return (finals or names or [None])[0]


class Gap(NamedTuple):
    """Pretrained minus random-init mean top-1, with its standard error from the test-set sizes."""

    points: float
    benchmarks: int
    probe: str
    checkpoint: str
    stderr: float | None  # None when a result lacks its test-set size


def pretrained_vs_random(run: RunData) -> Gap | None:
    """The gap of the first probe kind that both the pretrained and the random-init trunk have results for.

    The standard error treats each top-1 as a binomial proportion over its test set (the two trunks are
    scored on the same images, so this errs on the wide side): SE = sqrt(sum_b var_a + var_r) / k.
    """
    ckpt = pretrained_checkpoint(run)
    if ckpt is None or RANDOM_INIT not in run.checkpoints():
        return None
    for probe in probes_present([run]):
        pairs = [
            (a, b)
            for bench in run.benchmarks()
            if (a := run.row(ckpt, bench, probe)) is not None
            and a.top1 is not None
            and (b := run.row(RANDOM_INIT, bench, probe)) is not None
            and b.top1 is not None
        ]
        if pairs:
            gap = sum(a.top1 - b.top1 for a, b in pairs) / len(pairs)
            variances = [_binomial_variance(r) for a, b in pairs for r in (a, b)]
            stderr = None if None in variances else math.sqrt(sum(variances)) / len(pairs)
            return Gap(gap, len(pairs), probe, ckpt, stderr)
    return None


def _binomial_variance(row: ResultRow) -> float | None:
    """Variance (in points squared) of a top-1 measured on row.n_test images."""
    if not row.n_test or row.top1 is None:
        return None
    p = row.top1 / 100.0
    return 1e4 * p * (1 - p) / row.n_test
