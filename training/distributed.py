"""Parallelism, kept apart from the model code (as torchtitan does): the process group and device mesh,
per-block activation checkpointing and torch.compile, DDP / FSDP2 / HSDP wrapping, precision.

Modes (`training.parallel`):
- none: one process, no wrapper.
- ddp: DistributedDataParallel, every rank holds the whole model; gradients all-reduced (bucketed).
- fsdp: FSDP2 `fully_shard` per block and at the root, on a 1-D mesh over all ranks: parameters,
  gradients and optimizer state sharded over the world; each block's weights all-gathered for its
  forward and (with reshard_after_forward) again for its backward; gradients reduce-scattered.
- hsdp: FSDP2 on a 2-D mesh (replicate x shard): sharded within `fsdp.shard_size` ranks (a node by
  default), replicated across them; gradients reduce-scattered within the shard group, then
  all-reduced across replicas. The all-gathers stay inside the node (NVLink).
Under torchrun the group uses NCCL on CUDA and gloo on CPU, with an explicit timeout; a single
process asked for fsdp gets a group of one (the shipped aim-600m path on one GPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

from shared.config.training import FSDPConfig, TimeoutsConfig
from shared.errors import ConfigError
from shared.torchrun import local_device, rank_world

log = logging.getLogger("openaim.training")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(parallel: str, timeout_s: int) -> DistInfo:
    """Join torchrun's process group (if launched by it) with an explicit timeout; pick the device.
    Runs inside shared.torchrun.torchrun_stage, which joins first and destroys the group at the end.

    A single process asked for fsdp/hsdp gets a process group of one, so FSDP2 runs as it would on
    a node (one GPU measures the shipped path)."""
    device = torch.device(local_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    rank, world = rank_world(timeout=timeout)
    if world == 1 and parallel in ("fsdp", "hsdp") and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    if rank > 0:
        # One voice: only rank 0 logs progress; other ranks still report warnings and errors.
        logging.getLogger("openaim").setLevel(logging.WARNING)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistInfo(rank, world, local_world, device)


def timeouts_hint(cfg: TimeoutsConfig) -> str:
    return (f"collectives wait training.timeouts.step_s ({cfg.step_s} s) after the first step, "
            f"training.timeouts.startup_s ({cfg.startup_s} s) before it and around checkpoints")


class PhaseTimeouts:
    """The process groups' timeouts by phase (training.timeouts), as torchtitan splits them: startup_s
    until the first step has finished on every rank, step_s after it, so a hung or dead rank stops the
    run after ~step_s instead of the start-up allowance. Checkpoint saves and the final export run under
    startup_s again (rank 0 writes files while the others wait in a barrier). The groups: the default
    one and the mesh's (the step's collectives), and `io_groups` (the checkpoint writer's, whose DCP
    collectives may run in a background thread while steps go on), which keep startup_s throughout."""

    def __init__(self, cfg: TimeoutsConfig, mesh: DeviceMesh | None, io_groups=()):
        self.startup, self.step = timedelta(seconds=cfg.startup_s), timedelta(seconds=cfg.step_s)
        self.active = dist.is_initialized()
        self.step_groups = [None, *(mesh.get_all_groups() if mesh is not None else [])]  # None: default
        self.steps_running = False
        if self.active:
            for group in io_groups:
                if group is not None:
                    dist.set_timeout(self.startup, group)
            self._set(self.startup)

    def _set(self, timeout: timedelta) -> None:
        if self.active:
            for group in self.step_groups:
                dist.set_timeout(timeout, group)

    def first_step_done(self, device: torch.device) -> None:
        """Switch to step_s, once. A barrier first: a rank still finishing start-up under the long
        timeout must not meet a peer's collective already under the short one."""
        if self.steps_running:
            return
        self.steps_running = True
        if self.active and dist.get_world_size() > 1:
            dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
        self._set(self.step)
        log.info("collectives time out after %ds from now on (training.timeouts.step_s)", self.step.seconds)

    @contextlib.contextmanager
    def io(self):
        """startup_s for a checkpoint save (every rank enters it after the same step), then step_s again."""
        self._set(self.startup)
        try:
            yield
        finally:
            if self.steps_running:
                self._set(self.step)

    def steps_over(self) -> None:
        """startup_s for what follows the last step: the last save's wait, final/, the last barrier."""
        self.steps_running = False
        self._set(self.startup)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA where supported, fp32 on CPU (CPU bf16 matmuls are slow and add noise)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


@dataclass(frozen=True)
class ParallelLayout:
    """How the model is spread over the ranks, resolved once from `training.parallel` and the world
    (`resolve_layout`); the rest of the code asks these flags, not the config string."""

    ddp: bool = False  # whole model on every rank, DDP's bucketed gradient all-reduce
    shard: bool = False  # FSDP2: weights, gradients and optimizer state sharded over mesh dim "shard"
    replicate: bool = False  # HSDP: the shard groups replicated over mesh dim "replicate"
    mesh: DeviceMesh | None = None  # ("shard",) for FSDP, ("replicate", "shard") for HSDP

    @property
    def name(self) -> str:
        return "hsdp" if self.replicate else "fsdp" if self.shard else "ddp" if self.ddp else "none"


def resolve_layout(parallel: str, info: DistInfo, fsdp_cfg: FSDPConfig) -> ParallelLayout:
    """One process: FSDP over a group of one when fsdp/hsdp is asked (the shipped path), else none.
    auto: fsdp on CUDA, ddp on CPU. fsdp gets a 1-D mesh over all ranks; hsdp a 2-D mesh of
    (world / shard_size) replicas x `fsdp.shard_size` ranks (default: the processes of one node)."""
    if info.world_size == 1:
        parallel = "fsdp" if parallel in ("fsdp", "hsdp") else "none"
    elif parallel == "none":
        raise ConfigError("training.parallel=none cannot run with several processes; use ddp, fsdp or hsdp")
    elif parallel == "auto":
        parallel = "fsdp" if info.device.type == "cuda" else "ddp"
    if parallel == "fsdp":
        mesh = init_device_mesh(info.device.type, (info.world_size,), mesh_dim_names=("shard",))
        return ParallelLayout(shard=True, mesh=mesh)
    if parallel == "hsdp":
        shard = fsdp_cfg.shard_size or info.local_world_size
        if info.world_size % shard:
            raise ConfigError(f"training.fsdp.shard_size {shard} does not divide the world size "
                              f"{info.world_size}")
        mesh = init_device_mesh(info.device.type, (info.world_size // shard, shard),
                                mesh_dim_names=("replicate", "shard"))
        return ParallelLayout(shard=True, replicate=True, mesh=mesh)
    return ParallelLayout(ddp=parallel == "ddp")


def transformer_blocks(model: nn.Module, which: str = "full") -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent ModuleList, index, block) for every block of the trunk ("trunk") or of trunk and head
    ("full"), in forward order."""
    found = []
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(module, nn.ModuleList):
            if which == "trunk" and name != "blocks":
                continue
            found.extend((module, str(i), block) for i, block in enumerate(module))
    return found


def apply_activation_checkpointing(model: nn.Module, which: str) -> None:
    """Recompute the activations of the trunk's blocks ("trunk") or of every block ("full") in backward."""
    if which == "none":
        return
    for parent, index, block in transformer_blocks(model, which):
        parent.register_module(index, checkpoint_wrapper(block, preserve_rng_state=False))


def apply_compile(model: nn.Module) -> None:
    """Compile block by block: the blocks share one graph, so compile time stays flat with depth."""
    for _, _, block in transformer_blocks(model):
        block.compile()


class ForwardLoss(nn.Module):
    """Makes `AIM.forward_loss` the module's forward, so DDP's gradient hooks see the call."""

    def __init__(self, aim: nn.Module):
        super().__init__()
        self.aim = aim

    def forward(self, images: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
        return self.aim.forward_loss(images, prefix_len)


@dataclass
class Wrapped:
    """The training callable (images, prefix) -> loss and how to defer gradient sync."""

    loss_fn: object
    layout: ParallelLayout
    module: nn.Module

    def sync_context(self, last_micro_batch: bool):
        """Around a micro-batch's backward: defer the cross-replica gradient reduction to the last one.
        DDP skips its all-reduce; HSDP keeps its in-node reduce-scatter (sharded gradients, bounded
        memory) and skips the cross-node all-reduce; FSDP reduce-scatters every micro-batch."""
        if self.layout.ddp and not last_micro_batch:
            return self.module.no_sync()
        if self.layout.replicate:
            self.module.set_requires_all_reduce(last_micro_batch)
        return contextlib.nullcontext()


def wrap_model(aim: nn.Module, layout: ParallelLayout, info: DistInfo, dtype: torch.dtype,
               fsdp_cfg: FSDPConfig) -> Wrapped:
    """DDP, or FSDP2 fully_shard per block then the root (on the layout's mesh). `aim` stays the module
    whose state dict is saved; under FSDP2 it is sharded in place (same parameter names)."""
    if layout.ddp:
        ddp = DistributedDataParallel(ForwardLoss(aim), device_ids=[info.device.index]
                                      if info.device.type == "cuda" else None)
        return Wrapped(ddp, layout, ddp)
    if layout.shard:
        # Parameters gathered in bf16 when training in bf16; activations stay under autocast (see
        # autocast_context), so the residual stream and the loss keep fp32 as without FSDP.
        reduce_dtype = torch.bfloat16 if fsdp_cfg.reduce_dtype == "bf16" else torch.float32
        mp = MixedPrecisionPolicy(param_dtype=dtype if dtype == torch.bfloat16 else None,
                                  reduce_dtype=reduce_dtype, cast_forward_inputs=False)
        reshard = True if fsdp_cfg.reshard_after_forward is None else fsdp_cfg.reshard_after_forward
        blocks = transformer_blocks(aim)
        for i, (_, _, block) in enumerate(blocks):
            # The last block's backward comes right after its forward: resharding it would only
            # gather it again at once (torchtitan does the same).
            fully_shard(block, mesh=layout.mesh, mp_policy=mp,
                        reshard_after_forward=reshard and i < len(blocks) - 1)
        fully_shard(aim, mesh=layout.mesh, mp_policy=mp, reshard_after_forward=False)
        # The root's unshard/reshard hooks run around forward(); we train through forward_loss().
        register_fsdp_forward_method(aim, "forward_loss")
    return Wrapped(aim.forward_loss, layout, aim)


def materialize_from_rank0(aim: nn.Module, full_state: dict[str, torch.Tensor] | None,
                           device: torch.device) -> None:
    """Give a meta-built, fully_shard-ed model real storage and rank 0's full weights, shard by shard.

    Only rank 0 ever holds the whole model (in host memory), as torchtitan does for large models; the
    other ranks allocate just their shards. Rank 0's weights come from a normally initialised model,
    so an FSDP run starts from exactly the weights of a single-process run with the same seed.
    """
    aim.to_empty(device=device)
    set_model_state_dict(aim, full_state if dist.get_rank() == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def autocast_context(device: torch.device, dtype: torch.dtype):
    """bf16 autocast when training in bf16 (with or without FSDP's bf16 parameter gathers)."""
    if dtype == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_grad_norm(aim: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Total gradient norm (before clipping), on the device; clips in place when max_norm is set."""
    params = [p for p in aim.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm
