"""Checkpoints: `checkpoints/step_%07d/` (model.safetensors, state.pt, config.json, COMPLETE) and `final/`.

A checkpoint directory is built under a temporary name and renamed into place, with a `COMPLETE`
marker written last inside it: a run killed mid-save leaves only a hidden temp dir, which is ignored
(and cleaned up) by the next run. state.pt holds only tensors and plain types, so it loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.atomic import atomic_dir
from shared.errors import InputError

log = logging.getLogger("openaim.training")

STEP_DIR = re.compile(r"^step_(\d{7})$")
MODEL_FILE, STATE_FILE, CONFIG_FILE, COMPLETE = "model.safetensors", "state.pt", "config.json", "COMPLETE"


def step_dir(training_dir: Path, step: int) -> Path:
    return Path(training_dir) / "checkpoints" / f"step_{step:07d}"


def complete_checkpoints(training_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint, oldest first."""
    root = Path(training_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / COMPLETE).is_file() and (d / MODEL_FILE).is_file() and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(training_dir: Path) -> Path | None:
    found = complete_checkpoints(training_dir)
    return found[-1][1] if found else None


def remove_partial(training_dir: Path) -> None:
    """Temp dirs left by a kill during a save."""
    root = Path(training_dir) / "checkpoints"
    for parent in (root, Path(training_dir)):
        if parent.is_dir():
            for d in parent.iterdir():
                if d.name.startswith(".") and d.name.endswith(".tmp") and d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)


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
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- save / load -----------------------------------------------------------------------------------

def _contiguous_cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; our own copies never do.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def write_checkpoint(path: Path, model_state: dict[str, torch.Tensor], model_cfg, state: dict | None) -> Path:
    """Write one checkpoint dir atomically (rank 0 only). `state` None = weights only (final/)."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file(_contiguous_cpu(model_state), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(model_cfg.model_dump(mode="json"), indent=2) + "\n")
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        (tmp / COMPLETE).write_text("ok\n")
    return path


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {Path(ckpt_dir) / STATE_FILE}: {exc}") from None


def read_model_config(ckpt_dir: Path):
    from shared.config.training import ModelConfig

    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{path} is missing (a checkpoint needs its model config beside the weights)")
    try:
        return ModelConfig.model_validate(json.loads(path.read_text()))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a valid model config: {str(exc).splitlines()[0]}") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {path}: {exc}") from None


SHAPE_KEYS = ("width", "depth", "heads", "mlp_ratio", "img_size", "patch_size", "in_chans", "head_width",
              "head_depth")


def shape_difference(a, b) -> str | None:
    """'width 192 vs 384' when two model configs describe differently shaped models, else None."""
    diffs = [f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in SHAPE_KEYS if getattr(a, k) != getattr(b, k)]
    return ", ".join(diffs) if diffs else None


def prune_checkpoints(training_dir: Path, keep_last: int, keep_steps: list[int]) -> None:
    found = complete_checkpoints(training_dir)
    for step, d in found[:-keep_last] if keep_last else found:
        if step not in keep_steps:
            shutil.rmtree(d, ignore_errors=True)


# --- models for evaluation ---------------------------------------------------------------------------

def _resolve_checkpoint_dir(path: Path) -> Path:
    """A run dir (with final/ or checkpoints/), a workdir (with training/), or a checkpoint dir."""
    if (path / MODEL_FILE).is_file():
        return path
    for run in (path, path / "training"):
        if (run / "final" / MODEL_FILE).is_file():
            return run / "final"
        latest = latest_checkpoint(run)
        if latest is not None:
            return latest
    raise InputError(f"no checkpoint found in {path} (expected final/ or checkpoints/step_*/ with {MODEL_FILE})")


def load_model_for_eval(path: str | Path, device: str | torch.device | None = None):
    """(AIM in eval mode, ModelConfig) from our run dir, checkpoint dir, .safetensors (config.json beside
    it) or an official ml-aim .pth."""
    from training.model.aim import build_aim

    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    if path.is_file() and path.suffix in (".pth", ".pt"):
        from training.model.mlaim_compat import load_mlaim_checkpoint

        loaded = load_mlaim_checkpoint(path)
        model, model_cfg = loaded if isinstance(loaded, tuple) else (loaded, loaded.cfg)
    else:
        if path.is_file():
            if path.suffix != ".safetensors":
                raise InputError(f"{path}: expected a run dir, a checkpoint dir, .safetensors or an ml-aim .pth")
            weights_file, cfg_dir = path, path.parent
        else:
            ckpt = _resolve_checkpoint_dir(path)
            weights_file, cfg_dir = ckpt / MODEL_FILE, ckpt
        model_cfg = read_model_config(cfg_dir)
        model = build_aim(model_cfg)
        weights = read_weights(weights_file)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise InputError(f"{weights_file}: weights do not fit the model in {cfg_dir / CONFIG_FILE} "
                             f"(missing {len(missing)}, unexpected {len(unexpected)}, e.g. "
                             f"{(list(missing) + list(unexpected))[0]})")
    if device is not None:
        model = model.to(device)
    return model.eval(), model_cfg
