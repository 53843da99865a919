"""Config of `openaim eval` and `openaim report`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared import fsio
from shared.config.base import StrictModel
from shared.config.benchmark_names import DEMO_NAMES, PAPER_NAMES, check_benchmark_name
from shared.names import closest_names, unknown_name

BLOCK_CHOICES = ("last6", "best")
# Apple's released heads say in their file name which blocks they read
# (aim_600m_2bimgs_attnprobe_head_best_layers.pth, ..._last_layers.pth).
RELEASED_HEAD_BLOCKS = {"best_layers": "best", "last_layers": "last6"}


def check_blocks(value):
    """A blocks choice ("last6", "best") or a list of block indices; an unknown word names the closest."""
    if isinstance(value, str) and value not in BLOCK_CHOICES:
        raise ValueError(unknown_name("blocks", value, BLOCK_CHOICES))
    return value


def released_head_blocks(path: str | Path) -> tuple[str, str] | None:
    """(marker, blocks), e.g. ("best_layers", "best"), when a head file's name is a released one's."""
    name = Path(path).name
    found = [(marker, blocks) for marker, blocks in RELEASED_HEAD_BLOCKS.items() if marker in name]
    return found[0] if len(found) == 1 else None


def check_checkpoint_path(raw: str) -> str:
    """`raw` when the file or folder exists; else ValueError naming it and the closest names beside it. A
    URL (s3://bucket/run/training/checkpoints/step_0001000) is checked when evaluation reads it, not while
    the config loads."""
    if fsio.is_url(raw):
        return raw
    path = Path(raw)
    if path.exists():
        return raw
    if not path.parent.is_dir():
        raise ValueError(f"checkpoint {raw!r} does not exist (no folder {str(path.parent)!r})")
    siblings = sorted(p.name for p in path.parent.iterdir())
    close = [str(path.parent / name) for name in closest_names(path.name, siblings)]
    where = f"closest: {', '.join(close)}" if close else f"nothing like it in {str(path.parent)!r}"
    raise ValueError(f"checkpoint {raw!r} does not exist; {where}")


class ProbeConfig(StrictModel):
    kind: Literal["attentive", "linear", "both"] = "both"
    lrs: list[float] = Field(default_factory=lambda: [3e-4, 1e-3, 3e-3, 1e-2])
    weight_decays: list[float] = Field(default_factory=lambda: [1e-4, 1e-2])
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out for choosing settings")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up before the cosine decay")
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0


class ProbeHeadConfig(StrictModel):
    """A trained attentive-probe head in ml-aim's layout (Apple's `aim_*_attnprobe_head_*_layers.pth`:
    head.cls_token, head.k/v.weight, head.linear.weight, head.bn.running_mean/var), applied to one
    checkpoint's features on one benchmark instead of training probes there (evaluation/mlaim_head.py)."""

    checkpoint: str = Field(description="the evaluation.checkpoints entry the head was trained on")
    benchmark: str = Field(description="registry name, e.g. imagenet-1k (head classes = its classes)")
    path: str = Field(description="the head .pth")
    # Blocks whose mean the head reads. Apple's heads say it in their file name: "best_layers" -> "best",
    # "last_layers" -> the last 6; a `blocks` that contradicts the name is an error.
    blocks: Literal["last6", "best"] | list[int] | None = Field(
        None, description="default: what a released head's file name says, else evaluation.blocks")

    _known_benchmark = field_validator("benchmark")(lambda value: check_benchmark_name(value, groups=False))
    _known_blocks = field_validator("blocks", mode="before")(check_blocks)

    @model_validator(mode="after")
    def _blocks_agree_with_the_file_name(self) -> ProbeHeadConfig:
        released = released_head_blocks(self.path)
        if released and isinstance(self.blocks, str) and self.blocks != released[1]:
            raise ValueError(f"blocks {self.blocks!r} contradicts the head file {Path(self.path).name!r}: "
                             f"a {released[0]} head reads blocks {released[1]!r} (drop blocks, or fix the "
                             "path)")
        return self


class EvaluationConfig(StrictModel):
    # Checkpoints to evaluate: paths or URLs (s3://...) (ours: a training run dir, a checkpoint dir or a
    # .safetensors file; ml-aim .pth). Empty = the training stage's final checkpoint (and, with
    # evaluate_intermediate, its committed checkpoints) plus a random-weights baseline.
    checkpoints: list[str] = Field(default_factory=list)
    random_baseline: bool = True
    benchmarks: list[str] = Field(default_factory=lambda: ["all"])
    data_root: str = "data/benchmarks"
    blocks: Literal["last6", "best"] | list[int] = "last6"
    n_blocks: int = Field(6, ge=1)
    img_size: int | None = Field(None, ge=8, description="probe input size; default = the model's")
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    max_train_per_benchmark: int | None = Field(None, ge=1)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    # Also probe the intermediate checkpoints under training_dir/checkpoints/ (accuracy vs pretraining step).
    evaluate_intermediate: bool = True
    seed: int = Field(0, description="seed of the random-init baseline and the val split")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    # Released probe heads to apply as they are (no probe training for that checkpoint x benchmark).
    heads: list[ProbeHeadConfig] = Field(default_factory=list)

    _known_benchmarks = field_validator("benchmarks")(lambda names: [check_benchmark_name(n) for n in names])
    _existing_checkpoints = field_validator("checkpoints")(
        lambda paths: [check_checkpoint_path(p) for p in paths])
    _known_blocks = field_validator("blocks", mode="before")(check_blocks)

    def evaluated_benchmarks(self) -> set[str]:
        """The registry names and generic entries `benchmarks` selects (groups expanded)."""
        groups = {"all": (*PAPER_NAMES, *DEMO_NAMES), "paper": PAPER_NAMES, "demo": DEMO_NAMES}
        return {name for entry in self.benchmarks for name in groups.get(entry, (entry,))}

    @model_validator(mode="after")
    def _heads_name_what_is_evaluated(self) -> EvaluationConfig:
        """Every head names a listed checkpoint and an evaluated benchmark, once: a head that matched
        nothing would be skipped silently and probes trained instead."""
        listed = {Path(c): c for c in self.checkpoints}
        evaluated, seen = self.evaluated_benchmarks(), set()
        for i, head in enumerate(self.heads):
            if Path(head.checkpoint) not in listed:
                raise ValueError(f"heads[{i}].checkpoint: "
                                 f"{unknown_name('checkpoint', head.checkpoint, listed.values())} "
                                 "(it must be one of evaluation.checkpoints)")
            if head.benchmark not in evaluated:
                raise ValueError(f"heads[{i}].benchmark: {head.benchmark!r} is not among the benchmarks "
                                 f"evaluation.benchmarks {self.benchmarks} selects")
            key = (Path(head.checkpoint), head.benchmark)
            if key in seen:
                raise ValueError(f"heads[{i}]: a second head for {head.checkpoint!r} on {head.benchmark!r}")
            seen.add(key)
        return self


class ReportConfig(StrictModel):
    title: str = "openaim benchmark report"
    # Other run directories to show side by side with this one (e.g. before a filtering change).
    compare: list[str] = Field(default_factory=list)
    # A pretrained-vs-random margin (points of average top-1) the summary checks this run against.
    target_gap_points: float | None = None
