"""Reading a run's outputs for the report: eval results, missing benchmarks, training metrics, curation manifest.

Every input may be absent or damaged (a stage not run yet, a killed run): readers never raise for that,
they return what they could read and add a note saying what was not there, and the report shows the note.
Accuracies are shown in percent. `openaim eval` writes fractions in [0, 1]; a results.csv whose accuracy
values are all <= 1 is read as fractions, otherwise as percent.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.report.references import FALLBACK_PAPER_BENCHMARKS

RANDOM_INIT = "random-init"
_STEP_SUFFIX = re.compile(r"-step_(\d+)$")
ACCURACY_COLUMNS = ("top1", "top5", "mean_per_class_recall")
# Curation steps in pipeline order; the funnel shows how many items are left after each.
FUNNEL_STEPS = ("extract", "download", "score", "dedup", "safety", "select")


@dataclass(frozen=True)
class ResultRow:
    checkpoint: str
    step: int | None
    benchmark: str
    probe: str  # "attentive" | "linear"
    top1: float | None  # percent
    top5: float | None
    mean_per_class_recall: float | None
    lr: float | None
    weight_decay: float | None
    n_train: int | None
    n_test: int | None


@dataclass(frozen=True)
class BenchmarkInfo:
    name: str
    title: str
    kind: str  # "paper" | "demo" | "generic"
    path: str  # where the data is expected
    how_to_get: str


@dataclass
class RunData:
    """Everything the report shows about one run (this one, or one named in report.compare)."""

    label: str
    root: Path | None
    rows: list[ResultRow] = field(default_factory=list)
    details: dict[tuple[str, str], dict] = field(default_factory=dict)  # (checkpoint, benchmark) -> record
    missing: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    manifest: dict | None = None
    manifest_hash: str | None = None
    notes: list[str] = field(default_factory=list)  # inputs that were absent or unreadable

    def checkpoints(self) -> list[str]:
        """Checkpoint names, pretrained final ones first, then random-init, then intermediates by step."""
        names = {r.checkpoint for r in self.rows}
        return sorted(names, key=lambda n: (is_intermediate(n), n == RANDOM_INIT, step_of(n, self) or 0, n))

    def main_checkpoints(self) -> list[str]:
        """The checkpoints of the main table: all but the intermediate ones (unless there is nothing else)."""
        names = self.checkpoints()
        return [n for n in names if not is_intermediate(n)] or names

    def row(self, checkpoint: str, benchmark: str, probe: str) -> ResultRow | None:
        for r in self.rows:
            if (r.checkpoint, r.benchmark, r.probe) == (checkpoint, benchmark, probe):
                return r
        return None

    def top1(self, checkpoint: str, benchmark: str, probe: str) -> float | None:
        r = self.row(checkpoint, benchmark, probe)
        return r.top1 if r is not None else None

    def benchmarks(self) -> list[str]:
        return sorted({r.benchmark for r in self.rows})


def is_intermediate(checkpoint: str) -> bool:
    return _STEP_SUFFIX.search(checkpoint) is not None


def step_of(checkpoint: str, run: RunData) -> int | None:
    """The pretraining step of a checkpoint: the CSV's step column, else the name's -step_N suffix."""
    for r in run.rows:
        if r.checkpoint == checkpoint and r.step is not None:
            return r.step
    m = _STEP_SUFFIX.search(checkpoint)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------------------- readers

def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(text: Any) -> int | None:
    value = _number(text)
    return int(value) if value is not None else None


def read_results_csv(path: Path, notes: list[str]) -> list[ResultRow]:
    if not path.is_file():
        notes.append(f"no evaluation results ({path} not found: run `openaim eval`)")
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        notes.append(f"{path} is unreadable ({exc})")
        return []
    if raw and not {"checkpoint", "benchmark", "top1"} <= set(raw[0]):
        notes.append(f"{path} lacks the checkpoint/benchmark/top1 columns; ignored")
        return []
    accuracies = [v for r in raw for c in ACCURACY_COLUMNS if (v := _number(r.get(c))) is not None]
    scale = 100.0 if accuracies and max(accuracies) <= 1.0 else 1.0  # fractions -> percent

    def pct(text: Any) -> float | None:
        value = _number(text)
        return value * scale if value is not None else None

    rows = []
    for r in raw:
        if not r.get("checkpoint") or not r.get("benchmark"):
            continue
        rows.append(ResultRow(
            checkpoint=r["checkpoint"], step=_int(r.get("step")), benchmark=r["benchmark"],
            probe=(r.get("probe") or "attentive").strip(), top1=pct(r.get("top1")), top5=pct(r.get("top5")),
            mean_per_class_recall=pct(r.get("mean_per_class_recall")), lr=_number(r.get("lr")),
            weight_decay=_number(r.get("weight_decay")), n_train=_int(r.get("n_train")), n_test=_int(r.get("n_test"))))
    if not rows:
        notes.append(f"{path} has no result rows")
    return rows


def _read_json(path: Path, notes: list[str], what: str) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{what} {path} is unreadable ({type(exc).__name__})")
        return None


def read_details(eval_dir: Path, notes: list[str]) -> dict[tuple[str, str], dict]:
    root = eval_dir / "results"
    details = {}
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
        record = _read_json(path, notes, "result")
        if isinstance(record, dict):
            details[(path.parent.name, path.stem)] = record
    return details


def read_missing(eval_dir: Path, notes: list[str]) -> list[dict]:
    entries = _read_json(eval_dir / "missing.json", notes, "missing-benchmark list")
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and e.get("benchmark")]


def read_metrics(path: Path, notes: list[str]) -> list[dict]:
    """metrics.jsonl lines with a numeric step and loss, sorted by step; a torn last line is skipped."""
    if not path.is_file():
        notes.append(f"no training metrics ({path} not found: run `openaim train`)")
        return []
    out, bad = [], 0
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        notes.append(f"{path} is unreadable ({exc})")
        return []
    for line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            bad += line.strip() != ""
            continue
        if isinstance(item, dict) and _number(item.get("step")) is not None and _number(item.get("loss")) is not None:
            out.append(item)
    if bad:
        notes.append(f"{path}: skipped {bad} unreadable line(s)")
    # a resumed run may log a step twice: keep the last record of each step
    by_step = {int(item["step"]): item for item in out}
    return [by_step[s] for s in sorted(by_step)]


def read_manifest(path: Path, notes: list[str]) -> tuple[dict | None, str | None]:
    if not path.is_file():
        notes.append(f"no curation manifest ({path} not found: run `openaim build-dataset`)")
        return None, None
    from shared.stage_cache import hash_file

    manifest = _read_json(path, notes, "curation manifest")
    if not isinstance(manifest, dict):
        return None, None
    return manifest, hash_file(path)


def funnel(manifest: dict | None) -> list[tuple[str, int]]:
    """(label, items) in pipeline order: the pool size, then how many items are left after each step."""
    if not manifest:
        return []
    steps = manifest.get("steps") or {}
    if not isinstance(steps, dict):
        return []
    order = [s for s in FUNNEL_STEPS if s in steps] + [s for s in steps if s not in FUNNEL_STEPS]
    out: list[tuple[str, int]] = []
    for name in order:
        counts = steps.get(name)
        if not isinstance(counts, dict):
            continue
        if not out and (n := _int(counts.get("in"))) is not None:
            out.append((f"before {name}", n))
        if (n := _int(counts.get("out", counts.get("kept")))) is not None:
            out.append((f"after {name}", n))
    return out


def load_run(label: str, eval_dir: Path, training_dir: Path, curation_dir: Path, root: Path | None = None) -> RunData:
    run = RunData(label=label, root=root)
    run.rows = read_results_csv(eval_dir / "results.csv", run.notes)
    run.details = read_details(eval_dir, run.notes)
    run.missing = read_missing(eval_dir, run.notes)
    run.metrics = read_metrics(training_dir / "metrics.jsonl", run.notes)
    run.manifest, run.manifest_hash = read_manifest(curation_dir / "manifest.json", run.notes)
    return run


def load_compare_run(directory: str | Path) -> RunData:
    """A run named in report.compare: a workdir (eval/, training/, curation/) or an archived history/run-NNN."""
    from shared.errors import InputError

    root = Path(directory).expanduser()
    if not root.is_dir():
        raise InputError(f"report.compare: {root} is not a directory (give a run's workdir)")
    label = f"{root.parent.name}/{root.name}" if root.parent.name == "history" else root.name
    eval_dir = root / "eval" if (root / "eval").is_dir() or not (root / "results.csv").is_file() else root
    return load_run(label, eval_dir, root / "training", root / "curation", root=root)


# ------------------------------------------------------------------------------------ benchmarks

def benchmark_catalog(cfg) -> list[BenchmarkInfo]:
    """The paper's 15 benchmarks then the demo ones, from the registry (or a built-in list if it fails)."""
    try:
        from evaluation.benchmarks.registry import BENCHMARKS, PAPER_BENCHMARKS, benchmark_root
    except Exception:  # noqa: BLE001 - the registry is another stage's code: the report must still write without it
        data_root = Path(cfg.evaluation.data_root)
        return [BenchmarkInfo(n, t, "paper", str(data_root / n), "see docs for the layout")
                for n, t in FALLBACK_PAPER_BENCHMARKS]
    names = list(PAPER_BENCHMARKS) + [n for n in BENCHMARKS if n not in PAPER_BENCHMARKS]
    out = []
    for name in names:
        spec = BENCHMARKS[name]
        try:
            path = str(benchmark_root(spec, cfg))
        except Exception:  # noqa: BLE001 - a spec the root rule cannot place still gets a row
            path = str(Path(cfg.evaluation.data_root) / name)
        out.append(BenchmarkInfo(name, spec.title, spec.kind, path, spec.how_to_get))
    return out
