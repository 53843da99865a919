"""What the report knows about one run (this one or one it is compared with): its result rows, notes on what
could not be read, and the benchmark catalog entries; how checkpoint names encode training steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.results import RANDOM_INIT

_STEP_SUFFIX = re.compile(r"-step_(\d+)$")


# Stage wall times as openaim.pipeline records them in <workdir>/pipeline.json, in pipeline order.
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
