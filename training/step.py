"""One training step and what it needs: the batch plan, the model set up for the parallel layout, its
restore from a checkpoint, and `train_step` (micro-batches with gradient accumulation, clip, AdamW).

One optimizer step per global batch: each rank's G / world images run as micro-batches of
`micro_batch_size` with gradient accumulation. Each micro-batch's loss is weighted by its share of
the global batch's counted (post-prefix) patches, times the world size (DDP/FSDP average gradients
over ranks), so the accumulated gradient is the gradient of the global batch's loss (a mean over
counted patches) for any world size and micro-batch size.

Prefix lengths of step k are drawn for the whole *global* batch from a generator seeded by (seed, k)
and each rank (and micro-batch) takes its slice, so they depend neither on history nor on the world
size or the accumulation; they are drawn on the host and copied pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.config.training import TrainingConfig
from shared.errors import ConfigError
from training import checkpoint as ck
from training import distributed as dd
from training.model.aim import build_aim
from training.model.prefix import sample_prefix_lengths
from training.optim import build_optimizer, lr_at, peak_lr, set_lr


def prefix_generator_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 3, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_prefix_lengths(seed: int, step: int, global_batch: int, num_patches: int) -> torch.Tensor:
    """Prefix lengths [global_batch] of step `step`, the same on every rank and world size."""
    gen = torch.Generator().manual_seed(prefix_generator_seed(seed, step))
    return sample_prefix_lengths(global_batch, num_patches, gen)


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch is split: `local` images per rank as `accum` micro-batches of `micro`."""

    world: int
    rank: int
    local: int
    micro: int
    accum: int


def batch_plan(tcfg: TrainingConfig, info: dd.DistInfo) -> BatchPlan:
    world = info.world_size
    if tcfg.global_batch_size % world:
        raise ConfigError(f"training.global_batch_size {tcfg.global_batch_size} is not divisible by "
                          f"{world} processes")
    local = tcfg.global_batch_size // world
    micro = tcfg.micro_batch_size or local
    if local % micro:
        raise ConfigError(f"training.micro_batch_size {micro} does not divide the {local} images per "
                          f"process (global batch {tcfg.global_batch_size} over {world})")
    return BatchPlan(world, info.rank, local, micro, local // micro)


@dataclass
class Trainer:
    """The model (`aim`, whose state dict is saved), its parallel wrapper, the optimizer, the precision."""

    aim: nn.Module
    wrapped: dd.Wrapped
    optimizer: torch.optim.Optimizer
    dtype: torch.dtype
    device: torch.device
    peak_lr: float


def build_trainer(tcfg: TrainingConfig, info: dd.DistInfo, fresh: bool) -> Trainer:
    """The seeded init of a single process, then activation checkpointing, compile, sharding.

    Under FSDP/HSDP the model is built on the meta device; a fresh run (`fresh`) materialises rank 0's
    full weights and scatters them shard by shard, a resumed one only allocates (`restore` fills it)."""
    device = info.device
    layout = dd.resolve_layout(tcfg.parallel, info, tcfg.fsdp)
    dtype = dd.resolve_precision(tcfg.precision, device)
    full_state = None
    if layout.shard:
        if info.is_main and fresh:
            torch.manual_seed(tcfg.seed)
            full_state = build_aim(tcfg.model, device="cpu").state_dict()
        aim = build_aim(tcfg.model, device="meta")
    else:
        torch.manual_seed(tcfg.seed)
        aim = build_aim(tcfg.model, device=device)
    dd.apply_activation_checkpointing(aim, tcfg.activation_checkpointing)
    if tcfg.compile:
        dd.apply_compile(aim)
    wrapped = dd.wrap_model(aim, layout, info, dtype, tcfg.fsdp)
    if layout.shard:
        if fresh:
            dd.materialize_from_rank0(aim, full_state, device)
        else:
            aim.to_empty(device=device)
        del full_state
    aim.train()
    optimizer = build_optimizer(aim, tcfg.optim, tcfg.global_batch_size, fused=device.type == "cuda")
    return Trainer(aim, wrapped, optimizer, dtype, device, peak_lr(tcfg.optim, tcfg.global_batch_size))


def restore(trainer: Trainer, resume_dir: str | Path, state: dict, rank: int) -> None:
    """Model and optimizer from the DCP checkpoint (resharded to this world), this rank's RNG state."""
    ck.load_resumable(resume_dir, trainer.aim, trainer.optimizer)
    ck.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])


def train_step(trainer: Trainer, tcfg: TrainingConfig, plan: BatchPlan, images: torch.Tensor,
               step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step on this rank's images [local, 3, S, S] (float, on the device).

    Returns (loss, gradient norm) as device tensors, left unread, and the step's lr."""
    num_patches = tcfg.model.num_patches
    device = trainer.device
    prefix_all = global_prefix_lengths(tcfg.seed, step, tcfg.global_batch_size, num_patches)  # [GB]
    counted_all = float((num_patches - prefix_all).sum())  # targets at index >= prefix, all ranks
    lr = lr_at(step, tcfg.steps, trainer.peak_lr, tcfg.optim)
    set_lr(trainer.optimizer, lr)
    step_loss = torch.zeros((), device=device)
    micro = plan.micro
    for m in range(plan.accum):
        lo = plan.rank * plan.local + m * micro
        prefix = prefix_all[lo:lo + micro]  # [micro]
        weight = float((num_patches - prefix).sum()) * plan.world / counted_all
        if device.type == "cuda":
            prefix = prefix.pin_memory().to(device, non_blocking=True)
        with trainer.wrapped.sync_context(last_micro_batch=m == plan.accum - 1):
            with dd.autocast_context(device, trainer.dtype):
                loss = trainer.wrapped.loss_fn(images[m * micro:(m + 1) * micro], prefix)
            weighted = loss.float() * weight
            weighted.backward()
        step_loss += weighted.detach()
    grad_norm = dd.clip_grad_norm(trainer.aim, tcfg.optim.grad_clip)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm, lr
