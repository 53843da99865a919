"""Models for evaluation from what training wrote: the one lookup of the weights that evaluating a run dir,
checkpoint dir or weights file loads (`resolve_weights`, also behind evaluation.features' cache key, so the
key names the weights that are evaluated), on local disk or under a URL (training.checkpoint_root), and
loading them (`load_model_for_eval`). The layout is training.checkpoint's."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from shared import fsio
from shared.config.training import ModelConfig
from shared.errors import InputError
from shared.stage_cache import hash_file
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
def local_weights(path: str | Path) -> Iterator[Path]:
    """The weights file that evaluating `path` loads (resolve_weights) as a local file: the file itself on
    local disk; from an object store, fetched once with the config.json beside it into a temporary folder
    (removed after the block), so that loading and hashing read the same bytes and the loaders (safetensors,
    torch.load) read a local file."""
    weights = resolve_weights(path)
    if not fsio.is_url(weights):
        yield Path(weights)
        return
    with tempfile.TemporaryDirectory(prefix="openaim-weights-") as tmp:
        local = Path(tmp) / fsio.name_of(weights)
        fsio.download(weights, local)
        config = fsio.join(fsio.parent(weights), CONFIG_FILE)
        if fsio.isfile(config):
            fsio.download(config, local.parent / CONFIG_FILE)
        yield local


def load_model_for_eval(path: str | Path, device: str | torch.device | None = None):
    """(AIM in eval mode, ModelConfig) from our run dir, checkpoint dir, .safetensors (config.json beside
    it) or an official ml-aim .pth, on local disk or under a URL."""
    model, model_cfg, _ = _load(path, digest=False)
    if device is not None:
        model = model.to(device)
    return model, model_cfg


def load_model_and_digest(path: str | Path) -> tuple[torch.nn.Module, ModelConfig, str]:
    """load_model_for_eval's model and config, and the sha256 of the weights file it loaded (what
    evaluation keys its caches by: hashed from the same local bytes, so a bucket's weights are fetched
    once)."""
    return _load(path, digest=True)


def _load(path: str | Path, digest: bool) -> tuple[torch.nn.Module, ModelConfig, str | None]:
    if not fsio.exists(path):
        raise InputError(f"checkpoint not found: {path}")
    source = resolve_weights(path)
    with local_weights(source) as weights_file:
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
