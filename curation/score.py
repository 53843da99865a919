"""Score every downloaded pair with the data filtering network: cosine(image, caption).

Per pool shard, the image embeddings (kept as float16 for dedup) and the scores are written atomically
(plus a copy-detection descriptor, see curation.copy_detection) to ``out_dir/parts/<shard>.npz``; a rerun skips the shards whose part exists, so a killed scoring run
resumes where it stopped. When every shard is done the parts are assembled, in shard order, into
``scores.parquet`` (uid, url, caption, score, sha256, shard, key) and the row-aligned ``embeddings.npy``
and ``copy.npy``.

Shards are scored one after the other in this process (torch uses every core for the forward pass);
across machines, split the pool's shards between processes: each part file is independent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from shared.atomic import atomic_path
from shared.errors import OpenAIMError

log = logging.getLogger("openaim.curation")


class _ShardBatches:
    """An iterable over one shard yielding preprocessed batches; picklable for DataLoader workers."""

    def __init__(self, shard: Path, preprocess, batch_size: int):
        self.shard, self.preprocess, self.batch_size = shard, preprocess, batch_size

    def __iter__(self):
        import torch
        from PIL import Image

        from curation.copy_detection import copy_descriptor
        from curation.download import shard_samples

        rows: list[dict] = []
        images: list = []
        for key, jpg, caption, meta in shard_samples(self.shard):
            try:
                with Image.open(io.BytesIO(jpg)) as im:
                    rgb = im.convert("RGB")
                    images.append(self.preprocess(rgb))
                    copy = copy_descriptor(rgb)
            except Exception as exc:  # noqa: BLE001 - a bad image in the pool is skipped, never fatal
                log.warning("score: skipping undecodable image %s in %s (%s)", key, self.shard.name, exc)
                continue
            rows.append({"uid": meta.get("uid"), "url": meta.get("url", ""), "caption": caption,
                         "sha256": hashlib.sha256(jpg).hexdigest(), "shard": self.shard.name, "key": key, "copy": copy})
            if len(rows) == self.batch_size:
                yield rows, torch.stack(images)
                rows, images = [], []
        if rows:
            yield rows, torch.stack(images)


def score_shard(shard: Path, net, batch_size: int) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """Score one shard in the current process:
    (rows, scores [n], image embeddings [n, d] float16, copy descriptors [n, 768] float16)."""
    from curation.copy_detection import DIM

    rows: list[dict] = []
    scores, embs, copies = [], [], []
    for batch_rows, images in _ShardBatches(shard, net.preprocess, batch_size):
        img = net.encode_image_tensor(images)
        txt = net.encode_texts([r["caption"] for r in batch_rows])
        copies.append(np.stack([r.pop("copy") for r in batch_rows]).astype(np.float16))
        rows += batch_rows
        scores.append((img * txt).sum(axis=1))
        embs.append(img.astype(np.float16))
    d = net.embed_dim
    return (rows, np.concatenate(scores) if scores else np.zeros(0, np.float32),
            np.concatenate(embs) if embs else np.zeros((0, d), np.float16),
            np.concatenate(copies) if copies else np.zeros((0, DIM), np.float16))


def _part_path(out_dir: Path, shard: Path) -> Path:
    return out_dir / "parts" / f"{shard.stem}.npz"


def _write_part(path: Path, rows: list[dict], scores: np.ndarray, embs: np.ndarray, copies: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, scores=scores.astype(np.float32), embeddings=embs, copies=copies,
                 rows=np.array([json.dumps(r, sort_keys=True) for r in rows], dtype=object))


def score_pool(pool_dir: Path, net, out_dir: Path, batch_size: int = 128, num_workers: int = 1,
               progress=None) -> None:
    """Score every finished pool shard (resumable per shard), then assemble scores.parquet + embeddings.npy."""
    import torch

    from curation.download import pool_shards

    shards = pool_shards(Path(pool_dir))
    if not shards:
        raise OpenAIMError(f"the pool at {pool_dir} is empty: every download failed (see the failure histogram)")
    out_dir = Path(out_dir)
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if not _part_path(out_dir, s).is_file()]
    if len(todo) < len(shards):
        log.info("score: %d of %d shards already scored, resuming", len(shards) - len(todo), len(shards))
    task = progress.add_task("score", total=len(shards), completed=len(shards) - len(todo)) if progress else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for shard in todo:
        _write_part(_part_path(out_dir, shard), *score_shard(shard, net, batch_size))
        if progress:
            progress.advance(task)
    _assemble(shards, out_dir)


def _assemble(shards: list[Path], out_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict] = []
    scores, embs, copies = [], [], []
    for shard in shards:
        with np.load(_part_path(out_dir, shard), allow_pickle=True) as part:
            rows += [json.loads(r) for r in part["rows"]]
            scores.append(part["scores"])
            embs.append(part["embeddings"])
            copies.append(part["copies"])
    if not rows:
        raise OpenAIMError("the pool is empty: no decodable sample in any shard "
                          "(every download failed? see the failure histogram)")
    table = pa.table({k: [r[k] for r in rows] for k in ("uid", "url", "caption", "sha256", "shard", "key")}
                     | {"score": np.concatenate(scores).astype(np.float32)})
    with atomic_path(out_dir / "copy.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate(copies).astype(np.float16))
    with atomic_path(out_dir / "embeddings.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate(embs).astype(np.float16))
    with atomic_path(out_dir / "scores.parquet") as tmp:
        pq.write_table(table, tmp)
