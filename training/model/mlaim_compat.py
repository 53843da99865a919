"""Load and export trunk weights under the names of Apple's ml-aim torch backend (AIMv1).

ml-aim names (aim-v1/aim/v1/torch, `aim-600M-2B-imgs` and the other released trunks):
    preprocessor.patchifier.proj.{weight,bias}   <->  patch_embed.proj.{weight,bias}
    preprocessor.patchifier.norm.{weight,bias}   <->  patch_embed.norm.{weight,bias}
    trunk.blocks.<i>.norm_1 / attn.qkv / attn.proj / norm_2 / mlp.fc1 / mlp.fc2  <->  blocks.<i>.<same>
    trunk.post_trunk_norm.{weight,bias}          <->  post_trunk_norm.{weight,bias}
    head.*  (their attentive-probe classifier)   -> not part of our model; returned separately
Their position embedding is computed (sin-cos, column index first), so it has no weights; our
pixel head has no counterpart in their checkpoints and keeps its initial weights after loading.

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

import re
from pathlib import Path

import torch

from shared.config.training import AIM_PRESETS, ModelConfig
from shared.errors import InputError

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


def export_mlaim_state_dict(model) -> dict[str, torch.Tensor]:
    """Our trunk's weights under ml-aim's names (loadable into their AIM with their probe head)."""
    out = {}
    for name, tensor in model.state_dict().items():
        theirs = to_mlaim_name(name)
        if theirs is not None:
            out[theirs] = tensor
    return out


def split_mlaim_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """(trunk weights under OUR names, their probe head weights `head.*` with the prefix removed)."""
    trunk, probe = {}, {}
    for name, tensor in state_dict.items():
        ours = from_mlaim_name(name)
        if ours is not None:
            trunk[ours] = tensor
        elif name.startswith("head."):
            probe[name[len("head."):]] = tensor
    return trunk, probe


def load_mlaim_trunk(model, state_dict: dict) -> None:
    """Copy ml-aim-named trunk weights into `model`; every trunk weight must be present and fit."""
    trunk, _ = split_mlaim_state_dict(state_dict)
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


def infer_model_config(state_dict: dict, img_size: int = 224) -> ModelConfig:
    """The ModelConfig of an ml-aim trunk from its tensor shapes. The head count is not stored in
    the weights: the released widths map to their presets, other widths assume head dim 64."""
    try:
        width, in_chans, patch, _ = state_dict["preprocessor.patchifier.proj.weight"].shape
        hidden = state_dict["trunk.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise InputError(f"not an ml-aim AIMv1 checkpoint: no {err.args[0]}") from None
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"trunk\.blocks\.(\d+)\.", k)))
    arch = next((name for name, p in AIM_PRESETS.items()
                 if p["width"] == width and p["depth"] == depth and p["patch_size"] == patch), None)
    heads = AIM_PRESETS[arch]["heads"] if arch else max(1, width // 64)
    fields = {"width": width, "depth": depth, "heads": heads, "patch_size": patch, "in_chans": in_chans,
              "mlp_ratio": hidden / width, "norm_eps": 1e-6}
    if arch:
        return ModelConfig(arch=arch, **fields)
    size = img_size - img_size % patch
    return ModelConfig(arch=None, img_size=size, head_width=width, head_depth=1, **fields)


def load_mlaim_checkpoint(path: str | Path, model_cfg: ModelConfig | None = None, device=None):
    """An AIM (in eval mode) holding the trunk of an official ml-aim `.pth` (torch.load with
    weights_only=True). The model's `.cfg` is the inferred (or given) ModelConfig and
    `.mlaim_probe_head` keeps their probe classifier's weights, if the file has them."""
    from training.model.aim import build_aim

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
    model_cfg = model_cfg or infer_model_config(state)
    model = build_aim(model_cfg)
    load_mlaim_trunk(model, state)
    model.mlaim_probe_head = split_mlaim_state_dict(state)[1]
    if device is not None:
        model = model.to(device)
    return model.eval()
