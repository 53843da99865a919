"""The score parts: one parquet file per pool shard, the unit every step after scoring works on.

``scores/parts/<shard>.parquet`` holds, in the shard's tar order, per decodable image:
``uid`` (32 hex), ``key`` (its tar member name), ``sha256`` (hex, of the image bytes), ``score`` (float32)
and two compact descriptors as fixed-size binary columns:
- ``embedding``: the filter network's image embedding, int8 [d];
- ``copy``: the copy-detection descriptor and its zoomed views (curation.copy_detection), int8 [views, 768].
Both are only ever compared by cosine, so each vector is stored scaled by 127 / max|v| (its own scale,
which a cosine ignores) and rounded: relative to float16 this halves the bytes, and a cosine moves by
~1e-4 (storage per image in docs/scale.md).

Nothing concatenates the parts: steps map over them (curation.engine), small parts grouped into tasks of
about ``curation.task_bytes``. A row's *key* is ``row_key(part index, row)``: its part's index in shard
order in the high 32 bits, its row in the low. Keys sort as the single-process pipeline's global row ids
did (parts in shard order, rows in order), so ties break the same way, and a key names its part without
any table of part offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared import fsio
from shared.errors import OpenAIMError
from shared.stage_cache import digest_file

COLUMNS = ("uid", "key", "sha256", "score", "embedding", "copy")


def quantize(v: np.ndarray) -> np.ndarray:
    """[n, ...] float -> int8, each row scaled by 127 / its largest magnitude (cosine-preserving)."""
    v = np.asarray(v, dtype=np.float32)
    if v.size == 0:
        return np.zeros(v.shape, np.int8)
    flat = v.reshape(len(v), -1)
    scale = 127.0 / np.maximum(np.abs(flat).max(axis=1, keepdims=True), 1e-12)
    return np.clip(np.rint(flat * scale), -127, 127).astype(np.int8).reshape(v.shape)


def _binary(arr: np.ndarray) -> pa.Array:
    width = int(np.prod(arr.shape[1:])) * arr.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(arr), [None, pa.py_buffer(
        np.ascontiguousarray(arr).tobytes())])


def write_part(path: str, uids: list[str], keys: list[str], sha256: list[str], scores: np.ndarray,
               embeddings: np.ndarray, copies: np.ndarray) -> None:
    """Write one part whole (a local path or a URL; embeddings [n, d], copies [n, views, 768], any float
    dtype); returns its digest (shared.stage_cache.digest_file) taken from the bytes written."""
    table = pa.table({"uid": pa.array(uids, pa.string()), "key": pa.array(keys, pa.string()),
                      "sha256": pa.array(sha256, pa.string()),
                      "score": pa.array(np.asarray(scores, np.float32)),
                      "embedding": _binary(quantize(embeddings)), "copy": _binary(quantize(copies))})
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
    table = table.replace_schema_metadata({"embedding_dim": str(dim),
                                           "copy_shape": ",".join(map(str, copies.shape[1:]))})
    return write_table(path, table)


def write_table(path: str, table: pa.Table) -> str:
    """A parquet file written whole (a local path or a URL: shared.fsio.local_file); returns its digest
    (shared.stage_cache.digest_file), taken by the writer from the bytes it wrote."""
    with fsio.local_file(path) as tmp:
        pq.write_table(table, tmp)
        return digest_file(tmp)


def _unpack(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, *shape), np.float32)
    raw = np.frombuffer(arr.buffers()[1], dtype=np.int8, count=n * int(np.prod(shape)),
                        offset=arr.offset * int(np.prod(shape)))
    return raw.reshape(n, *shape).astype(np.float32)


def read_part(path: str, columns: tuple[str, ...] = COLUMNS) -> dict:
    """A part (a path or a URL) as a dict: strings as lists, ``score`` float32, ``embedding`` [n, d] and
    ``copy`` [n, views, 768] as float32 (not unit length: callers normalise)."""
    with fsio.open_file(path) as f:
        pf = pq.ParquetFile(f)
        meta = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
        table = pf.read(columns=list(columns))
    out: dict = {}
    for name in columns:
        col = table.column(name)
        if name == "score":
            out[name] = col.to_numpy().astype(np.float32)
        elif name == "embedding":
            out[name] = _unpack(col, (int(meta["embedding_dim"]),))
        elif name == "copy":
            out[name] = _unpack(col, tuple(int(s) for s in meta["copy_shape"].split(",")))
        else:
            out[name] = col.to_pylist()
    return out


ROW_BITS = 32  # a part holds fewer than 2**32 rows


def row_key(part: int, rows: np.ndarray | int) -> np.ndarray:
    """The keys of rows of part ``part`` (int64): the part's index high, the row low."""
    return (np.int64(part) << np.int64(ROW_BITS)) | np.asarray(rows, dtype=np.int64)


def key_part(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64) >> np.int64(ROW_BITS)


def key_row(keys: np.ndarray) -> np.ndarray:
    return np.asarray(keys, dtype=np.int64) & np.int64((1 << ROW_BITS) - 1)


@dataclass(frozen=True)
class Part:
    """One score part: its file, its index in shard order (the high bits of its rows' keys) and its size
    in bytes (what tasks are sized by)."""

    path: str  # a local path or a URL
    index: int
    bytes: int

    @property
    def name(self) -> str:
        return fsio.name_of(self.path)

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".parquet")


def list_parts(parts_dir: str) -> list[Part]:
    """Every part in shard order: one listing of the folder with the files' sizes, no file opened."""
    out = [Part(p, i, size) for i, (p, size) in enumerate(fsio.list_files(parts_dir, "*.parquet"))]
    if not out:
        raise OpenAIMError(f"the pool is empty: no score part in {parts_dir} "
                           "(every download failed? see the failure histogram)")
    return out


def count_rows(parts: list[Part]) -> int:
    """The rows of ``parts`` from their parquet footers (one task's parts: callers map it over tasks)."""
    rows = 0
    for part in parts:
        with fsio.open_file(part.path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return rows
