"""The downloaded pool (``pool/``) as the later steps read it: img2dataset's finished webdataset shards.

A pool shard counts once img2dataset wrote its ``NNNNN_stats.json``; its samples (``jpg``, ``txt`` and
``json`` with our ``uid``) are read with the one webdataset reader (shared.wds_reader).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from shared.wds_reader import read_samples

POOL_FIELDS = ("jpg", "txt", "json")  # what img2dataset writes for each downloaded image


def pool_shards(pool_dir: Path) -> list[Path]:
    """The finished pool shards (a tar counts only once img2dataset wrote its stats file)."""
    return [Path(p) for p in sorted(glob.glob(str(pool_dir / "[0-9]*.tar")))
            if Path(p[:-4] + "_stats.json").is_file()]


def shard_samples(shard: Path) -> Iterator[tuple[str, bytes, str, dict]]:
    """Yield (key, jpg bytes, caption, meta dict) for every complete sample of one pool tar, in tar order."""
    for sample in read_samples(shard):
        if all(field in sample for field in POOL_FIELDS):
            yield sample["__key__"], sample["jpg"], sample["txt"].decode("utf-8"), json.loads(sample["json"])


def iter_pool(pool_dir: Path, uids: set[str] | None = None) -> Iterator[tuple[str, bytes, str, dict]]:
    """Yield (uid, jpg bytes, caption, meta dict) for each sample of the pool (only ``uids`` if given)."""
    for shard in pool_shards(pool_dir):
        for _, jpg, caption, meta in shard_samples(shard):
            if uids is None or meta.get("uid") in uids:
                yield meta.get("uid"), jpg, caption, meta
