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

from curation.safety import blur_faces as blur_image_faces

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


def write_part_shards(pool_shard: Path, kept: dict[str, float], out_dir: Path, shard_size: int,
                      blur_faces: bool) -> dict:
    """One task of the write step: the kept samples (uid -> score) of one pool shard, streamed into
    ``out_dir/<shard>-NNNN.tar`` (at most ``shard_size`` samples each) in hashed-uid order.

    The pool tar is indexed (member headers only) and each kept sample read, face-blurred and written one
    at a time: memory holds one image, whatever the shard's size. Returns counts (written, shards, faces).
    """
    with tarfile.open(pool_shard) as tar:
        members: dict[str, dict[str, tarfile.TarInfo]] = {}
        for m in tar.getmembers():
            if m.isfile():
                key, _, ext = m.name.rpartition(".")
                members.setdefault(key, {})[ext] = m
        samples = []  # (uid, key) of the kept samples present in this shard
        for key, files in members.items():
            if {"jpg", "txt", "json"} <= files.keys():
                meta = json.loads(tar.extractfile(files["json"]).read())
                if meta.get("uid") in kept:
                    samples.append((meta["uid"], key, meta.get("url", "")))
        samples = [samples[i] for i in hashed_order([s[0] for s in samples])]
        faces = 0
        stem = pool_shard.stem
        pattern = str(out_dir / f"{stem}-%04d.tar")
        # A fixed member mtime: the same kept samples give the same tar bytes on every engine and rerun.
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0) as sink:
            for i, (uid, key, url) in enumerate(samples):
                jpg = tar.extractfile(members[key]["jpg"]).read()
                caption = tar.extractfile(members[key]["txt"]).read().decode("utf-8")
                if blur_faces:
                    jpg, n = _blur(jpg)
                    faces += n
                meta = {"uid": uid, "url": url, "score": round(float(kept[uid]), 6)}
                sink.write({"__key__": f"{stem}-{i:07d}", "jpg": jpg, "txt": caption,
                            "json": json.dumps(meta)})
            shards = sink.shard if samples else 0
    if not samples:  # webdataset opens its first tar lazily; an empty shard leaves nothing behind
        for p in out_dir.glob(f"{stem}-*.tar"):
            p.unlink()
    return {"written": len(samples), "shards": shards, "faces_blurred": faces}
