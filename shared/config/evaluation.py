"""Config of `openaim eval` and `openaim report`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.config.base import StrictModel


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
    # Blocks whose mean the head reads: Apple's "best_layers" heads need "best", "last_layers" ones "last6".
    blocks: Literal["last6", "best"] | list[int] | None = Field(None,
                                                                description="default: evaluation.blocks")


class EvaluationConfig(StrictModel):
    # Checkpoints to evaluate: paths (ours: a training run dir or a .safetensors file; ml-aim .pth).
    # Empty = the training stage's final checkpoint plus a random-weights baseline.
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

    @model_validator(mode="after")
    def _heads_name_a_checkpoint(self) -> EvaluationConfig:
        listed = {Path(c) for c in self.checkpoints}
        for i, head in enumerate(self.heads):
            if Path(head.checkpoint) not in listed:
                raise ValueError(f"heads[{i}].checkpoint {head.checkpoint!r} is not in "
                                 "evaluation.checkpoints")
        return self


class ReportConfig(StrictModel):
    title: str = "openaim benchmark report"
    # Other run directories to show side by side with this one (e.g. before a filtering change).
    compare: list[str] = Field(default_factory=list)
    # A pretrained-vs-random margin (points of average top-1) the summary checks this run against.
    target_gap_points: float | None = None
