"""Result files of `openaim eval` (all written atomically):

<eval_dir>/results/<checkpoint-name>/<benchmark>.json   one record per checkpoint x benchmark
<eval_dir>/results.csv                                  one row per checkpoint x benchmark x probe
<eval_dir>/missing.json                                 benchmarks not on disk and how to get them
<eval_dir>/failed.json                                  benchmarks on disk that could not be read, and why
<eval_dir>/run_info.json                                config, torch version, device, wall time
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json, atomic_write_text

# The checkpoint name of the random-weights baseline (evaluation.random_baseline) in every result file.
RANDOM_INIT = "random-init"

CSV_COLUMNS = [
    "checkpoint",
    "step",
    "benchmark",
    "probe",
    "top1",
    "top5",
    "mean_per_class_recall",
    "lr",
    "weight_decay",
    "n_train",
    "n_test",
]


def result_path(eval_dir: Path, checkpoint: str, benchmark: str) -> Path:
    return Path(eval_dir) / "results" / checkpoint / f"{benchmark}.json"


def write_result(eval_dir: Path, record: dict[str, Any]) -> Path:
    path = result_path(eval_dir, record["checkpoint"], record["benchmark"])
    atomic_write_json(path, record)
    return path


def read_result(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_results(eval_dir: Path) -> list[dict[str, Any]]:
    """Every per-benchmark record under <eval_dir>/results (for the report)."""
    root = Path(eval_dir) / "results"
    records = [read_result(p) for p in sorted(root.glob("*/*.json"))] if root.is_dir() else []
    return [r for r in records if r is not None]


def csv_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        for probe, res in sorted(rec.get("probes", {}).items()):
            rows.append(
                {
                    "checkpoint": rec["checkpoint"],
                    "step": rec.get("step"),
                    "benchmark": rec["benchmark"],
                    "probe": probe,
                    **{k: res.get(k) for k in CSV_COLUMNS[4:9]},
                    "n_train": rec.get("n_train"),
                    "n_test": rec.get("n_test"),
                }
            )
    rows.sort(
        key=lambda r: (
            r["checkpoint"],
            r["step"] if r["step"] is not None else -1,
            r["benchmark"],
            r["probe"],
        )
    )
    return rows


def write_results_csv(eval_dir: Path, records: Iterable[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(records):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    path = Path(eval_dir) / "results.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def write_missing(eval_dir: Path, entries: list[dict[str, str]]) -> Path:
    """[{benchmark, title, path, how_to_get}]; an empty list when everything was found."""
    path = Path(eval_dir) / "missing.json"
    atomic_write_json(path, entries)
    return path


def write_failed(eval_dir: Path, entries: list[dict[str, str]]) -> Path:
    """[{benchmark, title, path, checkpoint, reason}]; an empty list when every benchmark was read."""
    path = Path(eval_dir) / "failed.json"
    atomic_write_json(path, entries)
    return path
