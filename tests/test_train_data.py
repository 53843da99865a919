"""Training data: exact mix per batch, deterministic resumable streams, bad shards skipped and counted."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from shared.config.loading import load_config
from shared.errors import InputError
from training.augment import augment, crop_box
from training.data import TrainBatches, build_loader, mix_counts
from training.synthetic import write_image_folder, write_synthetic_shards


def _cfg(tmp_path: Path, shards: list[str], imagenet: list[str] = (), mix=(0.8, 0.2), workers: int = 0):
    sets = [f"workdir={tmp_path / 'run'}", f"training.data.shards={list(shards)}",
            f"training.data.imagenet={list(imagenet)}", f"training.data.mix={list(mix)}",
            f"training.data.num_workers={workers}", "training.data.shuffle_buffer=8"]
    return load_config(None, sets)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    return [str(p) for p in write_synthetic_shards(root, n_shards=3, per_shard=12, size=48, seed=0)]


def _take(dataset, n):
    return list(itertools.islice(iter(dataset), n))


def test_mix_counts_are_exact_per_batch():
    assert mix_counts(64, (0.8, 0.2), True) == (51, 13)
    assert mix_counts(10, (0.8, 0.2), True) == (8, 2)
    assert mix_counts(10, (0.8, 0.2), False) == (10, 0)
    assert mix_counts(8, (0.0, 1.0), True) == (0, 8)


def test_augment_is_a_function_of_its_seed():
    import numpy as np
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).uniform(0, 255, (50, 70, 3))).astype("uint8"))
    a = augment(img, 32, np.random.default_rng(5))
    b = augment(img, 32, np.random.default_rng(5))
    c = augment(img, 32, np.random.default_rng(6))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(50):
        top, left, h, w = crop_box(70, 50, (0.4, 1.0), np.random.default_rng(seed))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 70
        assert h * w >= 0.4 * 70 * 50 * 0.9


def test_stream_resumes_exactly_from_a_position(tmp_path, shards):
    cfg = _cfg(tmp_path, shards)
    full = _take(TrainBatches(cfg, 0, 1, 10, 0, None, 1), 8)
    assert [b["step"] for b in full] == list(range(8))
    assert all(b["images"].shape == (10, 3, 64, 64) for b in full)
    # Batches differ from each other, and the stream crosses shard passes (12 samples per shard).
    assert not torch.equal(full[0]["images"], full[1]["images"])
    assert full[7]["position"]["curated"][0] >= 3
    # Resume after step 4 with the recorded position: the same batches, bit for bit.
    resumed = _take(TrainBatches(cfg, 0, 1, 10, 5, [full[4]["position"]], 1), 3)
    for a, b in zip(full[5:], resumed):
        assert a["step"] == b["step"] and torch.equal(a["images"], b["images"])
    # Another seed gives other data.
    other = _take(TrainBatches(load_config(None, [f"workdir={tmp_path}", f"training.data.shards={shards}",
                                                  "training.seed=1", "training.data.num_workers=0"]),
                               0, 1, 10, 0, None, 1), 1)
    assert not torch.equal(other[0]["images"], full[0]["images"])


def test_two_workers_round_robin_and_resume(tmp_path, shards):
    cfg = _cfg(tmp_path, shards, workers=2)
    loader, streams = build_loader(cfg, 0, 1, 6, 0, None)
    assert streams == 2
    full = list(itertools.islice(iter(loader), 6))
    assert [b["step"] for b in full] == list(range(6))
    assert [b["stream"] for b in full] == [0, 1, 0, 1, 0, 1]
    positions = [full[2]["position"], full[3]["position"]]  # after step 3
    loader2, _ = build_loader(cfg, 0, 1, 6, 4, positions)
    resumed = list(itertools.islice(iter(loader2), 2))
    assert [b["step"] for b in resumed] == [4, 5]
    for a, b in zip(full[4:], resumed):
        assert torch.equal(a["images"], b["images"])


def test_imagenet_folder_mix_and_global_indexing(tmp_path, shards):
    folder = write_image_folder(tmp_path / "imnet", n_classes=3, per_class=5, size=40)
    cfg = _cfg(tmp_path, shards, [str(folder)], mix=(0.8, 0.2))
    batch = _take(TrainBatches(cfg, 0, 1, 10, 0, None, 1), 1)[0]
    assert batch["images"].shape[0] == 10 and set(batch["position"]) == {"curated"}
    # ImageNet-only: rank r of 2 with batch 4 sees exactly the slice of a 1-rank batch of 8.
    cfg_in = _cfg(tmp_path, [], [str(folder)], mix=(0.0, 1.0))
    one = _take(TrainBatches(cfg_in, 0, 1, 8, 0, None, 1), 3)
    two = [_take(TrainBatches(cfg_in, r, 2, 4, 0, None, 1), 3) for r in range(2)]
    for step in range(3):
        joined = torch.cat([two[0][step]["images"], two[1][step]["images"]])
        assert torch.equal(joined, one[step]["images"])


def test_corrupt_and_missing_shards_are_skipped_and_counted(tmp_path, shards):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    missing = str(tmp_path / "missing.tar")
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(shards[1]).read_bytes()[:5000])  # cut inside a member
    cfg = _cfg(tmp_path, [str(bad), missing, str(truncated), shards[0]])
    batches = _take(TrainBatches(cfg, 0, 1, 8, 0, None, 1), 6)
    assert sum(b["bad"] for b in batches) >= 1
    assert all(b["images"].shape[0] == 8 for b in batches)


def test_unreadable_folder_image_is_replaced_deterministically(tmp_path):
    folder = write_image_folder(tmp_path / "imnet", n_classes=2, per_class=4, size=40)
    (folder / "class000" / "0001.jpg").write_bytes(b"not a jpeg")
    cfg = _cfg(tmp_path, [], [str(folder)], mix=(0.0, 1.0))
    first = _take(TrainBatches(cfg, 0, 1, 8, 0, None, 1), 2)
    second = _take(TrainBatches(cfg, 0, 1, 8, 0, None, 1), 2)
    assert sum(b["bad"] for b in first) >= 1
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(first, second))


def test_only_unreadable_shards_is_one_error(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 10)
    cfg = _cfg(tmp_path, [str(bad)])
    with pytest.raises(InputError, match="no readable samples"):
        _take(TrainBatches(cfg, 0, 1, 4, 0, None, 1), 1)


def test_no_shards_is_one_error(tmp_path):
    cfg = _cfg(tmp_path, [])  # empty -> the curation stage's shards, which do not exist here
    with pytest.raises(InputError, match="no training shards found"):
        TrainBatches(cfg, 0, 1, 4, 0, None, 1)


def test_imagenet_as_shards_has_its_own_resumable_position(tmp_path, shards):
    in_shards = write_synthetic_shards(tmp_path / "in", n_shards=2, per_shard=6, size=40, seed=9)
    cfg = _cfg(tmp_path, shards, [str(tmp_path / "in" / "*.tar")], mix=(0.75, 0.25))
    full = _take(TrainBatches(cfg, 0, 1, 8, 0, None, 1), 6)
    assert set(full[0]["position"]) == {"curated", "imagenet"}
    assert full[0]["position"]["curated"][1] == 6 and full[0]["position"]["imagenet"][1] == 2
    resumed = _take(TrainBatches(cfg, 0, 1, 8, 3, [full[2]["position"]], 1), 3)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(full[3:], resumed))
    assert len(in_shards) == 2
