"""Training data: curated webdataset shards mixed with an ImageNet-style set, exactly per batch.

Each local batch of B images holds b_in = round(B * w_in / (w_cur + w_in)) ImageNet images and
B - b_in curated ones: the two streams are batched separately and concatenated, so every batch has the
recipe's 80/20 split (webdataset's RandomMix only holds it in expectation).

Determinism and resumption (the "data position"):
- Curated shards are split per node (`wds.split_by_node`) and then per *logical stream*; a rank has one
  logical stream per DataLoader worker, and the DataLoader hands out batches round-robin, so step k is
  made by stream k % W. Each stream reads "passes": pass p opens one shard drawn with replacement
  (resampled, so the stream never ends) by an RNG seeded from (seed, rank, stream, p), and shuffles its
  samples with a buffer seeded the same way. The position of a stream is (pass, samples taken in it);
  each batch carries the position after it, the checkpoint stores it, and a resumed stream re-opens
  that pass and skips the samples already taken without decoding them (at most one shard's worth).
- Every sample's augmentation is drawn from an RNG seeded by where the sample sits in the stream.
- An ImageNet image folder is indexed globally: the images of step k on rank r are entries
  (k * world + r) * b_in ... of a per-epoch seeded permutation, so they do not depend on the number of
  workers, and a 2-rank run sees exactly the images of a 1-rank run with the same global batch.
  (ImageNet given as webdataset shards is read like the curated shards.)
- A corrupt or missing shard, or an undecodable image, is skipped with a warning and counted.
"""

from __future__ import annotations

import glob
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shared.errors import InputError

log = logging.getLogger("openaim.training")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CURATED, IMAGENET = 1, 2  # tags mixed into RNG seeds so the two streams never share draws


def expand_shards(patterns: list[str]) -> list[str]:
    """Globs and brace patterns ("shards/{00000..00009}.tar") -> sorted list of existing paths/URLs."""
    import braceexpand

    out: list[str] = []
    for pattern in patterns:
        for item in braceexpand.braceexpand(pattern):
            if "://" in item:
                out.append(item)
            elif any(c in item for c in "*?["):
                out.extend(sorted(glob.glob(item)))
            else:
                out.append(item)
    return out


def curated_shard_list(cfg) -> list[str]:
    patterns = [cfg.expand_path(p) for p in cfg.training.data.shards] or [str(cfg.curation_dir / "shards" / "*.tar")]
    shards = expand_shards(patterns)
    if not shards:
        raise InputError(f"no training shards found at {', '.join(patterns)} (run `openaim build-dataset` "
                         "or set training.data.shards)")
    return shards


def mix_counts(local_batch: int, mix: tuple[float, float], have_imagenet: bool) -> tuple[int, int]:
    """(curated, imagenet) images per local batch."""
    if not have_imagenet:
        return local_batch, 0
    n_in = round(local_batch * mix[1] / (mix[0] + mix[1]))
    return local_batch - n_in, n_in


class BadSampleCounter:
    """A webdataset handler: warn, count, carry on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        self.count += 1
        log.warning("skipping unreadable data: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200]
                    if str(exc) else "")
        return True


def decode_image(sample: dict[str, Any]):
    from PIL import Image

    for key in IMAGE_KEYS:
        if key in sample:
            img = Image.open(io.BytesIO(sample[key]))
            img.load()
            return img
    raise ValueError(f"sample {sample.get('__key__')!r} has no image ({', '.join(IMAGE_KEYS)})")


class ShardStream:
    """An endless, seeded stream of raw webdataset samples from resampled shards (see module doc)."""

    def __init__(self, urls: list[str], seed: int, tag: int, rank: int, stream: int, shuffle_buffer: int,
                 on_error: BadSampleCounter):
        self.urls, self.seed, self.tag, self.rank, self.stream = urls, seed, tag, rank, stream
        self.shuffle_buffer = shuffle_buffer
        self.on_error = on_error

    def _rng(self, pass_index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.tag, self.rank, self.stream, pass_index])

    def _one_pass(self, pass_index: int) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import tarfile_samples

        rng = self._rng(pass_index)
        url = self.urls[int(rng.integers(len(self.urls)))]
        raw = tarfile_samples([{"url": url}], handler=self.on_error)
        buffer: list[dict[str, Any]] = []
        for sample in raw:
            if len(buffer) < max(1, self.shuffle_buffer):
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield sample
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def samples(self, start: tuple[int, int]) -> Iterator[tuple[dict[str, Any], int, int]]:
        """Yield (sample, pass, index in pass) from position `start` = (pass, samples already taken)."""
        pass_index, skip = start
        empty_passes = 0
        while True:
            got = False
            for i, sample in enumerate(self._one_pass(pass_index)):
                got = True
                if i >= skip:
                    yield sample, pass_index, i
            skip = 0
            empty_passes = 0 if got else empty_passes + 1
            if empty_passes > 20 + 2 * len(self.urls):
                raise InputError(f"no readable samples in {len(self.urls)} shard(s), e.g. {self.urls[0]}")
            pass_index += 1


class ImageFolderIndex:
    """An image-folder dataset (class sub-folders) addressed by a global, endless sample index."""

    def __init__(self, roots: list[str], seed: int):
        files: list[Path] = []
        for root in roots:
            files.extend(p for p in sorted(Path(root).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"no images found under {', '.join(roots)}")
        self.files, self.seed = files, seed
        self._perm_epoch, self._perm = -1, None

    def path(self, index: int) -> Path:
        epoch, offset = divmod(index, len(self.files))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, IMAGENET, epoch]).permutation(len(self.files))
            self._perm_epoch = epoch
        return self.files[int(self._perm[offset])]


class TrainBatches(IterableDataset):
    """Yields this rank's batches for steps start_step, start_step+1, ... (each worker every W-th one).

    Each item: {"images": [B,3,S,S] float, "step": int, "stream": int, "position": dict, "bad": int}.
    """

    def __init__(self, cfg, rank: int, world_size: int, local_batch: int, start_step: int,
                 positions: list[dict] | None, num_streams: int):
        data = cfg.training.data
        self.seed, self.rank, self.world = cfg.training.seed, rank, world_size
        self.img_size = cfg.training.model.img_size
        self.scale, self.jitter_p = tuple(data.crop_scale), data.color_jitter_p
        self.shuffle_buffer = data.shuffle_buffer
        self.start_step, self.num_streams = start_step, num_streams
        self.positions = positions or [{} for _ in range(num_streams)]
        have_in = bool(data.imagenet)
        self.n_cur, self.n_in = mix_counts(local_batch, tuple(data.mix), have_in)
        self.cur_urls = self._node_split(curated_shard_list(cfg)) if self.n_cur else []
        self.in_folder: ImageFolderIndex | None = None
        self.in_urls: list[str] = []
        if self.n_in:
            imagenet = [cfg.expand_path(p) for p in data.imagenet]
            if all(Path(p).is_dir() for p in imagenet):
                self.in_folder = ImageFolderIndex(imagenet, self.seed)
            else:
                self.in_urls = self._node_split(expand_shards(imagenet))
                if not self.in_urls:
                    raise InputError(f"no ImageNet shards found at {', '.join(imagenet)}")

    def _node_split(self, urls: list[str]) -> list[str]:
        import webdataset as wds

        # Disjoint shards per node when there are enough of them; otherwise every node resamples all.
        return list(wds.split_by_node(iter(urls))) if len(urls) >= self.world else urls

    def _stream_urls(self, urls: list[str], stream: int) -> list[str]:
        return urls[stream::self.num_streams] if len(urls) >= self.num_streams else urls

    def _sample_rng(self, *where: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *where])

    def _folder_image(self, index: int, counter: BadSampleCounter):
        """The image at a global index; an unreadable file is counted and the next index taken
        (a deterministic substitute, so resumed runs still agree)."""
        from PIL import Image

        for attempt in range(len(self.in_folder.files)):
            path = self.in_folder.path(index + attempt)
            try:
                with Image.open(path) as img:
                    img.load()
                    return img.copy()
            except Exception as exc:  # noqa: BLE001
                counter(InputError(f"{path}: {exc}"))
        raise InputError(f"no readable image in the ImageNet folder(s) {self.in_folder.files[0].parent}")

    def __iter__(self):
        from training.augment import augment

        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        assert n_workers == self.num_streams, "num_streams must equal the DataLoader's workers"
        stream = (self.start_step + worker) % n_workers
        counter = BadSampleCounter()
        saved = self.positions[stream] if stream < len(self.positions) else {}
        streams: dict[str, Iterator] = {}
        pos: dict[str, list[int]] = {}
        for name, urls, tag, n in (("curated", self.cur_urls, CURATED, self.n_cur),
                                   ("imagenet", self.in_urls, IMAGENET, self.n_in)):
            if n and urls:
                # A stream with no saved position starts at a pass derived from the step, so a changed
                # worker count still yields fresh (if no longer bit-identical) data.
                start = tuple(saved.get(name, (0 if not self.start_step else 1_000_000 + self.start_step, 0)))
                pos[name] = list(start)
                streams[name] = ShardStream(self._stream_urls(urls, stream), self.seed, tag, self.rank, stream,
                                            self.shuffle_buffer, counter).samples(start)
        step = self.start_step + worker
        reported_bad = 0
        while True:
            images: list[torch.Tensor] = []
            for name, tag, n in (("curated", CURATED, self.n_cur), ("imagenet", IMAGENET, self.n_in)):
                if name not in streams:
                    continue
                taken = 0
                while taken < n:
                    sample, p, i = next(streams[name])
                    pos[name] = [p, i + 1]
                    try:
                        img = decode_image(sample)
                    except Exception as exc:  # noqa: BLE001 - a bad image is skipped, not fatal
                        counter(exc)
                        continue
                    rng = self._sample_rng(tag, self.rank, stream, p, i)
                    images.append(augment(img, self.img_size, rng, self.scale, self.jitter_p))
                    taken += 1
            if self.in_folder is not None:
                base = (step * self.world + self.rank) * self.n_in
                for j in range(self.n_in):
                    index = base + j
                    img = self._folder_image(index, counter)
                    images.append(augment(img, self.img_size, self._sample_rng(IMAGENET, index),
                                          self.scale, self.jitter_p))
            yield {"images": torch.stack(images), "step": step, "stream": stream,
                   "position": {k: list(v) for k, v in pos.items()}, "bad": counter.count - reported_bad}
            reported_bad = counter.count
            step += n_workers


def build_loader(cfg, rank: int, world_size: int, local_batch: int, start_step: int,
                 positions: list[dict] | None, pin_memory: bool = False) -> tuple[DataLoader, int]:
    """The DataLoader over `TrainBatches`, and its number of logical streams (= max(1, workers))."""
    workers = cfg.training.data.num_workers
    num_streams = max(1, workers)
    dataset = TrainBatches(cfg, rank, world_size, local_batch, start_step, positions, num_streams)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=2 if workers else None, persistent_workers=False)
    return loader, num_streams
