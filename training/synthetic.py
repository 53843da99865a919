"""Procedural training data for tests and benchmarks: webdataset shards (`jpg`, `txt`, `json`) and an
image-folder set, of smooth random images (gradients, discs, stripes) a small AIM can learn to predict."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def procedural_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: a colour gradient with a disc and soft stripes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 1, 3)[None, None, :] + np.stack([xx, yy, xx * yy], -1) * rng.uniform(-0.8, 0.8, 3)
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.35)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
    base[disc] = rng.uniform(0, 1, 3)
    freq, phase = rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
    base += 0.15 * np.sin(2 * np.pi * freq * xx + phase)[..., None]
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_synthetic_shards(out_dir: str | Path, n_shards: int, per_shard: int, size: int = 64,
                           seed: int = 0) -> list[Path]:
    """Write out_dir/shard-%05d.tar; each sample has `jpg`, `txt` and `json` (uid)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(n_shards):
        path = out_dir / f"shard-{s:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                uid = f"{s:05d}{i:05d}"
                sink.write({"__key__": uid, "jpg": _jpeg(procedural_image(rng, size)),
                            "txt": f"synthetic image {uid}", "json": json.dumps({"uid": uid}).encode()})
        paths.append(path)
    return paths


def write_image_folder(out_dir: str | Path, n_classes: int, per_class: int, size: int = 64,
                       seed: int = 1) -> Path:
    """An ImageNet-style folder: out_dir/<class>/<i>.jpg."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        (out_dir / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (out_dir / f"class{c:03d}" / f"{i:04d}.jpg").write_bytes(_jpeg(procedural_image(rng, size)))
    return out_dir
