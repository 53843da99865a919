"""Write the curated dataset: webdataset shards (``jpg``, ``txt``, ``json``), one task per pool shard.

One task per pool shard (``write_part_shards``, run by curation.engine) streams that shard's kept samples
into its own output tars. The pipeline builds the shards directory in a temporary sibling and swaps it in
whole (shared.atomic.atomic_dir), so a killed write leaves the previous dataset untouched and never a
half-written one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import webdataset as wds
from PIL import Image

from curation.pool import POOL_FIELDS
from curation.safety import blur_faces as blur_image_faces
from shared import fsio
from shared.stage_cache import combine_digests, digest_file
from shared.wds_reader import indexed_samples

log = logging.getLogger("openaim.curation")


def _blur(jpg: bytes) -> tuple[bytes, int]:
    """Blur the faces of one JPEG; returns the new bytes (unchanged when no face) and the face count."""
    img = Image.open(io.BytesIO(jpg)).convert("RGB")
    blurred, n_faces = blur_image_faces(img)
    if n_faces == 0:
        return jpg, 0
    buf = io.BytesIO()
    blurred.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), n_faces


def hashed_order(uids: list[str]) -> list[int]:
    """Indices of ``uids`` in the order of their blake2b hash: deterministic, and unrelated to score or
    crawl order, so a training batch is not a narrow band of scores."""
    return sorted(range(len(uids)), key=lambda i: hashlib.blake2b(uids[i].encode(), digest_size=8).digest())


def write_part_shards(pool_shard: str, kept: dict[str, float], out_dir: str, shard_size: int,
                      blur_faces: bool) -> dict:
    """One task of the write step: the kept samples (uid -> score) of one pool shard, streamed into
    ``out_dir/<shard>-NNNN.tar`` (at most ``shard_size`` samples each) in hashed-uid order. Its counts
    include the digest of the tars it wrote (shared.stage_cache.digest_file).

    The pool tar is indexed (member headers only) and each kept sample read, face-blurred and written one
    at a time: memory holds one image, whatever the shard's size. Returns counts (written, shards, faces).
    Both folders are paths or URLs (shared.fsio): under a URL the tars are written to a local temporary
    folder and uploaded whole when the task's last one is closed.
    """
    with fsio.open_file(pool_shard) as raw, tarfile.open(fileobj=raw) as tar, fsio.local_dir(out_dir) as out:
        samples = []  # (uid, member headers, url) of the kept samples present in this shard
        for members in indexed_samples(tar, str(pool_shard)):
            if all(field in members for field in POOL_FIELDS):
                meta = json.loads(tar.extractfile(members["json"]).read())
                if meta.get("uid") in kept:
                    samples.append((meta["uid"], members, meta.get("url", "")))
        samples = [samples[i] for i in hashed_order([s[0] for s in samples])]
        faces = 0
        stem = fsio.name_of(pool_shard).removesuffix(".tar")
        pattern = str(out / f"{stem}-%04d.tar")
        # A fixed member mtime: the same kept samples give the same tar bytes on every engine and rerun.
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0) as sink:
            for i, (uid, members, url) in enumerate(samples):
                jpg = tar.extractfile(members["jpg"]).read()
                caption = tar.extractfile(members["txt"]).read().decode("utf-8")
                if blur_faces:
                    jpg, n = _blur(jpg)
                    faces += n
                meta = {"uid": uid, "url": url, "score": round(float(kept[uid]), 6)}
                sink.write({"__key__": f"{stem}-{i:07d}", "jpg": jpg, "txt": caption,
                            "json": json.dumps(meta)})
            shards = sink.shard if samples else 0
        if not samples:  # webdataset opens its first tar lazily; an empty shard leaves nothing behind
            Path(pattern % 0).unlink(missing_ok=True)
        digest = combine_digests(digest_file(pattern % k) for k in range(shards))
    return {"written": len(samples), "shards": shards, "faces_blurred": faces, "digest": digest}
