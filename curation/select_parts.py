"""The select step over score parts, on an engine: the exact global threshold, then the shards.

1. Threshold (DataComp's top-fraction rule, ``select.selection_threshold``, ties kept) without any
   process seeing every score: each part task returns a histogram of its survivors' scores over the
   float32 order (2**16 bins); the driver finds the bin that holds the survivor at rank int(n * fraction);
   a second pass returns only the scores in that bin, and their exact order gives the threshold. The
   result is the single-process threshold, bit for bit.
2. Write: one task per pool shard (curation.write.write_part_shards), streaming its kept samples into
   its own tars in hashed-uid order; the DataComp subset (sorted uids) is merged from the tasks' uids.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curation import select, write
from curation.parts import Part, read_part
from shared.config.curation import SelectConfig
from shared.errors import OpenAIMError

# Bump when the selected subset and its shards (this module, select.py, write.py) change for the same config
# and inputs: this step and every step after it rerun (shared/stage_cache.py). 2: per-shard tars in
# hashed-uid order, threshold from the histogram pass.
VERSION = 2


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


def write_task(keep_dirs: list[Path], threshold: float, pool_dir: Path, out_dir: Path, shard_size: int,
               blur_faces: bool, part: Part) -> dict:
    uids, scores = _survivor_scores(part, keep_dirs)
    kept = {u: float(s) for u, s in zip(uids, scores.astype(np.float64), strict=True) if s >= threshold}
    counts = write.write_part_shards(pool_dir / f"{part.stem}.tar", kept, out_dir, shard_size, blur_faces)
    return {**counts, "subset": select.uid_subset(sorted(kept)) if kept else None}


def run_select(engine, parts: list[Part], keep_dirs: list[Path], pool_dir: Path, shards_tmp: Path,
               subset_path: Path, cfg: SelectConfig, blur_faces: bool) -> dict:
    """Threshold, shards (into ``shards_tmp``, which the caller swaps in) and the subset file."""
    threshold, survivors = global_threshold(engine, parts, keep_dirs, cfg)
    results = engine.map(partial(write_task, keep_dirs, threshold, pool_dir, shards_tmp, cfg.shard_size,
                                 blur_faces), parts)
    written = sum(r["written"] for r in results)
    if written == 0:
        raise OpenAIMError(f"no sample scores >= the threshold {threshold:.4f}: nothing to write")
    subsets = [r["subset"] for r in results if r["subset"] is not None]
    subset = np.sort(np.concatenate(subsets), order=["f0", "f1"])
    write.save_subset(subset, subset_path)
    return {"in": survivors, "out": written, "threshold": threshold,
            "fraction": cfg.fraction if cfg.threshold is None else None,
            "written": written, "shards": sum(r["shards"] for r in results),
            "faces_blurred": sum(r["faces_blurred"] for r in results)}
