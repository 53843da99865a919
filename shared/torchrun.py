"""Joining a torchrun launch from a stage that is not training: rank, world size, this rank's device.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; without them every function here is a no-op for one
process, so the same code runs alone or across processes. Training has its own richer set-up
(training/distributed.py: DDP/FSDP, device ids); curation scoring and evaluation use this one.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def local_device() -> str:
    """"cuda:LOCAL_RANK" when CUDA is present (one GPU per rank), else "cpu"."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def rank_world(backend: str = "auto", timeout: timedelta | None = None) -> tuple[int, int]:
    """(rank, world size), joining torchrun's process group on first use. backend "auto": nccl when
    CUDA is present, else gloo; the first call's backend and timeout are the group's."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, **({"timeout": timeout} if timeout is not None else {}))
    return dist.get_rank(), dist.get_world_size()


def broadcast_from_rank0(value):
    """Rank 0's ``value`` on every rank (a no-op for one process); the other ranks wait here for rank 0."""
    rank, world = rank_world()
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()
