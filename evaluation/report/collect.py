"""Reading a run's outputs for the report: eval results, missing and failed benchmarks, the eval run's info
(config, torch, device), stage wall times, training metrics, the curation manifest, and (this run only) the
curation's scores and kept/dropped pairs.

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

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.download import iter_pool
from evaluation.benchmarks.registry import BENCHMARKS, PAPER_BENCHMARKS, benchmark_root, how_to_get
from evaluation.results import RANDOM_INIT
from shared.errors import InputError
from shared.stage_cache import hash_file

_STEP_SUFFIX = re.compile(r"-step_(\d+)$")
ACCURACY_COLUMNS = ("top1", "top5", "mean_per_class_recall")
# Stage wall times as shared.pipeline records them in <workdir>/pipeline.json, in pipeline order.
STAGES = ("build-dataset", "train", "eval", "report")


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
    failed: list[dict] = field(default_factory=list)  # benchmarks on disk that could not be read
    run_info: dict | None = None  # eval's run_info.json: config, torch, device, seconds
    stage_seconds: dict[str, float] = field(default_factory=dict)  # pipeline.json: wall time per stage
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
        rows.append(
            ResultRow(
                checkpoint=r["checkpoint"],
                step=_int(r.get("step")),
                benchmark=r["benchmark"],
                probe=(r.get("probe") or "attentive").strip(),
                top1=pct(r.get("top1")),
                top5=pct(r.get("top5")),
                mean_per_class_recall=pct(r.get("mean_per_class_recall")),
                lr=_number(r.get("lr")),
                weight_decay=_number(r.get("weight_decay")),
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
    return {k: float(v) for k, v in seconds.items() if _number(v) is not None}


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
            and _number(item.get("step")) is not None
            and _number(item.get("loss")) is not None
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


@dataclass
class CurationSamples:
    """This run's scored pool: the scores (all of them, or a uniform 1-in-``stride`` sample of a large
    pool), the selection threshold, and a few kept and dropped pairs."""

    scores: list[float]
    kept_scores: list[float]
    threshold: float | None
    examples: list[dict]  # {"image": jpg bytes, "caption", "score", "kept": bool, "reason"}
    pool_size: int = 0
    stride: int = 1


# The report reads at most about this many scored rows (every k-th row of a larger pool): the histogram's
# shape and the example pairs do not need more, and a 12.8B-pair pool must not be loaded whole.
SAMPLE_ROWS = 200_000


def _example_picks(rows: list[dict], per_group: int) -> list[dict]:
    """Kept pairs (best, middle, just above the threshold) and dropped ones (just below it, the worst, and
    one per dedup / safety reason): the boundary is where a reader checks the filter."""
    kept = sorted((r for r in rows if r["kept"]), key=lambda r: -r["score"])
    by_score = sorted(
        (r for r in rows if not r["kept"] and r["reason"].startswith("score")), key=lambda r: -r["score"]
    )
    masked = [r for r in rows if not r["kept"] and not r["reason"].startswith("score")]
    picks: list[dict] = []

    def spread(items: list[dict], n: int) -> list[dict]:
        if len(items) <= n:
            return items
        return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]

    picks += spread(kept, per_group)
    picks += spread(by_score, max(1, per_group - min(2, len(masked))))
    seen_reasons: set[str] = set()
    for r in masked:
        if r["reason"] not in seen_reasons and len(seen_reasons) < 2:
            seen_reasons.add(r["reason"])
            picks.append(r)
    return picks


def _parquet_parts(folder: Path) -> list[Path]:
    """The parquet parts of a curation output folder, in name order (a killed write's dot file skipped)."""
    return [p for p in sorted(folder.glob("*.parquet")) if not p.name.startswith(".")]


def _rows_for(folder: Path, columns: list[str], uids: set[str]) -> dict[str, dict]:
    """{uid: row} of the rows of a folder's parquet parts whose uid is in ``uids``, read batch by batch."""
    wanted = pa.array(sorted(uids), type=pa.string())
    out: dict[str, dict] = {}
    for path in _parquet_parts(folder):
        for batch in pq.ParquetFile(path).iter_batches(columns=["uid", *columns], batch_size=1 << 16):
            hits = batch.filter(pc.is_in(batch.column("uid").cast(pa.string()), value_set=wanted))
            for row in hits.to_pylist():
                out[row["uid"]] = row
    return out


def _sampled_scores(folder: Path) -> tuple[list[str], list[float], int, int]:
    """(uids, scores, rows in the score parts, stride): every ``stride``-th row (in part order), at most
    ~SAMPLE_ROWS of them."""
    files = [pq.ParquetFile(p) for p in _parquet_parts(folder)]
    n = sum(f.metadata.num_rows for f in files)
    stride = max(1, math.ceil(n / SAMPLE_ROWS))
    uids: list[str] = []
    scores: list[float] = []
    seen = 0
    for file in files:
        for batch in file.iter_batches(columns=["uid", "score"], batch_size=1 << 16):
            first = (-seen) % stride  # the first row of this batch whose global index is a multiple of stride
            uids += batch.column("uid").to_pylist()[first::stride]
            scores += batch.column("score").to_pylist()[first::stride]
            seen += batch.num_rows
    return uids, [float(v) for v in scores], n, stride


def read_curation_samples(curation_dir: Path, manifest: dict | None, notes: list[str],
                          per_group: int = 4) -> CurationSamples | None:
    """Scores and example pairs from the curation's own files, each a folder of parquet parts:
    scores/parts/, dedup/keep/ and safety/keep/ (keep flag and reason per pair), pairs/ (captions), and
    pool/*.tar (images). A pair is kept when both masks keep it and its score reaches the threshold
    (curation.select's rule). None when the scores are absent."""
    scores_path = curation_dir / "scores" / "parts"
    if not _parquet_parts(scores_path):
        return None
    threshold = _number((manifest or {}).get("threshold"))
    try:
        uids, scores, n, stride = _sampled_scores(scores_path)
        wanted = set(uids)
        masks = {name: _rows_for(curation_dir / name / "keep", ["keep", "reason"], wanted)
                 for name in ("dedup", "safety") if _parquet_parts(curation_dir / name / "keep")}
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        notes.append(f"curation files in {curation_dir} are unreadable ({type(exc).__name__}: {exc})")
        return None
    rows = []
    for uid, score in zip(uids, scores, strict=True):
        dropped_by = [f"{name}: {mask[uid].get('reason') or 'dropped'}" for name, mask in masks.items()
                      if uid in mask and not mask[uid]["keep"]]
        below = threshold is not None and score < threshold
        reason = "; ".join(dropped_by) or (f"score below the threshold {threshold:.4f}" if below else "kept")
        rows.append({"uid": uid, "score": score, "kept": reason == "kept", "reason": reason})
    picks = _example_picks(rows, per_group)
    wanted = {r["uid"] for r in picks}
    images: dict[str, bytes] = {}
    captions: dict[str, dict] = {}
    try:
        captions = _rows_for(curation_dir / "pairs", ["caption"], wanted)
        for uid, jpg, _, _ in iter_pool(curation_dir / "pool", wanted):
            images[uid] = jpg
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        notes.append(f"pairs or pool images in {curation_dir} are unreadable ({type(exc).__name__}: {exc})")
    examples = [{**r, "image": images[r["uid"]], "caption": (captions.get(r["uid"]) or {}).get("caption", "")}
                for r in picks if r["uid"] in images]
    return CurationSamples(scores=scores, kept_scores=[r["score"] for r in rows if r["kept"]],
                           threshold=threshold, examples=examples, pool_size=n, stride=stride)


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
