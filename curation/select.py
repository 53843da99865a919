"""Step 6 of curation: keep the best-scored survivors of dedup and safety (DataComp's top-k rule).

With a fraction f over n survivors sorted by score (high first), the threshold is the score at rank int(n*f)
and every survivor scoring >= it is kept (ties at the threshold are all kept, as in DataComp). A fixed
threshold instead keeps every survivor scoring >= it.
"""

from __future__ import annotations

import numpy as np

from shared.config.curation import SelectConfig
from shared.errors import OpenAIMError

# Bump when the selected subset and its shards (this module, write.py, pipeline._select_and_write) change
# for the same config and inputs: this step and every step after it rerun (shared/stage_cache.py). Edits
# that change no result (comments, refactors) need no bump.
VERSION = 1


def selection_threshold(scores: np.ndarray, cfg: SelectConfig) -> float:
    """The score a survivor must reach to be kept."""
    if cfg.threshold is not None:
        return float(cfg.threshold)
    if scores.size == 0:
        raise OpenAIMError("nothing to select: no sample survived dedup and safety")
    ordered = np.sort(scores.astype(np.float64))[::-1]
    rank = min(int(scores.size * cfg.fraction), scores.size - 1)
    return float(ordered[rank])


def select_mask(scores: np.ndarray, survivors: np.ndarray, cfg: SelectConfig) -> tuple[np.ndarray, float]:
    """Boolean keep mask over all rows (only survivors can be kept) and the threshold used."""
    scores = np.asarray(scores, dtype=np.float64)
    survivors = np.asarray(survivors, dtype=bool)
    threshold = selection_threshold(scores[survivors], cfg)
    return survivors & (scores >= threshold), threshold


def uid_subset(uids: list[str] | np.ndarray) -> np.ndarray:
    """DataComp subset file content: the 128-bit hex uids as a sorted structured array of two uint64."""
    pairs = [(int(u[:16], 16), int(u[16:32], 16)) for u in uids]
    arr = np.array(pairs, dtype=np.dtype("u8,u8"))
    return np.sort(arr, order=["f0", "f1"])


def subset_to_uids(arr: np.ndarray) -> list[str]:
    """Inverse of uid_subset (for checks and for reading DataComp subsets)."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in arr.tolist()]
