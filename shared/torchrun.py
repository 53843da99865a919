"""A stage under torchrun: its life cycle (`torchrun_stage`), rank, world size, this rank's device.

torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; without them every function here is a no-op for one
process, so the same code runs alone or across processes. Every stage (training, evaluation,
curation scoring) runs inside `torchrun_stage`; training adds its own set-up on top (training/
distributed.py: meshes, DDP/FSDP, per-phase timeouts).

Restarted rounds of an elastic launch (c10d rendezvous, `--max-restarts`, nodes leaving or joining).
torchrun's agent shares one TCPStore server with its workers (TORCHELASTIC_USE_AGENT_STORE=True) and
keeps that server from one rendezvous round to the next while the same agent stays node rank 0. torch's
env:// join does not namespace its keys per round, so a restarted rank can read the address a dead
rank of the previous round published (gloo's pair addresses under default_pg/) and wait on a peer that
no longer exists (pytorch/pytorch#135712). `_round_store` avoids every stale key: rank 0 serves a new
store of its own on a free port and publishes "host:port:nonce" in the agent's store; the other ranks
take a published address only when the store there answers with the same nonce (a stale entry points
at a closed port or at a store holding another nonce), so every rank of a round joins the same fresh
store.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from shared.errors import PeerError

log = logging.getLogger("openaim.torchrun")

ROUND_STORE_KEY = "openaim/round_store"


def local_rank() -> int:
    """This process's rank on its host (torchrun's LOCAL_RANK; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device() -> str:
    """"cuda:LOCAL_RANK" when CUDA is present (one GPU per rank), else "cpu"."""
    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


# How gloo and NCCL word a failed collective (a plain RuntimeError from gloo, DistError subclasses else).
_PEER_FAILURE_TEXT = ("Timed out", "timed out", "Connection closed by peer", "Connection reset by peer",
                      "NCCL", "gloo")


@contextmanager
def torchrun_stage(backend: str = "auto", timeout: timedelta | None = None,
                   timeouts_hint: str = "") -> Iterator[tuple[int, int]]:
    """One life cycle for a stage: join torchrun's process group (and pick this rank's GPU), run the
    body, then leave: after a body that succeeded every rank waits for the others (a barrier: no rank
    tears the group down while a peer still talks to it); then, success or not, the group is
    destroyed, which joins gloo's worker threads and NCCL's watchdog. Yields (rank, world size).

    A group left alive until interpreter exit is what aborted ranks that had finished their work
    ("terminate called without an active exception", exit -6, torchrun reporting the run FAILED): its
    threads still held work whose tensors reach into Python while the interpreter is torn down. After
    this, the process's exit code is the body's own: 0, or its error's (shared.cli_common.guarded).
    A body that failed skips the barrier (its peers may be waiting in another collective); torchrun
    sees its non-zero exit and stops the others. A failed collective becomes one line (PeerError, exit
    code 4) naming this rank and ``timeouts_hint`` (which setting bounds the wait)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    rank, world = rank_world(backend, timeout)
    succeeded = False
    try:
        try:
            yield rank, world
            succeeded = True
        finally:
            leave_process_group(succeeded)  # its barrier can fail too: a peer that left
    except RuntimeError as exc:
        if world > 1 and (isinstance(exc, dist.DistError) or any(t in str(exc) for t in _PEER_FAILURE_TEXT)):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PeerError(f"rank {rank} of {world}: a collective with the other ranks failed (a rank died, "
                            f"hung or closed its connection): {first}"
                            + (f"; {timeouts_hint}" if timeouts_hint else "")) from exc
        raise


def leave_process_group(succeeded: bool) -> None:
    """Barrier (only after success, only with peers), then destroy every process group of this process."""
    if not dist.is_initialized():
        return
    try:
        if succeeded and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def rank_world(backend: str = "auto", timeout: timedelta | None = None) -> tuple[int, int]:
    """(rank, world size), joining torchrun's process group on first use. backend "auto": nccl when
    CUDA is present, else gloo; the first call's backend and timeout are the group's."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        wait = timeout or timedelta(minutes=30)
        # A line before the wait: a join that never completes names where it waits.
        log.info("rank %d of %d joining the process group (%s) via %s:%s, torchrun restart %s", rank, world,
                 backend, os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"),
                 os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        store = _round_store(rank, wait) if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None
        if store is None:
            dist.init_process_group(backend, timeout=wait)
        else:
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=wait)
    return dist.get_rank(), dist.get_world_size()


def _round_store(rank: int, timeout: timedelta) -> dist.Store:
    """A store that only this round's ranks use (module doc): served by rank 0, found through the agent's."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    if rank == 0:
        own = dist.TCPStore(host, 0, is_master=True, timeout=timeout, wait_for_workers=False)
        nonce = uuid.uuid4().hex
        own.set("nonce", nonce)
        agent.set(ROUND_STORE_KEY, f"{host}:{own.port}:{nonce}")
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        entry = agent.get(ROUND_STORE_KEY).decode()
        own_host, own_port, nonce = entry.rsplit(":", 2)
        try:
            # A plain connect first: a stale entry's closed port fails here at once and quietly.
            socket.create_connection((own_host, int(own_port)), timeout=2).close()
            store = dist.TCPStore(own_host, int(own_port), is_master=False, timeout=timedelta(seconds=2))
            if store.get("nonce").decode() == nonce:
                store.set_timeout(timeout)
                return store
        except (OSError, RuntimeError):  # a closed port, or not (yet) this round's store
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no store of this torchrun round found via {host}:{port} within {timeout}")
        time.sleep(0.2)


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
