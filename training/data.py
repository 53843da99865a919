"""Training data: curated webdataset shards mixed with an ImageNet-style set, exactly per global batch.

The mix. Of the G images of a global batch, round(G * w_in / (w_cur + w_in)) come from ImageNet (20%
for the recipe's 0.8/0.2), at any world size: the ImageNet count is split over the ranks (the first
n_in % world ranks take one more) and each rank fills the rest of its G / world images from the
curated shards (`mix_counts`). The two streams are batched separately and concatenated.

Streams. A rank has one logical stream per DataLoader worker (at least one); the DataLoader hands out
batches round-robin, so step k is made by stream k % S. Each stream reads each source's shards
through its own reader (training/shards.py: listing, shard order, shuffle windows, resume positions).

ImageNet as an image folder is indexed globally: step k's ImageNet images are the slots
k * n_in ... (k + 1) * n_in - 1 of a per-epoch seeded permutation, rank r taking its contiguous
part, so the images of a step do not depend on the world size or the workers. The index is compact
(a `StringTable` from torchvision's `make_dataset` scanner), cheap to copy to workers; training
builds it once on rank 0 and broadcasts it.

Every sample's augmentation draws from an RNG seeded by where the sample sits (source, visit
position, index in window / global slot). Batches leave the workers as uint8 [B, 3, S, S] with the
colour-jitter parameters; the loop normalises (and, on GPU runs, jitters) on the device.
A corrupt or missing shard, or an undecodable image, is skipped with a warning and counted.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from shared.config.training import TrainingConfig
from shared.errors import InputError
from training.augment import augment_uint8
from training.shards import BadSampleCounter, ShardReader, StringTable, resplit_positions

log = logging.getLogger("openaim.training")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CURATED, IMAGENET = 1, 2  # tags mixed into RNG seeds so the two sources never share draws
SOURCES = {"curated": CURATED, "imagenet": IMAGENET}


def global_imagenet_count(global_batch: int, mix: tuple[float, float], have_imagenet: bool) -> int:
    if not have_imagenet:
        return 0
    return round(global_batch * mix[1] / (mix[0] + mix[1]))


def mix_counts(global_batch: int, world_size: int, rank: int, mix: tuple[float, float],
               have_imagenet: bool) -> tuple[int, int, int]:
    """(curated, imagenet, imagenet offset) for `rank`: the ImageNet share is exact per global batch."""
    local = global_batch // world_size
    n_in = global_imagenet_count(global_batch, mix, have_imagenet)
    base, extra = divmod(n_in, world_size)
    mine = min(local, base + (rank < extra))
    offset = rank * base + min(rank, extra)
    return local - mine, mine, offset


def decode_image(sample: dict[str, Any]) -> Image.Image:
    for key in IMAGE_KEYS:
        if key in sample:
            img = Image.open(io.BytesIO(sample[key]))
            img.load()
            return img
    raise ValueError(f"sample {sample.get('__key__')!r} has no image ({', '.join(IMAGE_KEYS)})")


class ImageNetIndex:
    """An image-folder set (class sub-folders, scanned by torchvision's `make_dataset`) addressed by a
    global, endless slot index through per-epoch seeded permutations. Paths live in a `StringTable`."""

    def __init__(self, roots: list[str], seed: int):
        paths: list[str] = []
        for root in roots:
            _, class_to_idx = find_classes(root)
            paths.extend(path for path, _ in make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS,
                                                          allow_empty=True))
        if not paths:
            raise InputError(f"no images found under {', '.join(roots)}")
        self._files = StringTable(paths)
        self.seed = seed
        self._perm_epoch, self._perm = -1, np.arange(0)

    def __len__(self) -> int:
        return len(self._files)

    def file(self, i: int) -> str:
        return self._files[i]

    def path(self, slot: int) -> str:
        epoch, offset = divmod(slot, len(self))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, IMAGENET, epoch]).permutation(len(self))
            self._perm_epoch = epoch
        return self.file(int(self._perm[offset]))


def _table(strings) -> StringTable:
    return strings if isinstance(strings, StringTable) else StringTable(list(strings))


class TrainBatches(IterableDataset):
    """Yields this rank's batches for steps start_step, start_step+1, ... (each worker every S-th one).

    Each item: {"images": [B,3,S,S] uint8, "jitter": [B,9] colour-jitter parameters (applied on the
    device by training.augment.to_model_input when `jitter_on_device`, else already applied here),
    "step": int, "stream": int, "position": dict, "bad": int}.
    `curated` are the curated shard URLs (`curated_shard_list`); `imagenet` image folders (or their
    `ImageNetIndex`) or shard paths (`imagenet_sources`): the edge lists them once (rank 0 in
    training), this class only indexes.
    """

    def __init__(self, tcfg: TrainingConfig, curated: list[str], imagenet: list[str], rank: int,
                 world_size: int, start_step: int, positions: list[dict] | None, num_streams: int,
                 jitter_on_device: bool = False):
        data = tcfg.data
        self.seed, self.rank, self.world = tcfg.seed, rank, world_size
        self.img_size = tcfg.model.img_size
        self.scale, self.jitter_p = tuple(data.crop_scale), data.color_jitter_p
        self.jitter_on_device = jitter_on_device
        self.shuffle_buffer = data.shuffle_buffer
        self.start_step, self.num_streams = start_step, num_streams
        self.n_in_global = global_imagenet_count(tcfg.global_batch_size, tuple(data.mix), bool(imagenet))
        self.n_cur, self.n_in, self.in_offset = mix_counts(tcfg.global_batch_size, world_size, rank,
                                                           tuple(data.mix), bool(imagenet))
        if self.n_cur and not curated:
            raise InputError("no training shards given (training.data.shards)")
        self.cur_urls = _table(curated if self.n_cur else [])
        self.in_folder: ImageNetIndex | None = None
        self.in_urls = _table([])
        if self.n_in_global and imagenet:
            if isinstance(imagenet, ImageNetIndex):
                self.in_folder = imagenet
            elif not isinstance(imagenet, StringTable) and all(Path(p).is_dir() for p in imagenet):
                self.in_folder = ImageNetIndex(list(imagenet), self.seed)
            else:
                self.in_urls = _table(imagenet)
        self.sources = [name for name, urls, n in (("curated", self.cur_urls, self.n_cur),
                                                   ("imagenet", self.in_urls, self.n_in)) if urls and n]
        if positions is None:
            positions = resplit_positions(None, world_size, num_streams, self.sources)[rank]
        self.positions = positions

    def _folder_image(self, slot: int, counter: BadSampleCounter) -> Image.Image:
        """The image at a global slot; an unreadable file is counted and the next slot taken
        (a deterministic substitute, so resumed runs still agree)."""
        for attempt in range(len(self.in_folder)):
            path = self.in_folder.path(slot + attempt)
            try:
                with Image.open(path) as img:
                    img.load()
                    return img.copy()
            except Exception as exc:  # noqa: BLE001
                counter(InputError(f"{path}: {exc}"))
        raise InputError(f"no readable image in the ImageNet folder(s) {self.in_folder.file(0)}")

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        if n_workers != self.num_streams:
            raise RuntimeError("num_streams must equal the DataLoader's workers")
        stream = (self.start_step + worker) % n_workers
        counter = BadSampleCounter()
        reader = self.rank * self.num_streams + stream
        streams: dict[str, Iterator] = {}
        pos: dict[str, dict[str, int]] = {}
        for name in self.sources:
            urls = self.cur_urls if name == "curated" else self.in_urls
            start = dict(self.positions[stream][name])
            start.pop("reader", None)
            pos[name] = start
            streams[name] = ShardReader(urls, self.seed, SOURCES[name], reader, self.shuffle_buffer,
                                        counter).samples(start)
        counts = {"curated": self.n_cur, "imagenet": self.n_in}
        step = self.start_step + worker
        reported_bad = 0
        while True:
            images: list[torch.Tensor] = []
            jitter: list[torch.Tensor] = []
            for name in self.sources:
                taken = 0
                while taken < counts[name]:
                    sample, after, visit = next(streams[name])
                    pos[name] = after
                    try:
                        img = decode_image(sample)
                    except Exception as exc:  # noqa: BLE001 - a bad image is skipped, not fatal
                        counter(exc)
                        continue
                    rng = np.random.default_rng([self.seed, SOURCES[name], visit, after["taken"]])
                    image, params = augment_uint8(img, self.img_size, rng, self.scale, self.jitter_p,
                                                  self.jitter_on_device)
                    images.append(image)
                    jitter.append(params)
                    taken += 1
            if self.in_folder is not None:
                first = step * self.n_in_global + self.in_offset
                for slot in range(first, first + self.n_in):
                    img = self._folder_image(slot, counter)
                    rng = np.random.default_rng([self.seed, IMAGENET, slot])
                    image, params = augment_uint8(img, self.img_size, rng, self.scale, self.jitter_p,
                                                  self.jitter_on_device)
                    images.append(image)
                    jitter.append(params)
            yield {"images": torch.stack(images), "jitter": torch.stack(jitter), "step": step,
                   "stream": stream,
                   "position": {k: {**v, "reader": reader} for k, v in pos.items()},
                   "bad": counter.count - reported_bad}
            reported_bad = counter.count
            step += n_workers


def build_loader(tcfg: TrainingConfig, curated: list[str], imagenet: list[str], rank: int, world_size: int,
                 start_step: int, positions: list[dict] | None, pin_memory: bool = False) -> DataLoader:
    """The DataLoader over `TrainBatches`: max(1, num_workers) streams. For a CUDA trainer
    (`pin_memory`) batches are pinned and the colour jitter is left to the device."""
    workers = tcfg.data.num_workers
    dataset = TrainBatches(tcfg, curated, imagenet, rank, world_size, start_step, positions, max(1, workers),
                           jitter_on_device=pin_memory)
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, persistent_workers=False)
