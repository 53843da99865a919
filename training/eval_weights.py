"""Models for evaluation from what training wrote: the one lookup of the weights that evaluating a run dir,
checkpoint dir or weights file loads (`resolve_weights`, also behind evaluation.features' cache key, so the
key names the weights that are evaluated), on local disk or under a URL (training.checkpoint_root), and
loading them (`load_model_for_eval`). The layout is training.checkpoint's."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from shared import fsio
from shared.atomic import atomic_dir
from shared.config.training import ModelConfig
from shared.errors import InputError
from shared.stage_cache import hash_file
from shared.torchrun import barrier, broadcast_from_rank0, local_rank, rank_world
from training.checkpoint import (
    CONFIG_FILE,
    MLAIM_BACKBONE,
    MODEL_FILE,
    complete_checkpoints,
    read_model_config,
    read_weights,
)
from training.model.aim import build_aim
from training.model.mlaim_compat import load_mlaim_checkpoint


def resolve_weights(path: str | Path) -> str:
    """The weights file (a path, or a URL under a URL) that evaluating `path` loads. Search order: a file
    is itself; a checkpoint dir holds model.safetensors; an ml-aim export dir (<ckpt>/mlaim) holds
    backbone.pth; a run dir (or a workdir's training/) gives final/, else its newest committed checkpoint
    with consolidated weights."""
    path = os.fspath(path)
    if fsio.isfile(path):
        return path
    for name in (MODEL_FILE, MLAIM_BACKBONE):
        if fsio.isfile(fsio.join(path, name)):
            return fsio.join(path, name)
    for run in (path, fsio.join(path, "training")):
        if fsio.isfile(fsio.join(run, "final", MODEL_FILE)):
            return fsio.join(run, "final", MODEL_FILE)
        found = complete_checkpoints(run)
        if found:
            return fsio.join(found[-1][1], MODEL_FILE)
    raise InputError(f"no checkpoint found in {path} (expected final/ or checkpoints/step_*/ with "
                     f"{MODEL_FILE})")


@contextlib.contextmanager
def local_weights(path: str | Path, every_rank: bool = False) -> Iterator[Path]:
    """The weights file that evaluating `path` loads (resolve_weights) as a local file: the file itself on
    local disk; from an object store, fetched once with the config.json beside it into a temporary folder
    (removed after the block), so that loading and hashing read the same bytes and the loaders (safetensors,
    torch.load) read a local file.

    ``every_rank``: every torchrun rank enters this block for the same checkpoint at the same point (the
    evaluation loop), so that a host fetches it once (``_host_copy``) instead of once per rank; alone (one
    process) the same as without."""
    weights = resolve_weights(path)
    if not fsio.is_url(weights):
        yield Path(weights)
        return
    if every_rank and rank_world()[1] > 1:
        with _host_copy(weights) as local:
            yield local
        return
    with tempfile.TemporaryDirectory(prefix="openaim-weights-") as tmp:
        yield _fetch(weights, Path(tmp))


def _fetch(weights: str, folder: Path) -> Path:
    """The weights object and the config.json beside it, downloaded into `folder`; the local weights."""
    local = folder / fsio.name_of(weights)
    fsio.download(weights, local)
    config = fsio.join(fsio.parent(weights), CONFIG_FILE)
    if fsio.isfile(config):
        fsio.download(config, folder / CONFIG_FILE)
    return local


@contextlib.contextmanager
def _host_copy(weights: str) -> Iterator[Path]:
    """Under torchrun, one download of an object's weights per host: local rank 0 fetches them into a
    folder of the host's temporary directory (built aside and renamed into place: shared.atomic), the
    other ranks wait at a barrier and read that copy; after the block (a second barrier: no rank still
    reads it) local rank 0 removes it. Rank 0 names the folder, new for each load, so a folder a killed
    run left is never taken for this one; the host name in it keeps hosts apart where TMPDIR is shared.
    A rank that fails in the block skips the barrier (torchrun then stops its peers)."""
    name = broadcast_from_rank0(f"openaim-weights-{uuid.uuid4().hex[:16]}")
    folder = Path(tempfile.gettempdir()) / f"{name}-{socket.gethostname()}"
    fetcher = local_rank() == 0
    try:
        if fetcher:
            with atomic_dir(folder) as building:
                _fetch(weights, building)
        barrier()  # this host's copy is complete
        yield folder / fsio.name_of(weights)
        barrier()  # every rank has read it
    finally:
        if fetcher:
            shutil.rmtree(folder, ignore_errors=True)


def load_model_for_eval(path: str | Path, device: str | torch.device | None = None):
    """(AIM in eval mode, ModelConfig) from our run dir, checkpoint dir, .safetensors (config.json beside
    it) or an official ml-aim .pth, on local disk or under a URL."""
    model, model_cfg, _ = _load(path, digest=False)
    if device is not None:
        model = model.to(device)
    return model, model_cfg


def load_model_and_digest(path: str | Path,
                          every_rank: bool = False) -> tuple[torch.nn.Module, ModelConfig, str]:
    """load_model_for_eval's model and config, and the sha256 of the weights file it loaded (what
    evaluation keys its caches by: hashed from the same local bytes, so a bucket's weights are fetched
    once). ``every_rank``: every torchrun rank loads this checkpoint here together (local_weights)."""
    return _load(path, digest=True, every_rank=every_rank)


def _load(path: str | Path, digest: bool,
          every_rank: bool = False) -> tuple[torch.nn.Module, ModelConfig, str | None]:
    if not fsio.exists(path):
        raise InputError(f"checkpoint not found: {path}")
    source = resolve_weights(path)
    with local_weights(source, every_rank) as weights_file:
        model, model_cfg = _load_local_weights(source, weights_file)
        weights_hash = hash_file(weights_file) if digest else None
    return model.eval(), model_cfg, weights_hash


def _load_local_weights(source: str, weights_file: Path) -> tuple[torch.nn.Module, ModelConfig]:
    """The model in `weights_file`, the local copy of the weights file `source` (errors name `source`)."""
    if weights_file.suffix in (".pth", ".pt"):
        model = load_mlaim_checkpoint(weights_file)
        return model, model.cfg
    if weights_file.suffix != ".safetensors":
        raise InputError(f"{source}: expected a run dir, a checkpoint dir, .safetensors or an ml-aim .pth")
    model_cfg = read_model_config(fsio.parent(source))
    model = build_aim(model_cfg)
    weights = read_weights(weights_file, source)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"{source}: weights do not fit the model in "
                         f"{fsio.join(fsio.parent(source), CONFIG_FILE)} (missing {len(missing)}, unexpected "
                         f"{len(unexpected)}, e.g. {(list(missing) + list(unexpected))[0]})")
    return model, model_cfg
