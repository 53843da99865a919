"""Write the curated dataset: webdataset shards (``jpg``, ``txt``, ``json``) and the DataComp uid subset.

The shards directory is built in a temporary sibling and swapped in whole (shared.atomic.atomic_dir), so a
killed write leaves the previous dataset untouched and never a half-written one.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np

from shared.atomic import atomic_dir, atomic_path

log = logging.getLogger("openaim.curation")


def _blur(jpg: bytes) -> tuple[bytes, int]:
    """Blur the faces of one JPEG; returns the new bytes (unchanged when no face) and the face count."""
    from PIL import Image

    from curation.safety import blur_faces

    img = Image.open(io.BytesIO(jpg)).convert("RGB")
    blurred, n_faces = blur_faces(img)
    if n_faces == 0:
        return jpg, 0
    buf = io.BytesIO()
    blurred.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), n_faces


def write_shards(pool_dir: Path, kept: dict[str, float], out_dir: Path, shard_size: int,
                 blur_faces: bool, progress=None) -> dict:
    """Copy the kept pool samples (uid -> score) into ``out_dir`` as webdataset tars, in descending score order.

    Returns counts (written, shards, faces blurred).
    """
    import webdataset as wds

    from curation.download import iter_pool

    samples = []
    for uid, jpg, caption, meta in iter_pool(pool_dir, set(kept)):
        samples.append((uid, jpg, caption, meta.get("url", "")))
    # Score order (uid breaks ties) makes the shards deterministic whatever the pool's shard layout.
    samples.sort(key=lambda s: (-kept[s[0]], s[0]))
    task = progress.add_task("write shards", total=len(samples)) if progress else None
    faces = 0
    with atomic_dir(out_dir) as tmp, \
            wds.ShardWriter(str(tmp / "shard-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i, (uid, jpg, caption, url) in enumerate(samples):
            if blur_faces:
                jpg, n = _blur(jpg)
                faces += n
            sink.write({
                "__key__": f"{i:09d}",
                "jpg": jpg,
                "txt": caption,
                "json": json.dumps({"uid": uid, "url": url, "score": round(float(kept[uid]), 6)}),
            })
            if progress:
                progress.advance(task)
    n_shards = len(list(out_dir.glob("shard-*.tar")))
    return {"written": len(samples), "shards": n_shards, "faces_blurred": faces}


def write_subset(uids: list[str], path: Path) -> None:
    """Save the DataComp-style subset (sorted "u8,u8" array of the kept uids), atomically."""
    from curation.select import uid_subset

    arr = uid_subset(uids)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
