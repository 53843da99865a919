"""Load and export trunk weights under the names of Apple's ml-aim torch backend (AIMv1).

ml-aim names (aim-v1/aim/v1/torch, `aim-600M-2B-imgs` and the other released trunks):
    preprocessor.patchifier.proj.{weight,bias}   <->  patch_embed.proj.{weight,bias}
    preprocessor.patchifier.norm.{weight,bias}   <->  patch_embed.norm.{weight,bias}
    trunk.blocks.<i>.norm_1 / attn.qkv / attn.proj / norm_2 / mlp.fc1 / mlp.fc2  <->  blocks.<i>.<same>
    trunk.post_trunk_norm.{weight,bias}          <->  post_trunk_norm.{weight,bias}
    head.*  (their attentive-probe classifier)   -> not part of our model; skipped here
                                                    (evaluation/mlaim_head.py loads it as a probe)
Their position embedding is computed (sin-cos, column index first), so it has no weights; our
pixel head has no counterpart in their checkpoints and keeps its initial weights after loading.

The head count is not in the weights. It comes from, in this order: a `config.json` beside the
checkpoint in ml-aim's layout (the kwargs of `aim.v1.torch.models._aim`, as AIMForImageClassification
saves them: embed_dim, num_blocks, num_heads, patch_size, img_size, num_channels; `save_mlaim_checkpoint`
writes one), the released sizes (a width/depth/patch of an ml-aim preset: head dim 128), or an explicit
ModelConfig. Otherwise loading refuses: a wrong guess would load silently and give wrong features.

How equivalence was checked (once, by hand, not in the test suite because ml-aim is not a
dependency): apple/ml-aim was fetched at commit bd9e068 into a scratch directory under /tmp,
its torch backend (aim.v1.torch.models._aim, needs only torch and huggingface_hub) was imported
from there, and a small trunk (img 32, patch 8, width 64, 3 blocks, 4 heads) was built on both
sides. Our random weights were exported with `export_mlaim_state_dict` and loaded into theirs with
strict=True; its `extract_features` (each block's raw output, bidirectional) matched ours on random
images to max abs diff <= 2e-6 in fp32 (threshold 1e-4), and so did the post-trunk norm.
The reverse direction (their random weights -> `load_mlaim_trunk`) gave the same agreement.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from shared.atomic import atomic_path, atomic_write_json
from shared.config.training import AIM_PRESETS, ModelConfig
from shared.errors import InputError
from training.model.aim import AIM, build_aim

MLAIM_CONFIG_FILE = "config.json"  # beside the .pth, as on ml-aim's Hugging Face repos

_PREFIXES = (  # (ours, ml-aim)
    ("patch_embed.", "preprocessor.patchifier."),
    ("blocks.", "trunk.blocks."),
    ("post_trunk_norm.", "trunk.post_trunk_norm."),
)


def to_mlaim_name(name: str) -> str | None:
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return None  # head weights have no ml-aim counterpart


def from_mlaim_name(name: str) -> str | None:
    for ours, theirs in _PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return None


def mlaim_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk of one of our state dicts under ml-aim's names (our pixel head left out)."""
    return {theirs: t for name, t in state_dict.items() if (theirs := to_mlaim_name(name)) is not None}


def export_mlaim_state_dict(model: AIM) -> dict[str, torch.Tensor]:
    """Our trunk's weights under ml-aim's names (loadable into their AIM with their probe head)."""
    return mlaim_state_dict(model.state_dict())


def mlaim_config(model_cfg: ModelConfig) -> dict:
    """The trunk's shape as ml-aim's `_aim` kwargs (what their config.json holds)."""
    return {"img_size": model_cfg.img_size, "patch_size": model_cfg.patch_size, "embed_dim": model_cfg.width,
            "num_blocks": model_cfg.depth, "num_heads": model_cfg.heads, "num_channels": model_cfg.in_chans}


def save_mlaim_checkpoint(model: AIM, path: str | Path) -> Path:
    """Write our trunk as an ml-aim backbone: `path` (.pth, a flat state dict under their names, as
    their released `*_backbone.pth`) and `config.json` beside it (their config layout, with the head
    count). Both written atomically."""
    return write_mlaim_backbone(model.state_dict(), model.cfg, path)


def write_mlaim_backbone(state_dict: dict[str, torch.Tensor], model_cfg: ModelConfig,
                         path: str | Path) -> Path:
    """`save_mlaim_checkpoint` from a state dict under our names (what training consolidates) and its
    ModelConfig. ml-aim's LayerNorms have eps 1e-6 (not in their config): a trunk trained with another
    `norm_eps` loads there (and in `load_mlaim_checkpoint`) with 1e-6."""
    path = Path(path)
    trunk = {k: v.detach().cpu().contiguous() for k, v in mlaim_state_dict(state_dict).items()}
    with atomic_path(path) as tmp:
        torch.save(trunk, tmp)
    atomic_write_json(path.parent / MLAIM_CONFIG_FILE, mlaim_config(model_cfg))
    return path


def mlaim_trunk_state(state_dict: dict) -> dict:
    """The trunk weights of an ml-aim state dict under OUR names (their probe head `head.*` left out)."""
    return {ours: t for name, t in state_dict.items() if (ours := from_mlaim_name(name)) is not None}


def load_mlaim_trunk(model: AIM, state_dict: dict) -> None:
    """Copy ml-aim-named trunk weights into `model`; every trunk weight must be present and fit."""
    trunk = mlaim_trunk_state(state_dict)
    expected = {n for n in model.state_dict() if to_mlaim_name(n) is not None}
    missing, unexpected = sorted(expected - trunk.keys()), sorted(trunk.keys() - expected)
    if missing or unexpected:
        raise InputError(f"ml-aim weights do not fit the model: missing {len(missing)}, unexpected "
                         f"{len(unexpected)} (e.g. {(missing + unexpected)[0]})")
    try:
        model.load_state_dict(trunk, strict=False)
    except RuntimeError as err:
        last_line = str(err).splitlines()[-1].strip()
        raise InputError(f"ml-aim weights do not fit the model: {last_line}") from None


def read_mlaim_config(path: Path) -> dict | None:
    """ml-aim's config.json (flat, or nested under "config" as some Hub mixins save it), or None."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read as JSON ({type(err).__name__})") from None
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        raw = raw["config"]
    if not isinstance(raw, dict) or "num_heads" not in raw:
        raise InputError(f"{path}: not an ml-aim config (no num_heads)")
    return raw


def infer_model_config(state_dict: dict, img_size: int = 224, mlaim_cfg: dict | None = None,
                       source: str = "ml-aim checkpoint") -> ModelConfig:
    """The ModelConfig of an ml-aim trunk: shapes from the tensors, the head count from `mlaim_cfg`
    (their config.json) or from the preset of the same width/depth/patch; refuses otherwise."""
    try:
        width, in_chans, patch, _ = state_dict["preprocessor.patchifier.proj.weight"].shape
        hidden = state_dict["trunk.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise InputError(f"{source}: not an ml-aim AIMv1 checkpoint: no {err.args[0]}") from None
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"trunk\.blocks\.(\d+)\.", k)))
    arch = next((name for name, p in AIM_PRESETS.items()
                 if p["width"] == width and p["depth"] == depth and p["patch_size"] == patch), None)
    if mlaim_cfg is not None:
        said = {k: mlaim_cfg.get(k) for k in ("embed_dim", "num_blocks", "patch_size")}
        weights = {"embed_dim": width, "num_blocks": depth, "patch_size": patch}
        wrong = [f"{k} {said[k]} vs {weights[k]} in the weights" for k in said
                 if said[k] is not None and said[k] != weights[k]]
        if wrong:
            raise InputError(f"{source}: its config.json does not describe these weights "
                             f"({', '.join(wrong)})")
        heads = int(mlaim_cfg["num_heads"])
        if heads < 1 or width % heads:
            raise InputError(f"{source}: config.json num_heads {heads} does not divide the width {width}")
        img_size = int(mlaim_cfg.get("img_size") or img_size)
    elif arch is not None:
        heads = AIM_PRESETS[arch]["heads"]
    else:
        raise InputError(f"{source}: cannot tell the head count of a {width}-wide, {depth}-block trunk "
                         f"(not a released ml-aim size and no {MLAIM_CONFIG_FILE} with num_heads beside "
                         f"it); put ml-aim's config.json beside the checkpoint")
    fields = {"width": width, "depth": depth, "heads": heads, "patch_size": patch, "in_chans": in_chans,
              "mlp_ratio": hidden / width, "norm_eps": 1e-6}
    if arch and heads == AIM_PRESETS[arch]["heads"]:
        return ModelConfig(arch=arch, **fields)
    size = img_size - img_size % patch
    return ModelConfig(arch=None, img_size=size, head_width=width, head_depth=1, **fields)


def read_mlaim_state_dict(path: str | Path) -> dict:
    """The flat state dict of an ml-aim `.pth` (torch.load with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ml-aim checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise InputError(f"{path}: cannot read as a torch checkpoint ({type(err).__name__})") from None
    for key in ("model", "state_dict"):  # some releases nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def load_mlaim_checkpoint(path: str | Path, model_cfg: ModelConfig | None = None, device=None) -> AIM:
    """An AIM (in eval mode) holding the trunk of an official ml-aim `.pth`. The model's `.cfg` is the
    given ModelConfig, else the one inferred (head count: config.json beside the file, or a released
    size). Their probe head (`head.*`), if the file has one, is not loaded: see evaluation/mlaim_head.py."""
    path = Path(path)
    state = read_mlaim_state_dict(path)
    if model_cfg is None:
        model_cfg = infer_model_config(state, mlaim_cfg=read_mlaim_config(path.parent / MLAIM_CONFIG_FILE),
                                       source=str(path))
    model = build_aim(model_cfg)
    load_mlaim_trunk(model, state)
    if device is not None:
        model = model.to(device)
    return model.eval()
