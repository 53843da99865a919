"""Checkpoint files: atomic dirs, weights_only state, model loading for evaluation (ours and ml-aim's)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config.training import ModelConfig
from shared.errors import InputError
from training import checkpoint as ck
from training import eval_weights as ew
from training.model.aim import build_aim

TINY = ModelConfig(arch=None, width=32, depth=2, heads=2, img_size=32, patch_size=8, head_width=32,
                   head_depth=1)


def test_checkpoint_roundtrip_and_completeness(tmp_path):
    torch.manual_seed(0)
    model = build_aim(TINY)
    random.seed(3)
    np.random.seed(3)
    state = {"step": 5, "rng": [ck.rng_state()], "optimizer": {"state": {}, "param_groups": []}}
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ck.write_checkpoint(ck.step_dir(tmp_path, 5), model.state_dict(), TINY, state)
    # A half-written checkpoint (no COMPLETE) and a leftover temp dir are not candidates.
    half = Path(ck.step_dir(tmp_path, 9))
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "checkpoints" / ".step_0000010.abc.tmp").mkdir()
    assert [d for _, d in ck.complete_checkpoints(tmp_path)] == [ck.step_dir(tmp_path, 5)]
    assert ew.resolve_weights(tmp_path) == str(Path(ck.step_dir(tmp_path, 5)) / "model.safetensors")
    assert ck.latest_checkpoint(tmp_path) is None  # weights only: nothing to resume from
    # the trunk also as an ml-aim backbone, in a folder of its own with ml-aim's config.json
    mlaim = Path(ck.step_dir(tmp_path, 5)) / "mlaim"
    trunk = torch.load(mlaim / "backbone.pth", weights_only=True)
    assert "trunk.blocks.0.attn.qkv.weight" in trunk and not any(k.startswith("head") for k in trunk)
    assert json.loads((mlaim / "config.json").read_text())["num_heads"] == TINY.heads
    assert ew.resolve_weights(mlaim) == str(mlaim / "backbone.pth")
    ck.remove_partial(tmp_path)
    assert not (tmp_path / "checkpoints" / ".step_0000010.abc.tmp").exists()
    assert not half.exists()  # uncommitted (what an object store's killed save leaves)

    loaded = ck.read_state(ck.step_dir(tmp_path, 5))  # torch.load(weights_only=True) inside
    ck.set_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert loaded["step"] == 5

    other, cfg = ew.load_model_for_eval(tmp_path)
    assert cfg == TINY and not other.training
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    assert ck.shape_difference(TINY, TINY) is None
    assert ck.shape_difference(TINY, TINY.model_copy(update={"depth": 3})) == "depth 2 vs 3"


def test_load_model_for_eval_reads_an_mlaim_pth(tmp_path):
    from training.model.mlaim_compat import export_mlaim_state_dict, save_mlaim_checkpoint

    torch.manual_seed(1)
    model = build_aim(TINY)
    save_mlaim_checkpoint(model, tmp_path / "aim_tiny.pth")  # + config.json with the head count
    loaded, cfg = ew.load_model_for_eval(tmp_path / "aim_tiny.pth")
    assert (cfg.width, cfg.depth, cfg.heads) == (32, 2, 2)
    assert not loaded.training
    # The trunk weights arrive intact (the head count comes from the config.json the exporter wrote).
    ours, theirs = export_mlaim_state_dict(model), export_mlaim_state_dict(loaded)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_load_model_for_eval_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ew.load_model_for_eval(tmp_path / "nope")
    with pytest.raises(InputError, match="no checkpoint found"):
        ew.load_model_for_eval(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="config.json"):
        ew.load_model_for_eval(tmp_path / "w.safetensors")
