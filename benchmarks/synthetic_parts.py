"""A synthetic pool of many small parts for the curation benchmarks (benchmarks/curation_parts_scale.py,
benchmarks/curation_near_recall.py): url/caption sources, score parts (reduced-width descriptors), tiny pool
tars and an eval index, with planted exact copies, near copies and optionally one large near-copy group.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

ROWS_PER_PART = 4
EMB_DIM, COPY_DIM, EVAL_ROWS = 8, 32, 64
COPY_NOISE = 0.1  # a planted near copy is its original plus this much noise per dimension (cosine ~0.99)


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def _source(gid: np.ndarray, offset: int, planted: int) -> np.ndarray:
    """The row ``offset`` rows before each of ``gid``, or the next one where that row is itself a planted
    copy (gid % 10 == planted: with a part size that is a multiple of 10 it would be)."""
    src = gid - offset
    return np.where(src % 10 == planted, src + 1, src)


def pool_vectors(n: int, rows: int, seed: int = 0, group: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """(filter embeddings [n, EMB_DIM], copy descriptors [n, 1, COPY_DIM], sha256 per row): random rows;
    every tenth (gid % 10 == 7, past the first part) the same bytes as the row one part earlier, every
    tenth (gid % 10 == 3, past the first two parts) a near copy of the row two parts earlier (the next row
    where that one is a copy itself); the first ``group`` rows near copies of one vector (one group of near
    copies, planted first: a near copy of one of its rows is one more)."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, EMB_DIM)).astype(np.float32)
    copy = rng.standard_normal((n, COPY_DIM)).astype(np.float32)
    gid = np.arange(n)
    near = np.flatnonzero((gid % 10 == 3) & (gid >= 2 * rows))
    noise = rng.standard_normal((len(near), COPY_DIM)).astype(np.float32)
    if group:
        copy[:group] = copy[0] + COPY_NOISE * rng.standard_normal((group, COPY_DIM)).astype(np.float32)
    copy[near] = copy[_source(near, 2 * rows, 3)] + COPY_NOISE * noise
    exact = _source(gid, rows, 7)
    sha = [f"{(exact[g] if g % 10 == 7 and g >= rows else g):064x}" for g in range(n)]
    return emb, copy[:, None, :], sha


def make_pool(root: Path, parts: int, rows: int = ROWS_PER_PART, seed: int = 0, group: int = 0,
              tars: bool = True) -> dict:
    """The synthetic pool under ``root``: ``sources/<i>.parquet`` (url, caption, uid), the score parts
    ``scores/parts/<i>.parquet``, with ``tars`` the pool tars ``pool/<i>.tar`` (one tiny JPEG, caption and
    json per sample, img2dataset's layout) and ``eval_index.npy`` (unit rows). Returns its paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.parts import write_part

    n = parts * rows
    emb, copy, sha = pool_vectors(n, rows, seed, group)
    scores = np.random.default_rng(seed + 1).random(n).astype(np.float32)
    uids = [f"{g:032x}" for g in range(n)]
    for d in ("sources", "scores/parts", "pool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    jpg = _tiny_jpeg()
    for p in range(parts):
        s, e = p * rows, (p + 1) * rows
        stem = f"{p:06d}"
        urls = [f"http://img.example.com/{g}.jpg" for g in range(s, e)]
        pq.write_table(pa.table({"url": urls, "caption": [f"caption {g}" for g in range(s, e)],
                                 "uid": uids[s:e]}), root / "sources" / f"{stem}.parquet")
        keys = [f"{stem}{r:04d}" for r in range(rows)]
        write_part(root / "scores" / "parts" / f"{stem}.parquet", uids[s:e], keys, sha[s:e], scores[s:e],
                   emb[s:e], copy[s:e])
        if tars:
            with tarfile.open(root / "pool" / f"{stem}.tar", "w") as tar:
                for r, key in enumerate(keys):
                    meta = json.dumps({"uid": uids[s + r], "url": urls[r], "key": key}).encode()
                    for ext, data in (("jpg", jpg), ("txt", f"caption {s + r}".encode()), ("json", meta)):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    ev = np.random.default_rng(seed + 2).standard_normal((EVAL_ROWS, COPY_DIM)).astype(np.float32)
    np.save(root / "eval_index.npy", ev / np.linalg.norm(ev, axis=1, keepdims=True))
    return {"sources": root / "sources", "parts": root / "scores" / "parts", "pool": root / "pool",
            "eval_index": root / "eval_index.npy"}
