"""Reading a run's outputs for the report: eval results, missing and failed benchmarks, the eval run's info
(config, torch, device), stage wall times, training metrics and the curation manifest, into a RunData
(openaim.report.run_data); this run's curation scores and sample pairs: openaim.report.curation_samples.

Every input may be absent or damaged (a stage not run yet, a killed run): readers never raise for that,
they return what they could read and add a note saying what was not there, and the report shows the note.
Accuracies are shown in percent. `openaim eval` writes fractions in [0, 1]; a results.csv whose accuracy
values are all <= 1 is read as fractions, otherwise as percent.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from evaluation.benchmarks.registry import BENCHMARKS, PAPER_BENCHMARKS, benchmark_root, how_to_get
from openaim.report.run_data import BenchmarkInfo, ResultRow, RunData
from shared.errors import InputError
from shared.stage_cache import hash_file

ACCURACY_COLUMNS = ("top1", "top5", "mean_per_class_recall")


# ----------------------------------------------------------------------------------------- readers


def as_number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _int(text: Any) -> int | None:
    value = as_number(text)
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
    accuracies = [v for r in raw for c in ACCURACY_COLUMNS if (v := as_number(r.get(c))) is not None]
    scale = 100.0 if accuracies and max(accuracies) <= 1.0 else 1.0  # fractions -> percent

    def pct(text: Any) -> float | None:
        value = as_number(text)
        return value * scale if value is not None else None

    rows = []
    for r in raw:
        if not r.get("checkpoint") or not r.get("benchmark"):
            continue
        rows.append(
            ResultRow(
                checkpoint=r["checkpoint"],
                step=_int(r.get("step")),
                benchmark=r["benchmark"],
                probe=(r.get("probe") or "attentive").strip(),
                top1=pct(r.get("top1")),
                top5=pct(r.get("top5")),
                mean_per_class_recall=pct(r.get("mean_per_class_recall")),
                lr=as_number(r.get("lr")),
                weight_decay=as_number(r.get("weight_decay")),
                n_train=_int(r.get("n_train")),
                n_test=_int(r.get("n_test")),
            )
        )
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


def read_missing(eval_dir: Path, notes: list[str], name: str = "missing.json") -> list[dict]:
    entries = _read_json(eval_dir / name, notes, "benchmark list")
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and e.get("benchmark")]


def read_stage_seconds(root: Path | None, notes: list[str]) -> dict[str, float]:
    """{stage: seconds} from <root>/pipeline.json (`openaim run` writes it; lone stages do not)."""
    record = _read_json(root / "pipeline.json", notes, "pipeline record") if root is not None else None
    seconds = record.get("seconds") if isinstance(record, dict) else None
    if not isinstance(seconds, dict):
        return {}
    return {k: float(v) for k, v in seconds.items() if as_number(v) is not None}


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
        if (
            isinstance(item, dict)
            and as_number(item.get("step")) is not None
            and as_number(item.get("loss")) is not None
        ):
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
    manifest = _read_json(path, notes, "curation manifest")
    if not isinstance(manifest, dict):
        return None, None
    return manifest, hash_file(path)


def _count(steps: dict, name: str, key: str) -> int | None:
    counts = steps.get(name)
    return _int(counts.get(key)) if isinstance(counts, dict) else None


def funnel(manifest: dict | None) -> list[tuple[str, int]]:
    """(label, pairs) along the curation chain; each count is a subset of the one before, so the funnel
    never grows. Dedup and safety are two independent masks over the scored pairs (see parallel_filters):
    the chain shows the pairs that pass both."""
    steps = (manifest or {}).get("steps")
    if not isinstance(steps, dict):
        return []
    chain = [
        ("links found", _count(steps, "extract", "in")),
        ("after extract", _count(steps, "extract", "out")),
        ("downloaded", _count(steps, "download", "out")),
        ("scored", _count(steps, "score", "out") or _count(steps, "dedup", "in")),
        ("pass dedup and safety", _count(steps, "select", "in")),
        ("selected", _count(steps, "select", "out") or _int((manifest or {}).get("kept"))),
    ]
    return [(label, n) for label, n in chain if n is not None]


def parallel_filters(manifest: dict | None) -> list[tuple[str, int, int]]:
    """(filter, pairs it keeps, pairs it looked at) for the masks applied side by side to the scored pairs."""
    steps = (manifest or {}).get("steps")
    if not isinstance(steps, dict):
        return []
    out = []
    for name in ("dedup", "safety"):
        kept, seen = _count(steps, name, "out"), _count(steps, name, "in")
        if kept is not None and seen is not None:
            out.append((name, kept, seen))
    return out


def load_run(
    label: str, eval_dir: Path, training_dir: Path, curation_dir: Path, root: Path | None = None
) -> RunData:
    run = RunData(label=label, root=root)
    run.rows = read_results_csv(eval_dir / "results.csv", run.notes)
    run.details = read_details(eval_dir, run.notes)
    run.missing = read_missing(eval_dir, run.notes)
    run.failed = read_missing(eval_dir, run.notes, "failed.json")
    info = _read_json(eval_dir / "run_info.json", run.notes, "eval run info")
    run.run_info = info if isinstance(info, dict) else None
    run.stage_seconds = read_stage_seconds(root, run.notes)
    run.metrics = read_metrics(training_dir / "metrics.jsonl", run.notes)
    run.manifest, run.manifest_hash = read_manifest(curation_dir / "manifest.json", run.notes)
    return run


def load_compare_run(directory: str | Path) -> RunData:
    """A run named in report.compare: a workdir (eval/, training/, curation/) or an archived
    history/run-NNN."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise InputError(f"report.compare: {root} is not a directory (give a run's workdir)")
    label = f"{root.parent.name}/{root.name}" if root.parent.name == "history" else root.name
    eval_dir = root / "eval" if (root / "eval").is_dir() or not (root / "results.csv").is_file() else root
    return load_run(label, eval_dir, root / "training", root / "curation", root=root)


# ------------------------------------------------------------------------------------ benchmarks


def benchmark_catalog(data_root: str | Path, web_dir: Path) -> list[BenchmarkInfo]:
    """The paper's 15 benchmarks then the demo ones, from the registry, with where each is looked for."""
    names = list(PAPER_BENCHMARKS) + [n for n in BENCHMARKS if n not in PAPER_BENCHMARKS]
    return [BenchmarkInfo(name, BENCHMARKS[name].title, BENCHMARKS[name].kind,
                          str(benchmark_root(BENCHMARKS[name], data_root, web_dir)),
                          how_to_get(BENCHMARKS[name], data_root)) for name in names]
