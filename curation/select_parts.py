"""The select step over score parts, on an engine: the exact global threshold, then the shards.

Tasks are groups of consecutive parts of about ``task_bytes`` (curation.engine.byte_groups).

1. Threshold (DataComp's top-fraction rule, ``select.selection_threshold``, ties kept) without any
   process seeing every score: each task sends sparse counts of its survivors' scores over the float32
   order (2**16 bins) through the shuffle, split into ``HIST_RANGES`` ranges of bins, and each range's
   task sums them: the driver receives the 2**16 bins once, whatever the number of parts. It finds the bin
   that holds the survivor at rank int(n * fraction); a second pass returns only the scores in that bin,
   and their exact order gives the threshold. The result is the single-process threshold, bit for bit.
2. Write: per pool shard (curation.write.write_part_shards), its kept samples streamed into its own tars
   in hashed-uid order. Each task sends its kept uids through the shuffle to their uid range (about
   ``PARTS_PER_SUBSET_BUCKET`` parts' worth per range), and its counts with them.
3. Subset: each uid range's task sorts what it received into ``subset/part-<range>.npy`` (the
   per-partition subset: DataComp's "u8,u8" records, sorted; the parts in name order are the whole subset,
   sorted): one file per range, no per-(part, range) files. The DataComp-compatible ``subset.npy`` is then
   filled part by part into a memory-mapped file: no process holds more than one range's uids.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pyarrow.parquet as pq

from curation import select, write
from curation.engine import TASK_BYTES, byte_groups
from curation.parts import Part, read_part
from shared import fsio
from shared.config.curation import SelectConfig
from shared.errors import OpenAIMError
from shared.stage_cache import combine_digests, digest_file

# Versioned by its step: bump VERSION in openaim/steps/select.py when this changes the step's results.
PARTS_PER_SUBSET_BUCKET = 64
_COPY_ROWS = 1 << 20  # subset rows copied into subset.npy at a time


def _survivor_scores(part: Part, keep_dirs: list[str]) -> tuple[list[str], np.ndarray]:
    """(uids, scores) of a part's rows that every upstream keep file keeps."""
    data = read_part(part.path, ("uid", "score"))
    survive = np.ones(len(data["uid"]), dtype=bool)
    for folder in keep_dirs:
        keep_file = fsio.join(folder, part.name)
        with fsio.open_file(keep_file) as f:
            k = pq.read_table(f, columns=["uid", "keep"]).to_pydict()
        if k["uid"] != data["uid"]:
            raise OpenAIMError(f"{keep_file} does not match its score part: rerun with --force")
        survive &= np.asarray(k["keep"], dtype=bool)
    return [u for u, s in zip(data["uid"], survive, strict=True) if s], data["score"][survive]


HIST_RANGES = 16  # the histogram is summed through the shuffle in this many ranges of bins


def emit_histogram(keep_dirs: list[str], task: list[Part]):
    """(bin range, (bins, counts)) of a task's survivors: its histogram as sparse counts, split by range."""
    scores = np.concatenate([_survivor_scores(part, keep_dirs)[1] for part in task])
    bins, counts = np.unique(select.score_bins(scores), return_counts=True)
    width = (1 << select.HIST_BITS) // HIST_RANGES
    where = bins // width
    for r in np.unique(where).tolist():
        yield r, (bins[where == r], counts[where == r])


def sum_histogram(bin_range: int, rows) -> np.ndarray:
    """One range of the histogram: the sparse counts of every task summed (dense over the range)."""
    width = (1 << select.HIST_BITS) // HIST_RANGES
    dense = np.zeros(width, np.int64)
    for bins, counts in rows:
        np.add.at(dense, bins - bin_range * width, counts)
    return dense


def bin_task(keep_dirs: list[str], bin_index: int, task: list[Part]) -> np.ndarray:
    return np.concatenate([select.scores_in_bin(_survivor_scores(part, keep_dirs)[1], bin_index)
                           for part in task])


def global_threshold(engine, tasks: list[list[Part]], keep_dirs: list[str],
                     cfg: SelectConfig) -> tuple[float, int]:
    """(threshold, survivors): the exact top-fraction threshold over every part (or the fixed one). The
    histogram is summed in the shuffle: the driver receives its 2**16 bins once, whatever the parts."""
    hist = np.concatenate(engine.group_reduce(tasks, partial(emit_histogram, keep_dirs), sum_histogram,
                                              HIST_RANGES))
    n = int(hist.sum())
    if cfg.threshold is not None:
        return float(cfg.threshold), n
    bin_index, rank, n = select.rank_bin(hist, cfg.fraction)
    in_bin = engine.map(partial(bin_task, keep_dirs, bin_index), tasks)
    return select.threshold_from_bin(in_bin, rank), n


def subset_bucket(subset: np.ndarray, buckets: int) -> np.ndarray:
    """The uid range (0 .. buckets-1) of each row of a subset array: its leading 32 bits scaled, so ranges
    follow the subset's sort order."""
    return ((subset["f0"] >> np.uint64(32)) * np.uint64(buckets)) >> np.uint64(32)


def subset_pieces(subset: np.ndarray, buckets: int):
    """(uid range, rows) of a sorted subset array, one piece per range it touches."""
    ranges = subset_bucket(subset, buckets)
    starts = np.flatnonzero(np.r_[True, ranges[1:] != ranges[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(subset)], strict=True):
        yield int(ranges[start]), subset[start:end]


def subset_part_task(out_dir: str, bucket: int, rows) -> tuple[int, dict, list, str]:
    """One uid range: its pieces from every write task, sorted, to ``out_dir/part-<range>.npy``; returns
    its rows, the write counts that travelled with it, the (write task, digest of its tars) pairs among
    them, and the digest of the subset part written."""
    pieces, counts, tars = [], {"written": 0, "shards": 0, "faces_blurred": 0}, []
    for kind, value in rows:
        if kind == "counts":
            task_counts, index, digest = value
            counts = {k: counts[k] + task_counts[k] for k in counts}
            tars.append((index, digest))
        else:
            pieces.append(value)
    if not pieces:
        return 0, counts, tars, ""
    subset = np.sort(np.concatenate(pieces), order=["f0", "f1"])
    with fsio.local_file(fsio.join(out_dir, f"part-{bucket:05d}.npy")) as tmp:
        np.save(tmp, subset)
        digest = digest_file(tmp)
    return len(subset), counts, tars, digest


def _rows(npy: str) -> int:
    """The rows of a .npy file, from its header."""
    with fsio.open_file(npy) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)
    return shape[0]


def concat_subset(subset_dir: str, path: str) -> int:
    """``subset.npy`` (DataComp's file) from the sorted subset parts, copied in order into a memory-mapped
    file a block at a time (written whole: shared.fsio.local_file), one part in memory at a time (a part
    is one uid range's rows); its rows."""
    parts = [p for p, _ in fsio.list_files(subset_dir, "part-*.npy")]
    total = sum(_rows(p) for p in parts)
    with fsio.local_file(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype("u8,u8"), shape=(total,))
        at = 0
        for p in parts:
            with fsio.open_file(p) as f:
                part = np.load(f)
            for start in range(0, len(part), _COPY_ROWS):
                block = part[start:start + _COPY_ROWS]
                out[at:at + len(block)] = block
                at += len(block)
        out.flush()
        del out
    return total


def write_task(keep_dirs: list[str], threshold: float, pool_dir: str, out_dir: str, shard_size: int,
               blur_faces: bool, buckets: int, task: tuple[int, list[Part]]):
    """Write a task's parts' shards; its kept uids go to their uid range through the shuffle (one subset
    file per range, written by the range's task), its counts to one range."""
    index, parts = task
    counts, digests = {"written": 0, "shards": 0, "faces_blurred": 0}, []
    for part in parts:
        uids, scores = _survivor_scores(part, keep_dirs)
        kept = {u: float(s) for u, s in zip(uids, scores.astype(np.float64), strict=True) if s >= threshold}
        done = write.write_part_shards(fsio.join(pool_dir, f"{part.stem}.tar"), kept, out_dir, shard_size,
                                       blur_faces)
        counts = {k: counts[k] + done[k] for k in counts}
        digests.append(done["digest"])
        if kept:
            for bucket, piece in subset_pieces(select.uid_subset(list(kept)), buckets):
                yield bucket, ("subset", piece)
    yield index % buckets, ("counts", (counts, index, combine_digests(digests)))


def run_select(engine, parts: list[Part], keep_dirs: list[str], pool_dir: str, shards_tmp: str,
               subset_tmp: str, subset_path: str, cfg: SelectConfig, blur_faces: bool,
               task_bytes: int = TASK_BYTES) -> dict:
    """Threshold, shards (into ``shards_tmp``) and subset parts (into ``subset_tmp``), both of which the
    caller swaps in, and ``subset.npy`` built from the parts. Parts are grouped into tasks of about
    ``task_bytes`` of score parts."""
    tasks = [[parts[i] for i in group] for group in byte_groups([p.bytes for p in parts], task_bytes)]
    threshold, survivors = global_threshold(engine, tasks, keep_dirs, cfg)
    buckets = max(1, math.ceil(len(parts) / PARTS_PER_SUBSET_BUCKET))
    write_tasks = partial(write_task, keep_dirs, threshold, pool_dir, shards_tmp, cfg.shard_size, blur_faces,
                          buckets)
    results = engine.group_reduce(list(enumerate(tasks)), write_tasks, partial(subset_part_task, subset_tmp),
                                  buckets)
    counts = {k: sum(r[1][k] for r in results) for k in ("written", "shards", "faces_blurred")}
    written = counts["written"]
    if written == 0:
        raise OpenAIMError(f"no sample scores >= the threshold {threshold:.4f}: nothing to write")
    concat_subset(subset_tmp, subset_path)  # a function of the subset parts: their digests identify it
    tars = sorted(t for r in results for t in r[2])
    return {"in": survivors, "out": written, "threshold": threshold,
            "fraction": cfg.fraction if cfg.threshold is None else None,
            "written": written, "shards": counts["shards"], "faces_blurred": counts["faces_blurred"],
            "outputs_digest": combine_digests([*(d for _, d in tars), *(r[3] for r in results)])}
