"""Frozen-trunk features: transform, blocks, on-disk cache, corrupt images, 2-process torchrun sharding."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from evaluation.features import (
    eval_transform,
    extract_split_features,
    feature_path,
    load_features,
    resize_size,
    resolve_blocks,
)
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)


def tiny_aim(seed: int = 0):
    """A small real AIM trunk (random weights)."""
    from shared.config.training import ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(arch="aim-tiny", width=48, depth=3, heads=2, head_width=32, head_depth=1, img_size=32,
                      patch_size=8)
    from training.model.aim import build_aim

    return build_aim(cfg).eval(), cfg


class ImageList(torch.utils.data.Dataset):
    """(PIL image, label) from files, like the registry's datasets."""

    def __init__(self, files, labels):
        self.files, self.labels, self.classes = list(files), list(labels), sorted(set(labels))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return Image.open(self.files[i]), self.labels[i]


def make_images(root: Path, n: int, size: int = 40, corrupt: tuple[int, ...] = ()) -> ImageList:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = root / f"{i:04d}.png"
        if i in corrupt:
            f.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        else:
            Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)).save(f)
        files.append(f)
    return ImageList(files, [i % 3 for i in range(n)])


def test_eval_transform_resizes_crops_and_normalises():
    img = Image.fromarray(np.full((50, 80, 3), 255, np.uint8))
    x = eval_transform(32)(img)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[0], torch.full((32, 32), (1 - 0.485) / 0.229), atol=1e-4)


def mlaim_val_transform(img_size: int):
    """ml-aim's val_transforms(img_size) (aim-v1/aim/v1/torch/data.py, bd9e068), restated: the short side
    resized bicubic to ceil(img_size / 0.875), a center crop of img_size, ImageNet mean/std."""
    return T.Compose([T.Resize(math.ceil(img_size / 0.875), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(img_size), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


@pytest.mark.parametrize("img_size", [224, 64, 128, 37])
def test_eval_transform_is_mlaim_at_every_size(img_size):
    # ml-aim's sizes (224 -> 256) and those where round(img * 256 / 224) differs from ceil(img / 0.875)
    assert {224: 256, 64: 74, 128: 147, 37: 43}[img_size] == resize_size(img_size)
    rng = np.random.default_rng(img_size)
    for h, w in [(333, 500), (500, 333), (img_size, img_size + 1), (97, 61)]:  # landscape, portrait, tiny
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ours, theirs = eval_transform(img_size)(img), mlaim_val_transform(img_size)(img)
        assert ours.shape == (3, img_size, img_size)
        assert torch.equal(ours, theirs), (img_size, h, w)


def test_resolve_blocks():
    model, _cfg = tiny_aim()
    assert resolve_blocks("last6", 2, model, 3) == [1, 2]
    assert resolve_blocks([2, 0], 6, model, 3) == [0, 2]
    assert all(0 <= b < 3 for b in resolve_blocks("best", 6, model, 3))
    with pytest.raises(ConfigError):
        resolve_blocks("last6", 6, model, 3)
    with pytest.raises(ConfigError):
        resolve_blocks([5], 6, model, 3)


def test_features_are_cached_and_match_the_trunk(tmp_path, monkeypatch):
    model, _cfg = tiny_aim()
    data = make_images(tmp_path / "imgs", 10, corrupt=(3,))
    path = feature_path(tmp_path / "eval", "abc" * 10, "toy", "train", [1, 2], 32, {"n": 10})
    feats, skipped = extract_split_features(model, data, path, [1, 2], 32, batch_size=4)
    assert skipped == 1 and len(feats) == 9
    assert feats.feats.dtype == torch.float16 and feats.feats.shape == (9, 16, 48)
    assert feats.labels.tolist() == [i % 3 for i in range(10) if i != 3]
    direct = model.extract_features(eval_transform(32)(data[0][0].convert("RGB"))[None], [1, 2])
    assert torch.allclose(feats.feats[0].float(), direct[0], atol=2e-2, rtol=1e-2)
    loaded, meta = load_features(path)
    assert torch.equal(loaded.feats, feats.feats) and meta["skipped_corrupt"] == "1"

    # A rerun reads the file: the trunk is never called.
    def boom(*a, **k):
        raise AssertionError("trunk called on a cached split")

    monkeypatch.setattr(model, "extract_features", boom)
    again, skipped2 = extract_split_features(model, data, path, [1, 2], 32, batch_size=4)
    assert torch.equal(again.feats, feats.feats) and skipped2 == 1
    # A different key (blocks) is a different file.
    assert feature_path(tmp_path / "eval", "abc" * 10, "toy", "train", [2], 32, {"n": 10}) != path
    assert feature_path(tmp_path / "eval", "abc" * 10, "toy", "train", [1, 2], 48, {"n": 10}) != path


def test_damaged_cache_file_is_recomputed(tmp_path):
    model, _ = tiny_aim()
    data = make_images(tmp_path / "imgs", 4)
    path = tmp_path / "f.safetensors"
    first, _ = extract_split_features(model, data, path, [2], 32)
    path.write_bytes(path.read_bytes()[:100])  # truncated, e.g. a disk-full copy
    second, _ = extract_split_features(model, data, path, [2], 32)
    assert torch.equal(first.feats, second.feats)
    assert not list(tmp_path.glob(".*.tmp*"))  # no temp files left behind


SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    torch.set_num_threads(1)
    from pathlib import Path
    from tests.test_eval_run_features import tiny_aim, make_images
    from evaluation.features import extract_split_features
    from shared.torchrun import torchrun_stage
    model, _ = tiny_aim()
    data = make_images(Path({imgs!r}), 11, corrupt=(4,))
    with torchrun_stage() as (rank, world):  # join, work, barrier, leave: as `openaim eval` runs it
        feats, skipped = extract_split_features(model, data, Path(sys.argv[1]), [0, 2], 32, batch_size=3)
    torch.save({{"feats": feats.feats, "labels": feats.labels, "skipped": skipped, "world": world}},
               sys.argv[1] + f".rank{{rank}}.pt")
""")


def run_killing_group(cmd, timeout: float, **kwargs) -> None:
    """Run a command; on timeout kill its whole process group (torchrun's workers included)."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def test_torchrun_two_processes_give_the_same_features(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(SCRIPT.format(root=str(ROOT), imgs=str(tmp_path / "imgs")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = tmp_path / "one.safetensors"
    subprocess.run([sys.executable, str(script), str(one)], check=True, env=env, cwd=tmp_path, timeout=120)
    two = tmp_path / "two.safetensors"
    run_killing_group([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       str(script), str(two)], env=env, cwd=tmp_path, timeout=150)
    ref = torch.load(str(one) + ".rank0.pt")
    assert ref["world"] == 1
    for rank in (0, 1):
        got = torch.load(str(two) + f".rank{rank}.pt")
        assert got["world"] == 2 and got["skipped"] == 1
        assert torch.allclose(got["feats"].float(), ref["feats"].float(), atol=1e-3)
        assert torch.equal(got["labels"], ref["labels"])
    assert json.dumps(load_features(two)[1]["skipped_corrupt"]) == '"1"'
