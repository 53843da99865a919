"""Score every downloaded pair with the data filtering network: cosine(image, caption).

Per pool shard, the scores, the image embeddings and the copy-detection descriptors (curation.copy_detection)
are written atomically to one part, ``out_dir/parts/<shard>.parquet`` (layout in curation.parts); a rerun
skips the shards whose part exists, so a killed scoring run resumes where it stopped. The parts are the
step's output: nothing assembles them, every later step maps over them.

Shards are taken from a queue (curation.shard_queue: claim records under ``out_dir/.claims``, leases that
expire), so any number of ranks, on any number of nodes, share the pool: each rank takes a free shard,
scores it, writes its part, and takes the next; a rank killed mid-shard holds its shard only until its
lease (``curation.filter.lease_s``) expires, then another rank takes it; each rank returns as soon as every
part exists, waiting for no particular rank. A shard's tar is read once, by the scoring process; a torch
DataLoader with ``num_workers`` > 1 processes decodes its JPEGs batch by batch from those bytes while
this process runs the forward pass. For build-dataset's score step alone, on every node:
    torchrun --nnodes M --nproc_per_node N ... -m openaim build-dataset --config ... --steps score
(rank 0 decides from the stage cache whether the step reruns and records it; the other ranks follow it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from datetime import timedelta

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from curation.copy_detection import DIM, VIEWS, copy_views
from curation.parts import count_rows, list_parts, write_part
from curation.pool import pool_shards, shard_samples
from curation.shard_queue import ShardQueue
from shared import fsio
from shared.atomic import remove_stale_tmp
from shared.errors import OpenAIMError
from shared.stage_cache import combine_digests, digest_file

# Versioned by its step: bump VERSION in openaim/steps/score.py when this changes the step's results.

log = logging.getLogger("openaim.curation")
# The process group curation joins under torchrun: gloo, since only small objects travel, and a long
# timeout, since rank 0 may download for hours before the other ranks' first collective (the score step).
BACKEND, WAIT_FOR_RANK0 = "gloo", timedelta(days=2)
CLAIMS = ".claims"  # the queue's claim records, beside parts/ (hidden: the stage cache skips dot-files)


class _ShardBatches(Dataset):
    """The preprocessed batches of one shard, read once: batch ``b`` is the decodable samples among
    ``batch_size`` consecutive ones (from sample ``b * batch_size``), whoever decodes it, so the batches
    (and so the scores, bit for bit) do not depend on the number of workers.

    The scoring process reads the tar into memory (``samples``: key, JPEG bytes, caption, meta) before the
    DataLoader starts its workers, which share it (forked) or receive it: one read of each tar from
    storage per shard, not one per decode worker. Each worker decodes the batches the loader hands it, and
    the loader returns them in batch order (an empty batch when nothing in it decodes).
    """

    def __init__(self, shard_name: str, samples: list, preprocess, batch_size: int, tokenizer=None):
        # Captions are tokenised here too (when a tokenizer is given), so that with workers all the
        # per-sample CPU work overlaps the forward pass.
        self.shard_name, self.samples, self.preprocess = shard_name, samples, preprocess
        self.batch_size, self.tokenizer = batch_size, tokenizer

    def __len__(self) -> int:
        return math.ceil(len(self.samples) / self.batch_size)

    def __getitem__(self, block: int):
        rows: list[dict] = []
        images: list = []
        for key, jpg, caption, meta in self.samples[block * self.batch_size:(block + 1) * self.batch_size]:
            try:
                with Image.open(io.BytesIO(jpg)) as im:
                    rgb = im.convert("RGB")
                    image, copy = self.preprocess(rgb), copy_views(rgb)
            except Exception as exc:  # noqa: BLE001 - a bad image in the pool is skipped, never fatal
                log.warning("score: skipping undecodable image %s in %s (%s)", key, self.shard_name, exc)
                continue
            images.append(image)
            rows.append({"uid": meta.get("uid"), "url": meta.get("url", ""), "caption": caption,
                         "sha256": hashlib.sha256(jpg).hexdigest(), "shard": self.shard_name, "key": key,
                         "copy": copy})
        if not images:
            return rows, None, None
        tokens = self.tokenizer([r["caption"] for r in rows]) if self.tokenizer is not None else None
        return rows, torch.stack(images), tokens


def _as_is(batch):
    return batch  # the batches are built by _ShardBatches: no collation (and numpy stays numpy)


def score_shard(shard: str, net, batch_size: int, num_workers: int = 0
                ) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """Score one shard: (rows, scores [n], image embeddings [n, d] float16, copy descriptors [n, views, 768]
    float16). ``num_workers`` > 1 decodes in that many DataLoader worker processes; 0 or 1 in this one."""
    samples = list(shard_samples(shard))  # the one read of this tar
    batches = _ShardBatches(fsio.name_of(shard), samples, net.preprocess, batch_size, tokenizer=net.tokenizer)
    workers = num_workers if num_workers > 1 else 0
    loader = DataLoader(batches, batch_size=None, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=2 if workers else None)
    rows: list[dict] = []
    scores, embs, copies = [], [], []
    for batch_rows, images, tokens in loader:
        if not batch_rows:
            continue  # nothing in this batch decoded
        img = net.encode_image_tensor(images)
        txt = net.encode_token_tensor(tokens)
        copies.append(np.stack([r.pop("copy") for r in batch_rows]).astype(np.float16))
        rows += batch_rows
        scores.append((img * txt).sum(axis=1))
        embs.append(img.astype(np.float16))
    d = net.embed_dim
    return (rows, np.concatenate(scores) if scores else np.zeros(0, np.float32),
            np.concatenate(embs) if embs else np.zeros((0, d), np.float16),
            np.concatenate(copies) if copies else np.zeros((0, VIEWS, DIM), np.float16))


def _part_path(out_dir: str, stem: str) -> str:
    return fsio.join(out_dir, "parts", f"{stem}.parquet")


def _digest_path(out_dir: str, stem: str) -> str:
    return fsio.join(out_dir, "digests", f"{stem}.txt")


def _write_part(out_dir: str, stem: str, rows: list[dict], scores: np.ndarray, embs: np.ndarray,
                copies: np.ndarray) -> None:
    """The part, then its digest record (``digests/<shard>.txt``, shared.stage_cache.digest_file)."""
    fsio.remove(_digest_path(out_dir, stem))  # never an older part's record beside this one
    digest = write_part(_part_path(out_dir, stem), [r["uid"] for r in rows], [r["key"] for r in rows],
                        [r["sha256"] for r in rows], scores, embs, copies)
    fsio.makedirs(fsio.join(out_dir, "digests"))
    fsio.write_text(_digest_path(out_dir, stem), digest)


def outputs_digest(out_dir: str) -> str:
    """The score step's identity from the digest records its ranks wrote with the parts (a part from a
    run that wrote none is hashed once here and its record written)."""
    digests = []
    for part in list_parts(fsio.join(out_dir, "parts")):
        record = _digest_path(out_dir, part.stem)
        if not fsio.isfile(record):
            fsio.write_text(record, digest_file(part.path))
        digests.append(fsio.read_bytes(record).decode())
    return combine_digests(digests)


def score_pool(pool_dir: str, net, out_dir: str, batch_size: int = 128, num_workers: int = 1,
               progress=None, lease_s: float = 60.0) -> list[str]:
    """Score every finished pool shard into ``out_dir/parts/<shard>.parquet`` (resumable per shard).

    Every rank (or process, on any node) that calls this takes shards from the queue under
    ``out_dir/.claims`` (hidden: not part of the step's outputs) until every part exists; returns the
    shards this call scored. ``num_workers`` > 1: DataLoader processes decode the JPEGs.
    """
    shards = {fsio.name_of(s).removesuffix(".tar"): s for s in pool_shards(pool_dir)}
    if not shards:
        raise OpenAIMError(f"the pool at {pool_dir} is empty: every download failed "
                           "(see the failure histogram)")
    out_dir = os.fspath(out_dir)
    fsio.makedirs(fsio.join(out_dir, "parts"))

    def done(stem: str) -> bool:
        return fsio.isfile(_part_path(out_dir, stem))

    finished = sum(map(done, shards))
    if finished:
        log.info("score: %d of %d shards already scored, resuming", finished, len(shards))
    task = progress.add_task("score", total=len(shards), completed=finished) if progress else None
    queue = ShardQueue(fsio.join(out_dir, CLAIMS), lease_s)
    scored = []
    for claim in queue.take(sorted(shards), done):
        shard = shards[claim.shard]
        with queue.holding(claim):
            if not fsio.is_url(out_dir):  # a dead owner's half-written part (an object is whole or absent)
                remove_stale_tmp(_part_path(out_dir, claim.shard))
            _write_part(out_dir, claim.shard, *score_shard(shard, net, batch_size, num_workers))
        scored.append(claim.shard)
        if progress:
            progress.advance(task)
    # one clear error when no shard held a decodable image
    if not count_rows(list_parts(fsio.join(out_dir, "parts"))):
        raise OpenAIMError("the pool is empty: no decodable sample in any shard "
                           "(every download failed? see the failure histogram)")
    return scored
