"""Frozen-trunk features for the probes, cached on disk.

The trunk runs in eval mode with bidirectional attention (``AIM.extract_features``); the features of a
split are the mean of a set of blocks' raw outputs, stored as float16 [n, N, D] plus the labels in a
safetensors file keyed by checkpoint hash + benchmark + split + blocks + preprocessing:
  <eval_dir>/features/<ckpt-hash>/<bench>/<split>-<blocks>-<prep>.safetensors
A rerun with the same key reads the file and never touches the trunk.

Under torchrun (WORLD_SIZE > 1; gloo on CPU, nccl on GPU) every rank extracts a strided shard of the
split, rank 0 gathers the shards, restores the dataset order and writes the file; the others wait and
read it back, so every rank returns the same tensors.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from evaluation.probe_grid import FeatureSet
from shared.atomic import atomic_path
from shared.errors import ConfigError, InputError
from shared.progress import progress_bar
from shared.stage_cache import hash_json
from shared.torchrun import barrier, rank_world

log = logging.getLogger("openaim.eval")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ml-aim's eval transform resizes the short side to ceil(img_size / 0.875) (256 for a 224 crop), bicubic.
CROP_FRACTION = 0.875


def resolve_blocks(blocks: str | list[int], n_blocks: int, model: Any, depth: int) -> list[int]:
    """0-based block indices: "last6" -> the last n_blocks, "best" -> model.best_blocks(), or a list."""
    if blocks == "last6":
        if n_blocks > depth:
            raise ConfigError(f"evaluation.n_blocks={n_blocks} but the trunk has only {depth} blocks")
        return list(range(depth - n_blocks, depth))
    if blocks == "best":
        return sorted(int(b) for b in model.best_blocks())
    chosen = sorted({int(b) for b in blocks})
    bad = [b for b in chosen if not 0 <= b < depth]
    if not chosen or bad:
        raise ConfigError(f"evaluation.blocks {list(blocks)} must be 0-based indices below the depth {depth}")
    return chosen


def resize_size(img_size: int) -> int:
    """The short side an image is resized to before the img_size center crop: ml-aim's ceil(img / 0.875)
    (224 -> 256, 64 -> 74, 128 -> 147)."""
    return math.ceil(img_size / CROP_FRACTION)


def eval_transform(img_size: int):
    """ml-aim's eval transform at any size: resize (bicubic) the short side to resize_size(img_size),
    center crop img_size, ImageNet mean/std."""
    return T.Compose([
        T.Resize(resize_size(img_size), interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def preprocessing_key(img_size: int, data_key: Any = None) -> str:
    """Short hash of everything besides the trunk that changes the features (transform, which items)."""
    return hash_json({"resize": resize_size(img_size), "crop": img_size, "interp": "bicubic",
                      "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "data": data_key})[:12]


def feature_path(eval_dir: Path, ckpt_hash: str, benchmark: str, split: str, blocks: Sequence[int],
                 img_size: int, data_key: Any = None) -> Path:
    blocks_key = "b" + "_".join(str(b) for b in blocks)
    return (Path(eval_dir) / "features" / ckpt_hash[:16] / benchmark /
            f"{split}-{blocks_key}-{preprocessing_key(img_size, data_key)}.safetensors")


# --- extraction ----------------------------------------------------------------------------------------

class _TransformedItems(Dataset):
    """(index, image tensor, label) for the given indices; an unreadable image gives None (skipped)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform):
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        try:
            item = self.dataset[index]
            if item is None:
                return None
            image, label = item
            return index, self.transform(image.convert("RGB")), int(label)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL raises these for truncated/corrupt files
            log.warning("skipping unreadable item %d: %s", index, exc)
            return None


def _collate(items):
    kept = [it for it in items if it is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return None, None, None, skipped
    idx, images, labels = zip(*kept, strict=True)
    return torch.tensor(idx), torch.stack(images), torch.tensor(labels), skipped


@torch.inference_mode()
def _extract_indices(model, dataset, indices, blocks, img_size, batch_size, num_workers, device,
                     show_progress: bool, description: str, progress=None):
    loader = DataLoader(_TransformedItems(dataset, indices, eval_transform(img_size)), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate)
    out_idx, out_feats, out_labels, skipped = [], [], [], 0
    own = progress is None  # rich allows one live display: reuse the caller's when there is one
    progress = progress or progress_bar(disable=not show_progress)
    with progress if own else contextlib.nullcontext():
        task = progress.add_task(description, total=len(indices), visible=show_progress)
        for idx, images, labels, n_skipped in loader:
            skipped += n_skipped
            if idx is not None:
                feats = model.extract_features(images.to(device), blocks)  # [b, N, D]
                out_idx.append(idx)
                out_feats.append(feats.to("cpu", torch.float16))
                out_labels.append(labels)
            progress.advance(task, len(idx) + n_skipped if idx is not None else n_skipped)
        progress.remove_task(task)
    if not out_idx:
        return torch.empty(0, dtype=torch.long), None, torch.empty(0, dtype=torch.long), skipped
    return torch.cat(out_idx), torch.cat(out_feats), torch.cat(out_labels), skipped


def save_features(path: Path, feats: FeatureSet, metadata: dict[str, Any]) -> None:
    tensors = {"features": feats.feats.to(torch.float16).contiguous(),
               "labels": feats.labels.long().contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def load_features(path: Path) -> tuple[FeatureSet, dict[str, str]] | None:
    """The cached features, or None when absent or unreadable (a damaged cache file is recomputed)."""
    if not Path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return FeatureSet(f.get_tensor("features"), f.get_tensor("labels")), meta
    except Exception as exc:  # noqa: BLE001 - any damage means "not cached"
        log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
        return None


def extract_split_features(model, dataset, path: Path, blocks: list[int], img_size: int, batch_size: int = 64,
                           num_workers: int = 0, description: str = "features",
                           metadata: dict[str, Any] | None = None, progress=None) -> tuple[FeatureSet, int]:
    """Features of ``dataset`` (cached at ``path``); returns (features, number of skipped corrupt items).

    Runs sharded across ranks under torchrun; every rank returns the full, identically ordered set.
    """
    cached = load_features(path)
    if cached is not None:
        return cached[0], int(cached[1].get("skipped_corrupt", 0))
    rank, world = rank_world()
    device = next(model.parameters()).device
    model.eval()
    n = len(dataset)
    mine = range(rank, n, world)  # strided shard: balanced even when classes are stored in blocks
    idx, feats, labels, skipped = _extract_indices(model, dataset, mine, blocks, img_size, batch_size,
                                                   num_workers, device, rank == 0, description, progress)
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object((idx, feats, labels, skipped), gathered, dst=0)
        if rank == 0:
            parts = [g for g in gathered if g[1] is not None]
            skipped = sum(g[3] for g in gathered)
            if parts:
                idx = torch.cat([p[0] for p in parts])
                feats = torch.cat([p[1] for p in parts])
                labels = torch.cat([p[2] for p in parts])
            else:
                feats = None
    if rank == 0:
        if feats is None:
            raise InputError(f"{description}: none of the {n} images could be read")
        order = torch.argsort(idx)  # the dataset order, whatever the sharding
        result = FeatureSet(feats[order], labels[order])
        save_features(path, result, {**(metadata or {}), "skipped_corrupt": skipped, "n": len(result),
                                     "blocks": blocks, "img_size": img_size})
    barrier()
    if rank != 0:
        loaded = load_features(path)
        if loaded is None:
            raise InputError(f"rank {rank}: rank 0 did not write {path}")
        result, skipped = loaded[0], int(loaded[1].get("skipped_corrupt", 0))
    return result, skipped
