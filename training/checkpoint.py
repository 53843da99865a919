"""Checkpoints: sharded, resumable on another world size, atomic, with consolidated weights for eval.

    <training_dir>/checkpoints/step_0005000/
        dcp/                     torch.distributed.checkpoint: {"model", "optim"}, each rank writes its
                                 own shards (FSDP/HSDP) or rank 0 writes the one copy (DDP, one process)
        state.pt                 step, per-rank RNG states and data positions, the open metrics window
        config.json              the model config (shape check on resume, model for eval)
        model.safetensors        consolidated weights, our names   } only at `keep_checkpoints` steps
        mlaim/backbone.pth       the trunk as an ml-aim backbone   } and the last step
        mlaim/config.json        ml-aim's config (num_heads...)    }
        COMPLETE                 written last
    <training_dir>/final/        model.safetensors, config.json, mlaim/, COMPLETE

`mlaim/` is what `save_mlaim_checkpoint` writes (the one ml-aim exporter): their names, their config
layout, in a folder of its own so that each config.json sits beside the weights it describes. Both
`load_model_for_eval(<ckpt>)` (ours) and `load_model_for_eval(<ckpt>/mlaim)` (ml-aim's) load it.

`training_dir` may be a URL (`s3://bucket/run/training`, training.checkpoint_root): every file goes
through shared.fsio, DCP through its fsspec writer/reader there and its FileSystemWriter/Reader on local
disk. A checkpoint counts only with its COMPLETE, written last, after DCP's `.metadata` (which DCP
writes after every rank's shards). On local disk a save is built in `checkpoints/.step_0005000.tmp/`
(every rank writes its DCP shards there), then rank 0 writes COMPLETE and renames it into place; an
object store has no rename, so there the save is built in `step_0005000/` itself and COMPLETE makes it
valid. Either way a run killed mid-save leaves a folder without COMPLETE, which the next run removes,
and the previous checkpoint stays the latest. DCP reshards on load,
so model and optimizer resume exactly on any world size and parallelism (DDP, FSDP, HSDP, none).
The learning-rate schedule is a pure function of the step (training.optim.lr_at), so the step is the
scheduler's whole state. state.pt holds only tensors and plain types (`torch.load(weights_only=True)`).

Evaluation's lookup of these weights, and loading them, is training.eval_weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from shared import fsio
from shared.atomic import atomic_dir
from shared.config.training import ModelConfig
from shared.errors import InputError, disk_full_as_error
from shared.torchrun import barrier, broadcast_from_rank0, rank_world
from training.model.mlaim_compat import write_mlaim_backbone

log = logging.getLogger("openaim.training")
# DCP's fsspec writer asks every object it writes to fsync; an object store's file has no descriptor and is
# whole once closed (uploaded), which DCP then relies on: its warning says nothing to act on.
warnings.filterwarnings("ignore", message="fsync not supported for this stream")

STEP_DIR = re.compile(r"^step_(\d{7})$")
MODEL_FILE, MLAIM_DIR, MLAIM_BACKBONE = "model.safetensors", "mlaim", "backbone.pth"
STATE_FILE, CONFIG_FILE, COMPLETE, DCP_DIR = "state.pt", "config.json", "COMPLETE", "dcp"


def step_dir(training_dir: str | Path, step: int) -> str:
    """A checkpoint's folder (a path or a URL, as `training_dir`)."""
    return fsio.join(training_dir, "checkpoints", f"step_{step:07d}")


def _step_dirs(training_dir: str | Path, committed: bool = True) -> list[tuple[int, str]]:
    root = fsio.join(training_dir, "checkpoints")
    found = [(int(m.group(1)), fsio.join(root, name)) for name in fsio.listdir(root)
             if (m := STEP_DIR.match(name))]
    return sorted(d for d in found if fsio.isfile(fsio.join(d[1], COMPLETE)) == committed)


def resumable_checkpoints(training_dir: str | Path) -> list[tuple[int, str]]:
    """(step, dir) of every complete checkpoint a run can resume from (DCP + state), oldest first."""
    return [(s, d) for s, d in _step_dirs(training_dir)
            if fsio.isfile(fsio.join(d, DCP_DIR, ".metadata")) and fsio.isfile(fsio.join(d, STATE_FILE))]


def complete_checkpoints(training_dir: str | Path) -> list[tuple[int, str]]:
    """(step, dir) of every complete checkpoint with consolidated weights (what evaluation loads):
    the `keep_checkpoints` steps and the last step, oldest first."""
    return [(s, d) for s, d in _step_dirs(training_dir) if fsio.isfile(fsio.join(d, MODEL_FILE))]


def latest_checkpoint(training_dir: str | Path) -> str | None:
    """The newest checkpoint to resume from, or None."""
    found = resumable_checkpoints(training_dir)
    return found[-1][1] if found else None


def remove_partial(training_dir: str | Path) -> None:
    """What a kill during a save left: local temp dirs, and on an object store checkpoint folders
    without COMPLETE."""
    root = fsio.join(training_dir, "checkpoints")
    for parent in (root, training_dir):
        for name in fsio.listdir(parent):
            if fsio.is_building(name) and fsio.isdir(fsio.join(parent, name)):
                fsio.remove(fsio.join(parent, name))
    for _, uncommitted in _step_dirs(training_dir, committed=False):
        fsio.remove(uncommitted)


# --- RNG states as tensors / plain types -------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- consolidated weights ----------------------------------------------------------------------------

def _contiguous_cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; our own copies never do.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def write_weights(directory: str | Path, model_state: dict[str, torch.Tensor],
                  model_cfg: ModelConfig) -> None:
    """model.safetensors (our names, whole model), config.json, and mlaim/ (the trunk as an ml-aim
    backbone with ml-aim's config.json) into a (temporary) directory, a path or a URL."""
    weights = _contiguous_cpu(model_state)
    with fsio.local_file(fsio.join(directory, MODEL_FILE)) as path:
        save_file(weights, str(path), metadata={"format": "pt"})
    with fsio.local_dir(fsio.join(directory, MLAIM_DIR)) as mlaim:
        write_mlaim_backbone(weights, model_cfg, mlaim / MLAIM_BACKBONE)
    _write_model_config(directory, model_cfg)


def _write_model_config(directory: str | Path, model_cfg: ModelConfig) -> None:
    fsio.write_text(fsio.join(directory, CONFIG_FILE),
                    json.dumps(model_cfg.model_dump(mode="json"), indent=2) + "\n")


def write_checkpoint(path: Path, model_state: dict[str, torch.Tensor], model_cfg: ModelConfig,
                     state: dict[str, Any] | None = None) -> Path:
    """A checkpoint dir with consolidated weights (final/, or a model for tests and benchmarks) and,
    when given, a state.pt, atomically. Training's resumable checkpoints come from CheckpointWriter."""
    with disk_full_as_error(path), atomic_dir(path) as tmp:  # a full disk: one line naming the checkpoint
        write_weights(tmp, model_state, model_cfg)
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        (tmp / COMPLETE).write_text("ok\n")
    return path


def read_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = fsio.join(ckpt_dir, STATE_FILE)
    try:
        return torch.load(io.BytesIO(fsio.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {path}: {exc}") from None


def read_model_config(ckpt_dir: str | Path) -> ModelConfig:
    path = fsio.join(ckpt_dir, CONFIG_FILE)
    if not fsio.isfile(path):
        raise InputError(f"{path} is missing (a checkpoint needs its model config beside the weights)")
    try:
        return ModelConfig.model_validate(json.loads(fsio.read_bytes(path)))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a valid model config: {str(exc).splitlines()[0]}") from None


def read_weights(path: Path, source: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a local .safetensors file (`source`: where it came from, named in errors)."""
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {source or path}: {exc}") from None


SHAPE_KEYS = ("width", "depth", "heads", "mlp_ratio", "img_size", "patch_size", "in_chans", "head_width",
              "head_depth")


def shape_difference(a, b) -> str | None:
    """'width 192 vs 384' when two model configs describe differently shaped models, else None."""
    diffs = [f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in SHAPE_KEYS if getattr(a, k) != getattr(b, k)]
    return ", ".join(diffs) if diffs else None


def prune_checkpoints(training_dir: str | Path, keep_last: int, keep_steps: list[int]) -> None:
    """Keep the newest `keep_last` resumable checkpoints; of older ones, `keep_steps` keep their
    consolidated weights (for evaluation) and lose their DCP state; the rest go (COMPLETE first, so a
    kill mid-removal leaves an uncommitted folder, never a committed one with files missing)."""
    found = _step_dirs(training_dir)
    for step, d in found[:-keep_last] if keep_last else found:
        if step in keep_steps:
            fsio.remove(fsio.join(d, DCP_DIR))
            fsio.remove(fsio.join(d, STATE_FILE))
        else:
            fsio.remove(fsio.join(d, COMPLETE))
            fsio.remove(d)


# --- DCP save / load ---------------------------------------------------------------------------------

class CheckpointWriter:
    """Saves resumable checkpoints (a collective: every rank calls `save` with the same step).

    With `async_save`, DCP stages the shards to host memory and writes them in a background thread
    while training goes on; the checkpoint is finalised (COMPLETE + rename) at the next save or at
    `close()`. A dedicated gloo group carries the save's own collectives, so they never interleave
    with training's collectives on the default group.
    """

    def __init__(self, training_dir: str | Path, model_cfg: ModelConfig, keep_last: int,
                 keep_steps: list[int], async_save: bool):
        self.training_dir, self.model_cfg = training_dir, model_cfg
        self.keep_last, self.keep_steps = keep_last, list(keep_steps)
        self.async_save = async_save
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._pending: tuple[Any, str, str] | None = None

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             state: dict[str, Any] | None, export_weights: bool) -> None:
        """`state` (step, RNG, data positions...) is written by rank 0; `export_weights` also writes
        the consolidated safetensors (a gather of the full model to rank 0)."""
        self.wait()
        final = step_dir(self.training_dir, step)
        with disk_full_as_error(final):  # a full disk: one line naming the checkpoint
            self._save(final, model, optimizer, state, export_weights)

    def _save(self, final: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              state: dict[str, Any] | None, export_weights: bool) -> None:
        tmp = fsio.build_dir(final) if rank_world()[0] == 0 else None
        tmp = broadcast_from_rank0(tmp)
        sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp_dir = fsio.join(tmp, DCP_DIR)
        if self.async_save:
            future = dcp.async_save(sharded, storage_writer=_dcp_writer(dcp_dir), process_group=self.group)
        else:
            with _single_process_quiet():
                dcp.save(sharded, storage_writer=_dcp_writer(dcp_dir), process_group=self.group,
                         no_dist=not dist.is_initialized())
            future = None
        full = consolidated_state(model) if export_weights else None
        if rank_world()[0] == 0:
            with fsio.local_file(fsio.join(tmp, STATE_FILE)) as path:
                torch.save(state, path)
            _write_model_config(tmp, self.model_cfg)
            if full is not None:
                write_weights(tmp, full, self.model_cfg)
        self._pending = (future, tmp, final)
        if future is None:
            self.wait()

    def wait(self) -> None:
        """Finish the save in flight: wait for its shards, then (rank 0) mark it complete and rename."""
        if self._pending is None:
            return
        future, tmp, final = self._pending
        self._pending = None
        if future is not None:
            with disk_full_as_error(final):
                future.result()
        # DCP's save ends with rank 0 writing .metadata after every rank reported its shards written.
        if rank_world()[0] == 0:
            fsio.commit_dir(tmp, final, COMPLETE)
            prune_checkpoints(self.training_dir, self.keep_last, self.keep_steps)
        barrier()

    def close(self) -> None:
        self.wait()


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it runs in a single process even when told so (no_dist=True): that is our intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _dcp_writer(path: str):
    """DCP's writer for a folder: its fsspec writer for a URL, its FileSystemWriter on local disk."""
    if fsio.is_url(path):
        return FsspecWriter(path)
    return FileSystemWriter(path)


def _dcp_reader(path: str):
    if fsio.is_url(path):
        return FsspecReader(path)
    return FileSystemReader(path)


def consolidated_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full model state dict on rank 0's host (a collective under FSDP; empty on other ranks)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_resumable(ckpt_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer from a DCP checkpoint written under any world size or parallelism."""
    sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    try:
        with _single_process_quiet():
            dcp.load(sharded, storage_reader=_dcp_reader(fsio.join(ckpt_dir, DCP_DIR)),
                     no_dist=not dist.is_initialized())
    except Exception as exc:  # noqa: BLE001 - DCP raises its own CheckpointException with per-rank details
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot resume from {ckpt_dir}: {first[:300]}") from None
    set_model_state_dict(model, sharded["model"])
    set_optimizer_state_dict(model, optimizer, sharded["optim"])
