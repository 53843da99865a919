"""Training data: exact mix per batch, deterministic resumable streams, bad shards skipped and counted."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch

from shared.config.loading import load_config
from shared.config.root import OpenAIMConfig
from shared.errors import InputError
from training.augment import augment, crop_box
from training.data import TrainBatches, build_loader, mix_counts
from training.shards import curated_shard_list, imagenet_sources
from training.synthetic import write_image_folder, write_synthetic_shards


def _cfg(tmp_path: Path, shards: list[str], imagenet: list[str] = (), mix=(0.8, 0.2), workers: int = 0,
         extra: list[str] = ()):
    sets = [f"workdir={tmp_path / 'run'}", f"training.data.shards={list(shards)}",
            f"training.data.imagenet={list(imagenet)}", f"training.data.mix={list(mix)}",
            f"training.data.num_workers={workers}", "training.data.shuffle_buffer=8", *extra]
    return load_config(None, sets)


def _batches(cfg: OpenAIMConfig, rank: int, world: int, batch: int, start: int = 0, positions=None,
             streams: int = 1):
    """TrainBatches for a global batch of `batch` * `world` images (the edge resolves the paths)."""
    tcfg = cfg.training.model_copy(update={"global_batch_size": batch * world})
    curated = curated_shard_list(cfg.training.data.shards) if cfg.training.data.shards else []
    imagenet = imagenet_sources(cfg.training.data.imagenet)
    return TrainBatches(tcfg, curated, imagenet, rank, world, start, positions, streams)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    return [str(p) for p in write_synthetic_shards(root, n_shards=3, per_shard=12, size=48, seed=0)]


def _take(dataset, n):
    return list(itertools.islice(iter(dataset), n))


def test_imagenet_share_is_exact_per_global_batch_at_any_world_size():
    for world in (1, 2, 3, 4):
        for local in (1, 3, 5, 7, 9, 13, 64):
            gb = local * world
            counts = [mix_counts(gb, world, r, (0.8, 0.2), True) for r in range(world)]
            assert sum(n_in for _, n_in, _ in counts) == round(gb * 0.2), (world, gb)
            assert all(cur + n_in == local for cur, n_in, _ in counts)
            # contiguous, non-overlapping slots of the global ImageNet count
            assert [off for _, _, off in counts] == [sum(c[1] for c in counts[:r]) for r in range(world)]
    assert mix_counts(64, 1, 0, (0.8, 0.2), True) == (51, 13, 0)
    assert mix_counts(10, 1, 0, (0.8, 0.2), False) == (10, 0, 0)
    assert mix_counts(8, 2, 1, (0.0, 1.0), True) == (0, 4, 4)


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
    full = _take(_batches(cfg, 0, 1, 10), 8)
    assert [b["step"] for b in full] == list(range(8))
    assert all(b["images"].shape == (10, 3, 64, 64) and b["images"].dtype == torch.uint8 for b in full)
    # Batches differ from each other, and the stream crosses shard windows (12 samples per shard).
    assert not torch.equal(full[0]["images"], full[1]["images"])
    assert full[7]["position"]["curated"]["k"] >= 3
    # Resume after step 4 with the recorded position: the same batches, bit for bit.
    resumed = _take(_batches(cfg, 0, 1, 10, 5, [full[4]["position"]]), 3)
    for a, b in zip(full[5:], resumed, strict=True):
        assert a["step"] == b["step"] and torch.equal(a["images"], b["images"])
    # Another seed gives other data.
    other = _take(_batches(_cfg(tmp_path, shards, extra=["training.seed=1"]), 0, 1, 10), 1)
    assert not torch.equal(other[0]["images"], full[0]["images"])


def test_two_workers_round_robin_and_resume(tmp_path, shards):
    cfg = _cfg(tmp_path, shards, workers=2)
    tcfg = cfg.training.model_copy(update={"global_batch_size": 6})
    loader = build_loader(tcfg, shards, [], 0, 1, 0, None)
    full = list(itertools.islice(iter(loader), 6))
    assert [b["step"] for b in full] == list(range(6))
    assert [b["stream"] for b in full] == [0, 1, 0, 1, 0, 1]
    positions = [full[2]["position"], full[3]["position"]]  # after step 3
    loader2 = build_loader(tcfg, shards, [], 0, 1, 4, positions)
    resumed = list(itertools.islice(iter(loader2), 2))
    assert [b["step"] for b in resumed] == [4, 5]
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["images"], b["images"])


def test_imagenet_folder_mix_and_global_indexing(tmp_path, shards):
    folder = write_image_folder(tmp_path / "imnet", n_classes=3, per_class=5, size=40)
    cfg = _cfg(tmp_path, shards, [str(folder)], mix=(0.8, 0.2))
    batch = _take(_batches(cfg, 0, 1, 10), 1)[0]
    assert batch["images"].shape[0] == 10 and set(batch["position"]) == {"curated"}
    # ImageNet-only: rank r of 2 with batch 4 sees exactly the slice of a 1-rank batch of 8.
    cfg_in = _cfg(tmp_path, [], [str(folder)], mix=(0.0, 1.0))
    one = _take(_batches(cfg_in, 0, 1, 8), 3)
    two = [_take(_batches(cfg_in, r, 2, 4), 3) for r in range(2)]
    for step in range(3):
        joined = torch.cat([two[0][step]["images"], two[1][step]["images"]])
        assert torch.equal(joined, one[step]["images"])
    # 0.8/0.2 on 3 ranks of 3 images: 2 of the 9 are ImageNet, the slots of a 1-rank batch of 9.
    cfg_mix = _cfg(tmp_path, shards, [str(folder)], mix=(0.8, 0.2))
    three = [_batches(cfg_mix, r, 3, 3) for r in range(3)]
    assert [(b.n_cur, b.n_in) for b in three] == [(2, 1), (2, 1), (3, 0)]


def test_corrupt_and_missing_shards_are_skipped_and_counted(tmp_path, shards):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    missing = tmp_path / "missing.tar"  # listed, then gone before it is read
    missing.write_bytes(Path(shards[2]).read_bytes())
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(Path(shards[1]).read_bytes()[:5000])  # cut inside a member
    cfg = _cfg(tmp_path, [str(bad), str(missing), str(truncated), shards[0]])
    dataset = _batches(cfg, 0, 1, 8)
    missing.unlink()
    batches = _take(dataset, 6)
    assert sum(b["bad"] for b in batches) >= 1
    assert all(b["images"].shape[0] == 8 for b in batches)


def test_unreadable_folder_image_is_replaced_deterministically(tmp_path):
    folder = write_image_folder(tmp_path / "imnet", n_classes=2, per_class=4, size=40)
    (folder / "class000" / "0001.jpg").write_bytes(b"not a jpeg")
    cfg = _cfg(tmp_path, [], [str(folder)], mix=(0.0, 1.0))
    first = _take(_batches(cfg, 0, 1, 8), 2)
    second = _take(_batches(cfg, 0, 1, 8), 2)
    assert sum(b["bad"] for b in first) >= 1
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(first, second, strict=True))


def test_only_unreadable_shards_is_one_error(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"garbage" * 10)
    cfg = _cfg(tmp_path, [str(bad)])
    with pytest.raises(InputError, match="no readable samples"):
        _take(_batches(cfg, 0, 1, 4), 1)


def test_no_shards_is_one_error(tmp_path):
    with pytest.raises(InputError, match="no training shards found"):
        curated_shard_list([str(tmp_path / "run" / "curation" / "shards" / "*.tar")])


def test_imagenet_as_shards_has_its_own_resumable_position(tmp_path, shards):
    in_shards = write_synthetic_shards(tmp_path / "in", n_shards=2, per_shard=6, size=40, seed=9)
    cfg = _cfg(tmp_path, shards, [str(tmp_path / "in" / "*.tar")], mix=(0.75, 0.25))
    full = _take(_batches(cfg, 0, 1, 8), 6)
    assert set(full[0]["position"]) == {"curated", "imagenet"}
    assert full[0]["position"]["curated"]["taken"] == 6 and full[0]["position"]["imagenet"]["taken"] == 2
    resumed = _take(_batches(cfg, 0, 1, 8, 3, [full[2]["position"]]), 3)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(full[3:], resumed, strict=True))
    assert len(in_shards) == 2


def test_shards_are_a_permutation_per_epoch_and_the_shuffle_spans_shards(tmp_path, shards):
    from training.shards import BadSampleCounter, ShardReader, fresh_position, resplit_positions

    more = [str(p) for p in write_synthetic_shards(tmp_path / "more", n_shards=3, per_shard=12, size=16,
                                                   seed=4)]
    urls = shards + more  # 6 shards x 12 samples
    readers = [ShardReader(urls, 0, 1, g, 20, BadSampleCounter()) for g in range(3)]
    # one epoch = 72 samples; each reader's first window holds 2 shards (>= 20 samples): visits g, g + 3
    keys, windows = [], set()
    for g, reader in enumerate(readers):
        for sample, after, visit in itertools.islice(reader.samples(fresh_position(0, 3)), 24):
            keys.append((sample["__url__"], sample["__key__"]))
            windows.add((g, visit, after["next_k"] - after["k"]))
    assert len(set(keys)) == 72  # every sample of every shard exactly once: no shard drawn twice
    assert all(span == 2 for _, _, span in windows)  # a window spans two shards
    epoch0 = [readers[0].shard_at(v) for v in range(6)]
    assert sorted(epoch0) == sorted(urls) and epoch0 != [readers[0].shard_at(v) for v in range(6, 12)]
    old = [[{"curated": {"base": 0, "readers": 2, "k": 2, "next_k": 4, "taken": 5, "reader": g}}]
           for g in range(2)]
    assert resplit_positions(old, 2, 1, ["curated"]) == old  # unchanged world: exact positions


def _draw(reader, position, n=None, until_visit=None):
    """(visit, key) of the samples a reader yields from `position`, and its position after the last."""
    got, last = [], position
    if n == 0:
        return got, last
    for sample, after, _ in reader.samples(position):
        if until_visit is not None and sample["__visit__"] >= until_visit:
            break
        got.append((sample["__visit__"], sample["__key__"]))
        last = after
        if n is not None and len(got) == n:
            break
    return got, last


def test_a_resplit_resume_reads_every_sample_of_every_epoch_exactly_once(tmp_path, shards):
    """2 readers at uneven progress -> 3 readers -> 1 reader: over the first 3 epochs every sample is
    read exactly once (open windows replayed minus what was yielded, unopened positions handed over),
    and a reader resumed at the same split mid-replay continues bit for bit."""
    from collections import Counter

    from training.shards import BadSampleCounter, ShardReader, fresh_position, resplit_positions

    more = [str(p) for p in write_synthetic_shards(tmp_path / "more", n_shards=3, per_shard=12, size=16,
                                                   seed=4)]
    urls = shards + more  # 6 shards x 12 samples; windows of 20 hold 2 shards
    limit = 3 * len(urls)  # visit positions of the first 3 epochs

    def reader(g):
        return ShardReader(urls, 0, 1, g, 20, BadSampleCounter())

    def split(positions, world):
        return [r[0]["curated"] for r in resplit_positions([[{"curated": p}] for p in positions], world, 1,
                                                            ["curated"])]

    seen = []
    old = []
    for g, n in enumerate((31, 7)):  # reader 1 lags: it has opened 2 shards, reader 0 has 4
        got, after = _draw(reader(g), {**fresh_position(0, 2), "reader": g}, n)
        seen += got
        old.append({**after, "reader": g})
    middle = []
    for g, (position, n) in enumerate(zip(split(old, 3), (5, 13, 0), strict=True)):
        got, after = _draw(reader(g), position, n)
        seen += got
        middle.append({**after, "reader": g})
    # The same split resumed mid-replay continues exactly.
    again, _ = _draw(reader(1), middle[1], 10)
    cont, _ = _draw(reader(1), split(old, 3)[1], 23)
    assert again == cont[13:]
    (last,) = split(middle, 1)
    got, _ = _draw(reader(0), last, until_visit=limit)
    seen += [x for x in got if x[0] < limit]
    counts = Counter(x for x in seen if x[0] < limit)
    keys = {v: [s["__key__"] for s in _draw_shard(urls, reader(0).shard_at(v))] for v in range(limit)}
    assert set(counts) == {(v, k) for v, ks in keys.items() for k in ks}
    assert set(counts.values()) == {1}, [x for x, c in counts.items() if c > 1][:5]


def _draw_shard(urls, url):
    from shared.wds_reader import read_samples

    return list(read_samples(url))


def test_missing_brace_expanded_shards_are_one_error_naming_them(tmp_path, shards):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "s-0000.tar").write_bytes(Path(shards[0]).read_bytes())
    pattern = str(folder / "s-{0000..0002}.tar")
    with pytest.raises(InputError, match=r"2 of the 3 shards .* do not exist: .*s-0001.tar, .*s-0002.tar"):
        curated_shard_list([pattern])
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "openaim", "train", "--set", f"workdir={tmp_path / 'run'}",
           "--set", f"training.data.shards=['{pattern}']"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and "s-0001.tar" in lines[0], done.stderr
    assert not (tmp_path / "run" / "training" / "checkpoints").exists()


def test_device_color_jitter_matches_torchvision_per_image():
    """The batched jitter (per-image factors and op order) equals torchvision's tensor ColorJitter ops
    applied image by image in that order; apply flag 0 leaves an image as it was."""
    import numpy as np
    import torchvision.transforms.functional as TF

    from training.augment import color_jitter, draw_jitter

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 24, generator=gen)
    x[0, :, :4] = 0.5  # grey pixels: zero chroma, the hue conversion's special case
    params = torch.stack([draw_jitter(np.random.default_rng(i), 0.8) for i in range(6)])
    params[1, 0] = 0.0
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    got = color_jitter(x, params)
    for i in range(6):
        ref = x[i]
        if params[i, 0] > 0:
            for k in params[i, 5:].long().tolist():
                ref = ops[k](ref, float(params[i, 1 + k]))
        torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=0)
    assert torch.equal(got[1], x[1]) and not torch.equal(got[0], x[0])
    assert sorted(params[2, 5:].tolist()) == [0, 1, 2, 3]


def test_jitter_on_the_device_draws_the_same_augmentation_as_in_the_workers(tmp_path, shards):
    """GPU runs leave the colour jitter to the device: the same draws, applied in float instead of
    PIL's uint8 steps, so the model inputs agree up to PIL's rounding."""
    from training.augment import to_model_input

    cfg = _cfg(tmp_path, shards)
    tcfg = cfg.training.model_copy(update={"global_batch_size": 8})
    host, device = (next(iter(TrainBatches(tcfg, shards, [], 0, 1, 0, None, 1, jitter_on_device=flag)))
                    for flag in (False, True))
    assert host["jitter"][:, 0].sum() == 0 and device["jitter"][:, 0].sum() > 0  # applied where drawn
    assert torch.equal(host["jitter"][:, 1:], device["jitter"][:, 1:])
    a = to_model_input(host["images"], host["jitter"])
    b = to_model_input(device["images"], device["jitter"])
    # In normalised units (1/255 of a pixel is ~0.017): PIL rounds to uint8 after every op and its hue
    # works on 8-bit HSV, so the two differ by ~1.4/255 on average, ~12/255 at worst (measured).
    diff = (a - b).abs()
    assert diff.mean() < 0.04 and diff.max() < 0.3, (diff.mean(), diff.max())
