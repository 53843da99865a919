"""Parallelism, kept apart from the model code (as torchtitan does): process group set-up, per-block
activation checkpointing and torch.compile, DDP or FSDP2 wrapping, precision, and full state dicts.

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process group uses NCCL on CUDA and
gloo on CPU. "auto" parallelism = FSDP2 on CUDA with more than one process, DDP on CPU, none alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from shared.errors import ConfigError

log = logging.getLogger("openaim.training")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group if launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if rank > 0:
        # One voice: only rank 0 logs progress; other ranks still report warnings and errors.
        logging.getLogger("openaim").setLevel(logging.WARNING)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def all_gather_object(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA where supported, fp32 on CPU (CPU bf16 matmuls are slow and add noise)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def resolve_parallel(parallel: str, info: DistInfo) -> str:
    if info.world_size == 1:
        return "none"
    if parallel == "none":
        raise ConfigError("training.parallel=none cannot run with several processes; use ddp or fsdp")
    if parallel == "auto":
        return "fsdp" if info.device.type == "cuda" else "ddp"
    return parallel


def transformer_blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent ModuleList, index, block) for every block of every `blocks` ModuleList (trunk and head)."""
    found = []
    for name, module in model.named_modules():
        if name.split(".")[-1] == "blocks" and isinstance(module, nn.ModuleList):
            found.extend((module, str(i), block) for i, block in enumerate(module))
    return found


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for parent, index, block in transformer_blocks(model):
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


def wrap_model(aim: nn.Module, mode: str, info: DistInfo, dtype: torch.dtype):
    """DDP or FSDP2 (fully_shard per block, then the root). Returns the callable (images, prefix) -> loss.

    `aim` itself stays the module whose (full) state dict we save; under FSDP2 it is sharded in place.
    """
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(ForwardLoss(aim), device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        kwargs = {}
        if info.device.type == "cuda" and dtype == torch.bfloat16:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for _, _, block in transformer_blocks(aim):
            fully_shard(block, **kwargs)
        fully_shard(aim, **kwargs)
        # The root's unshard/reshard hooks run around forward(); we train through forward_loss().
        register_fsdp_forward_method(aim, "forward_loss")
        return aim.forward_loss
    return aim.forward_loss


def materialize_from_rank0(aim: nn.Module, full_state: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """Give a meta-built, fully_shard-ed model real storage and rank 0's full weights, shard by shard.

    Only rank 0 ever holds the whole model (in host memory), as torchtitan does for large models; the
    other ranks allocate just their shards. Rank 0's weights come from a normally initialised model,
    so an FSDP run starts from exactly the weights of a single-process run with the same seed.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    aim.to_empty(device=device)
    set_model_state_dict(aim, full_state if dist.get_rank() == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def autocast_context(mode: str, device: torch.device, dtype: torch.dtype):
    """bf16 autocast, except under FSDP2 whose MixedPrecisionPolicy already casts the parameters."""
    if dtype == torch.bfloat16 and not (mode == "fsdp" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_grad_norm(aim: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Total gradient norm (before clipping); clips in place when max_norm is set."""
    params = [p for p in aim.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return norm


def full_model_state(aim: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The unsharded model state dict (a collective under FSDP: every rank must call it)."""
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(aim, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in aim.state_dict().items()}


def full_optimizer_state(aim: nn.Module, optimizer, mode: str) -> dict:
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(aim, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_optimizer_state(aim: nn.Module, optimizer, mode: str, optim_state: dict) -> None:
    if mode == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(aim, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(optim_state)
