"""Datasets of (PIL RGB image, int label) that survive corrupt images.

Corrupt-image policy (chosen once, for every benchmark): reading is lazy, and an image that cannot be
decoded makes ``__getitem__`` return ``None`` instead of raising. The dataset counts it in ``.skipped``
(and remembers the index in ``.skipped_indices``). Inside DataLoader worker processes those counters
live in the workers' copies, so batch with ``collate_skip_none``, which also returns how many items of
the batch were dropped: sum that in the main process.

Every dataset also carries ``.labels`` (numpy int64, one per item, known without decoding an image:
the val carve and the caps are stratified with it) and ``.classes`` (names, index = label).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

log = logging.getLogger("openaim.eval")


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    # PIL raises OSError for truncated/unknown data, SyntaxError/ValueError for some broken headers,
    # DecompressionBombError (not an OSError) for absurd sizes; a missing file is an OSError too.
    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class LabelledImages(Dataset):
    """Base class: subclasses implement ``read_image(index) -> PIL.Image``."""

    def __init__(self, labels: Sequence[int] | np.ndarray, classes: Sequence[str]):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = [str(c) for c in classes]
        self.skipped = 0
        self.skipped_indices: set[int] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def read_image(self, index: int):
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"item {index}"

    def item_keys(self) -> list[str]:
        """A stable identifier per item (the file path where there is one): tests and callers use it to
        check that splits do not overlap."""
        return [f"#{i}" for i in range(len(self))]

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        try:
            image = self.read_image(index)
            image = image.convert("RGB")  # convert() forces the full decode, so truncation shows here
        except _unreadable_errors() as exc:
            if index not in self.skipped_indices:
                self.skipped_indices.add(index)
                self.skipped += 1
                log.warning("skipping unreadable image (%s): %s", self.describe(index), exc)
            return None
        return image, int(self.labels[index])


class FileImages(LabelledImages):
    """One image file per item (image folders, json/csv/txt-indexed layouts)."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], classes: Sequence[str]):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        super().__init__(labels, classes)
        self.paths = [str(p) for p in paths]

    def read_image(self, index: int):
        return Image.open(self.paths[index])

    def describe(self, index: int) -> str:
        return self.paths[index]

    def item_keys(self) -> list[str]:
        return list(self.paths)


class ArrayImages(LabelledImages):
    """Images already in memory as a uint8 array [N, H, W] or [N, H, W, 3] (CIFAR, digits)."""

    def __init__(
        self,
        pixels: np.ndarray,
        labels: Sequence[int],
        classes: Sequence[str],
        keys: Sequence[str] | None = None,
    ):
        super().__init__(labels, classes)
        if len(pixels) != len(self.labels):
            raise ValueError("pixels and labels differ in length")
        self.pixels = pixels
        self.keys = [str(k) for k in keys] if keys is not None else None

    def item_keys(self) -> list[str]:
        return list(self.keys) if self.keys is not None else super().item_keys()

    def read_image(self, index: int):
        return Image.fromarray(self.pixels[index])


class TorchvisionImages(LabelledImages):
    """A torchvision dataset (download=False) whose items are (PIL image, label)."""

    def __init__(
        self, dataset: Any, labels: Sequence[int], classes: Sequence[str], keys: Sequence[str] | None = None
    ):
        super().__init__(labels, classes)
        self.dataset = dataset
        self.keys = [str(k) for k in keys] if keys is not None else None

    def read_image(self, index: int):
        return self.dataset[index][0]

    def describe(self, index: int) -> str:
        return self.keys[index] if self.keys is not None else f"item {index}"

    def item_keys(self) -> list[str]:
        return list(self.keys) if self.keys is not None else super().item_keys()


class TarMemberImages(LabelledImages):
    """Images stored as members of tar files (webdataset shards), read by offset: random access."""

    def __init__(
        self, members: Sequence[tuple[str, int, int]], labels: Sequence[int], classes: Sequence[str]
    ):
        super().__init__(labels, classes)
        self.members = list(members)  # (tar path, data offset, size)

    def read_image(self, index: int):
        path, offset, size = self.members[index]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return Image.open(io.BytesIO(data))

    def describe(self, index: int) -> str:
        path, offset, _ = self.members[index]
        return f"{path}@{offset}"

    def item_keys(self) -> list[str]:
        return [self.describe(i) for i in range(len(self))]


class SplitView(Dataset):
    """The items of ``base`` at ``indices`` (a split, a carved val, a capped train)."""

    def __init__(self, base: LabelledImages, indices: Sequence[int] | np.ndarray, split: str = ""):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[self.indices]
        self.classes = base.classes
        self.split = split

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]

    def item_keys(self) -> list[str]:
        keys = self.base.item_keys()
        return [keys[i] for i in self.indices]

    @property
    def skipped(self) -> int:
        return len(self.skipped_indices)

    @property
    def skipped_indices(self) -> set[int]:
        mine = set(self.indices.tolist())
        return {i for i in self.base.skipped_indices if i in mine}


def collate_skip_none(batch: list) -> tuple[Any, int]:
    """Collate the readable items of a batch; returns (collated or None, number of items dropped).

    Tensors are stacked with torch's default_collate; PIL images (no transform) stay a list.
    """
    kept = [item for item in batch if item is not None]
    dropped = len(batch) - len(kept)
    if not kept:
        return None, dropped
    try:
        return default_collate(kept), dropped
    except TypeError:  # PIL images: hand back ([images], labels tensor)
        images, labels = zip(*kept, strict=True)
        return (list(images), torch.tensor(labels, dtype=torch.long)), dropped
