"""Config of `openaim train`: the AIM model, data mix, optimizer, schedule and scale-out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config.base import StrictModel
from shared.names import unknown_name

# The paper's trunks (width, depth, heads) and their shared head; "aim-tiny"/"aim-small" run on CPU.
AIM_PRESETS: dict[str, dict] = {
    "aim-tiny": dict(width=192, depth=6, heads=3, img_size=64, patch_size=8, head_width=256, head_depth=2),
    "aim-small": dict(width=384, depth=8, heads=6, img_size=112, patch_size=14, head_width=512, head_depth=4),
    "aim-600m": dict(width=1536, depth=24, heads=12, img_size=224, patch_size=14, head_width=2048,
                     head_depth=12),
    "aim-1b": dict(width=2048, depth=24, heads=16, img_size=224, patch_size=14, head_width=2048,
                   head_depth=12),
    "aim-3b": dict(width=3072, depth=24, heads=24, img_size=224, patch_size=14, head_width=2048,
                   head_depth=12),
    "aim-7b": dict(width=4096, depth=32, heads=32, img_size=224, patch_size=14, head_width=2048,
                   head_depth=12),
}


class ModelConfig(StrictModel):
    # A preset fills every shape field that is not given explicitly.
    arch: str | None = "aim-tiny"
    width: int | None = Field(None, ge=8)
    depth: int | None = Field(None, ge=1)
    heads: int | None = Field(None, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    img_size: int | None = Field(None, ge=8)
    patch_size: int | None = Field(None, ge=1)
    in_chans: int = Field(3, ge=1)
    head_width: int | None = Field(None, ge=8)
    head_depth: int | None = Field(None, ge=0)
    # LayerNorm eps of every norm (patch embed, blocks, post-trunk, head). 1e-6 is ml-aim's (their
    # released trunks run with it; ml-aim checkpoints load with it); l3m's AIMv1 training config uses
    # 1e-5, which the shipped training configs (configs/aim-*.yaml, demo.yaml) set.
    norm_eps: float = Field(1e-6, gt=0)
    norm_pix_loss: bool = True
    attention_backend: Literal["auto", "xformers", "flex", "sdpa", "naive"] = "auto"
    # Reproduce l3m's head quirk (identity attention: x + LN(x) before each head MLP);
    # see training/model/head.py.
    head_identity_attn: bool = True

    @model_validator(mode="after")
    def _fill_and_check(self) -> ModelConfig:
        if self.arch is not None:
            if self.arch not in AIM_PRESETS:
                raise ValueError(unknown_name("arch", self.arch, AIM_PRESETS))
            for key, value in AIM_PRESETS[self.arch].items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)
        shape = ("width", "depth", "heads", "img_size", "patch_size", "head_width", "head_depth")
        missing = [k for k in shape if getattr(self, k) is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (or set arch)")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"heads {self.heads} do not divide width {self.width}")
        if (self.img_size // self.patch_size) ** 2 < 2:
            raise ValueError("need at least 2 patches for next-patch prediction")
        if self.width % 4 or self.head_width % 4:
            raise ValueError("2-D sin-cos position embeddings need widths divisible by 4")
        return self

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


class DataConfig(StrictModel):
    # Webdataset shards (globs or brace patterns; every file a pattern names must exist). Empty = the
    # curation stage's output, {workdir}/curation/shards/*.tar.
    shards: list[str] = Field(default_factory=list)
    # ImageNet-style labelled set: image folder(s) or webdataset shards; empty = none. Paths may use
    # {workdir} and {web_dir} (see OpenAIMConfig.expand_path).
    imagenet: list[str] = Field(default_factory=list)
    # Sampling weights (curated, imagenet): 0.8/0.2 is "DFN-2B+". The ImageNet count per global batch
    # is round(batch * imagenet / sum), exactly, at any world size. Ignored when imagenet is empty.
    mix: tuple[float, float] = (0.8, 0.2)
    # DataLoader worker processes per rank (0 = in the training process); each is one data stream.
    num_workers: int = Field(1, ge=0)
    # RandomResizedCrop area range (fraction of the image).
    crop_scale: tuple[float, float] = (0.4, 1.0)
    # Probability of ColorJitter(0.4, 0.4, 0.2, 0.1) per image.
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    # Samples per shuffle window: a reader shuffles consecutive shards holding at least this many.
    shuffle_buffer: int = Field(500, ge=0)

    @model_validator(mode="after")
    def _check_mix(self) -> DataConfig:
        if min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError("mix weights must be non-negative and not all zero")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must satisfy 0 < low <= high <= 1")
        return self


class OptimConfig(StrictModel):
    # AdamW peak learning rate (scaled by the batch when lr_reference_batch is set).
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    # Decoupled weight decay on matrices (none on biases, norms, position embeddings).
    weight_decay: float = Field(0.05, ge=0)
    # Clip the global gradient norm to this; null = no clipping (the norm is still logged).
    grad_clip: float | None = Field(1.0, gt=0)
    # Linear warm-up over this fraction of the steps, from warmup_start_lr; then cosine to 0.
    warmup_fraction: float = Field(0.025, ge=0, lt=1)
    warmup_start_lr: float = Field(1e-6, ge=0)
    # When set, lr is scaled linearly: lr * global_batch_size / lr_reference_batch.
    lr_reference_batch: int | None = Field(None, ge=1)


class FSDPConfig(StrictModel):
    # Free each block's gathered weights after its forward and gather them again in backward (ZeRO-3).
    # False keeps them until backward (ZeRO-2-like): one all-gather per block per step instead of two,
    # for the memory of the unsharded weights of every block. None: True under FSDP, and under HSDP
    # too (the gather stays inside a node, on NVLink).
    reshard_after_forward: bool | None = None
    # dtype of the gradient reduce-scatter / all-reduce. fp32 (the default, every shipped config, and
    # torchtitan's only choice) sums in full precision. bf16 is an opt-in that halves the gradient
    # traffic (7B on 512 GPUs: see docs/scale.md) and rounds every partial sum to 8 mantissa bits: use
    # it only where benchmarks/RESULTS.md shows the same loss curve as fp32 for that setting (measured
    # only on a tiny 2-rank CPU run so far: "Gradient reduction dtype"). Parameters are gathered in bf16
    # either way when training.precision is bf16.
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    # HSDP only: ranks per shard group (the inner mesh dimension; replicas = world / this).
    # None = the processes of one node (torchrun's LOCAL_WORLD_SIZE).
    shard_size: int | None = Field(None, ge=1)


class TimeoutsConfig(StrictModel):
    """How long a collective (all-reduce, all-gather, barrier...) waits for the slowest rank before the
    run stops with an error, by phase (torchtitan's split: long while starting, short once steps run)."""

    # From joining the process group until the first optimizer step has finished on every rank: the
    # rendezvous, building and sharding the model, torch.compile, loading a checkpoint, the first batch.
    # Checkpoint saves and the final export (rank 0 writes files while the others wait) get it too.
    startup_s: int = Field(1800, ge=10)
    # Every collective after the first step (the gradient reductions, the log steps' reductions): a hung
    # or dead rank stops the run after about this long instead of after startup_s.
    step_s: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _step_within_startup(self):
        if self.step_s > self.startup_s:
            raise ValueError(f"step_s ({self.step_s}) is longer than startup_s ({self.startup_s})")
        return self


class TrainingConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    # Images per optimizer step, over all processes.
    global_batch_size: int = Field(64, ge=1)
    # Images per forward/backward on one process; the global batch is split into
    # global_batch_size / (world size * micro_batch_size) accumulated micro-batches.
    # None = global_batch_size / world size (no accumulation).
    micro_batch_size: int | None = Field(None, ge=1)
    # Optimizer steps.
    steps: int = Field(300, ge=1)
    # auto: bf16 on CUDA (where supported), fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile each transformer block (trunk and head): one graph for all blocks.
    compile: bool = False
    # Recompute activations in backward: none; trunk (the trunk's blocks); full (trunk and head blocks).
    activation_checkpointing: Literal["none", "trunk", "full"] = "none"
    # none: one process. ddp: replicated weights, gradient all-reduce. fsdp: FSDP2 over all ranks
    # (1-D mesh). hsdp: FSDP2 on a 2-D mesh, sharded within `fsdp.shard_size` ranks, replicated across.
    # auto: fsdp on CUDA with several processes, ddp on CPU, none alone.
    parallel: Literal["auto", "none", "ddp", "fsdp", "hsdp"] = "auto"
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig)
    # Save a resumable checkpoint every this many steps (and at the last step).
    checkpoint_every: int = Field(100, ge=1)
    # The folder (or fsspec URL: s3://bucket/run/training) whose checkpoints/ holds the checkpoints, read
    # and written there directly (DCP's fsspec writer, the AWS_* variables for s3). Empty: the run's
    # training folder ({workdir}/training). metrics.jsonl, loss.png and final/ stay in the training folder.
    checkpoint_root: str = ""
    # Steps whose consolidated weights (model.safetensors, and mlaim/: the trunk as an ml-aim backbone)
    # are written and kept for evaluation; a checkpoint is also saved there. The last step always gets them.
    keep_checkpoints: list[int] = Field(default_factory=list)
    # With several processes, write checkpoint shards in a background thread while training goes on
    # (DCP async_save; finalised at the next save). One process saves synchronously.
    async_checkpoint: bool = True
    # A metrics line (loss, img/s, ETA) every this many steps; also where non-finite losses are checked.
    log_every: int = Field(10, ge=1)
    # Process-group timeouts by phase (start-up and checkpoint I/O; steps).
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    seed: int = 0

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _ac_from_bool(cls, value):
        # Older configs said true/false.
        if isinstance(value, bool):
            return "full" if value else "none"
        return value
