"""The select step over score parts, on an engine: the exact global threshold, then the shards.

1. Threshold (DataComp's top-fraction rule, ``select.selection_threshold``, ties kept) without any
   process seeing every score: each part task returns a histogram of its survivors' scores over the
   float32 order (2**16 bins); the driver finds the bin that holds the survivor at rank int(n * fraction);
   a second pass returns only the scores in that bin, and their exact order gives the threshold. The
   result is the single-process threshold, bit for bit.
2. Write: one task per pool shard (curation.write.write_part_shards), streaming its kept samples into
   its own tars in hashed-uid order. Each task also files its kept uids by range of their leading bits
   (about ``PARTS_PER_SUBSET_BUCKET`` tasks' worth per range).
3. Subset: one task per uid range sorts its pieces into ``subset/part-<range>.npy`` (the per-partition
   subset: DataComp's "u8,u8" records, sorted; the parts in name order are the whole subset, sorted). The
   DataComp-compatible ``subset.npy`` is then filled part by part into a memory-mapped file: no process
   holds more than one range's uids.
"""

from __future__ import annotations

import math
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curation import select, write
from curation.parts import Part, read_part
from shared.atomic import atomic_path
from shared.config.curation import SelectConfig
from shared.errors import OpenAIMError

# Bump when the selected subset and its shards (this module, select.py, write.py) change for the same config
# and inputs: this step and every step after it rerun (shared/stage_cache.py). 2: per-shard tars in
# hashed-uid order, threshold from the histogram pass. 3: subset/ parts by uid range, subset.npy streamed.
VERSION = 3
PARTS_PER_SUBSET_BUCKET = 64
_COPY_ROWS = 1 << 20  # subset rows copied into subset.npy at a time


def _survivor_scores(part: Part, keep_dirs: list[Path]) -> tuple[list[str], np.ndarray]:
    """(uids, scores) of a part's rows that every upstream keep file keeps."""
    data = read_part(part.path, ("uid", "score"))
    survive = np.ones(len(data["uid"]), dtype=bool)
    for folder in keep_dirs:
        k = pq.read_table(folder / part.path.name, columns=["uid", "keep"]).to_pydict()
        if k["uid"] != data["uid"]:
            raise OpenAIMError(f"{folder / part.path.name} does not match its score part: rerun with --force")
        survive &= np.asarray(k["keep"], dtype=bool)
    return [u for u, s in zip(data["uid"], survive, strict=True) if s], data["score"][survive]


def histogram_task(keep_dirs: list[Path], part: Part) -> np.ndarray:
    return select.score_histogram(_survivor_scores(part, keep_dirs)[1])


def bin_task(keep_dirs: list[Path], bin_index: int, part: Part) -> np.ndarray:
    return select.scores_in_bin(_survivor_scores(part, keep_dirs)[1], bin_index)


def global_threshold(engine, parts: list[Part], keep_dirs: list[Path],
                     cfg: SelectConfig) -> tuple[float, int]:
    """(threshold, survivors): the exact top-fraction threshold over every part (or the fixed one)."""
    hist = np.sum(engine.map(partial(histogram_task, keep_dirs), parts), axis=0)
    n = int(hist.sum())
    if cfg.threshold is not None:
        return float(cfg.threshold), n
    bin_index, rank, n = select.rank_bin(hist, cfg.fraction)
    in_bin = engine.map(partial(bin_task, keep_dirs, bin_index), parts)
    return select.threshold_from_bin(in_bin, rank), n


def subset_bucket(subset: np.ndarray, buckets: int) -> np.ndarray:
    """The uid range (0 .. buckets-1) of each row of a subset array: its leading 32 bits scaled, so ranges
    follow the subset's sort order."""
    return ((subset["f0"] >> np.uint64(32)) * np.uint64(buckets)) >> np.uint64(32)


def file_subset_pieces(subset: np.ndarray, pieces: Path, name: str, buckets: int) -> None:
    """A sorted subset array to ``pieces/<range>/<name>.npy``, one file per uid range it touches."""
    ranges = subset_bucket(subset, buckets)
    starts = np.flatnonzero(np.r_[True, ranges[1:] != ranges[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(subset)], strict=True):
        folder = pieces / f"{int(ranges[start]):05d}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", subset[start:end])


def subset_part_task(pieces: Path, out_dir: Path, bucket: int) -> int:
    """One uid range: its pieces from every write task, sorted, to ``out_dir/part-<range>.npy``; its rows."""
    files = sorted((pieces / f"{bucket:05d}").glob("*.npy"))
    if not files:
        return 0
    subset = np.sort(np.concatenate([np.load(f) for f in files]), order=["f0", "f1"])
    np.save(out_dir / f"part-{bucket:05d}.npy", subset)
    return len(subset)


def concat_subset(subset_dir: Path, path: Path) -> int:
    """``subset.npy`` (DataComp's file) from the sorted subset parts, copied in order into a memory-mapped
    file a block at a time (atomic); its rows."""
    parts = sorted(subset_dir.glob("part-*.npy"))
    total = sum(np.load(p, mmap_mode="r").shape[0] for p in parts)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype("u8,u8"), shape=(total,))
        at = 0
        for p in parts:
            part = np.load(p, mmap_mode="r")
            for start in range(0, len(part), _COPY_ROWS):
                block = part[start:start + _COPY_ROWS]
                out[at:at + len(block)] = block
                at += len(block)
        out.flush()
        del out
    return total


def write_task(keep_dirs: list[Path], threshold: float, pool_dir: Path, out_dir: Path, shard_size: int,
               blur_faces: bool, pieces: Path, buckets: int, part: Part) -> dict:
    uids, scores = _survivor_scores(part, keep_dirs)
    kept = {u: float(s) for u, s in zip(uids, scores.astype(np.float64), strict=True) if s >= threshold}
    counts = write.write_part_shards(pool_dir / f"{part.stem}.tar", kept, out_dir, shard_size, blur_faces)
    if kept:
        file_subset_pieces(select.uid_subset(list(kept)), pieces, part.stem, buckets)
    return counts


def run_select(engine, parts: list[Part], keep_dirs: list[Path], pool_dir: Path, shards_tmp: Path,
               subset_tmp: Path, subset_path: Path, cfg: SelectConfig, blur_faces: bool) -> dict:
    """Threshold, shards (into ``shards_tmp``) and subset parts (into ``subset_tmp``), both of which the
    caller swaps in, and ``subset.npy`` built from the parts."""
    threshold, survivors = global_threshold(engine, parts, keep_dirs, cfg)
    buckets = max(1, math.ceil(len(parts) / PARTS_PER_SUBSET_BUCKET))
    pieces = subset_tmp / ".pieces"
    results = engine.map(partial(write_task, keep_dirs, threshold, pool_dir, shards_tmp, cfg.shard_size,
                                 blur_faces, pieces, buckets), parts)
    written = sum(r["written"] for r in results)
    if written == 0:
        raise OpenAIMError(f"no sample scores >= the threshold {threshold:.4f}: nothing to write")
    engine.map(partial(subset_part_task, pieces, subset_tmp), range(buckets))
    shutil.rmtree(pieces)
    concat_subset(subset_tmp, subset_path)
    return {"in": survivors, "out": written, "threshold": threshold,
            "fraction": cfg.fraction if cfg.threshold is None else None,
            "written": written, "shards": sum(r["shards"] for r in results),
            "faces_blurred": sum(r["faces_blurred"] for r in results)}
