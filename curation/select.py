"""Step 6 of curation: keep the best-scored survivors of dedup and safety (DataComp's top-k rule).

With a fraction f over n survivors sorted by score (high first), the threshold is the score at rank int(n*f)
and every survivor scoring >= it is kept (ties at the threshold are all kept, as in DataComp). A fixed
threshold instead keeps every survivor scoring >= it.
"""

from __future__ import annotations

import numpy as np

from shared.config.curation import SelectConfig
from shared.errors import OpenAIMError


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


# -- the exact threshold over parts, from a histogram pass (no process sees every score) -----------------
HIST_BITS = 16  # histogram bins = 2**16 over the float32 order (top bits of the order-preserving key)


def _order_keys(scores: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the float order (sign bit flipped, negatives inverted)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint32)


def score_bins(scores: np.ndarray) -> np.ndarray:
    """The histogram bin (0 .. 2**HIST_BITS - 1) of each score (float32), in the float order."""
    return (_order_keys(scores) >> (32 - HIST_BITS)).astype(np.int64)



def scores_in_bin(scores: np.ndarray, bin_index: int) -> np.ndarray:
    return np.asarray(scores, np.float32)[(_order_keys(scores) >> (32 - HIST_BITS)) == bin_index]


def rank_bin(histogram: np.ndarray, fraction: float) -> tuple[int, int, int]:
    """(bin holding the survivor at descending rank int(n * fraction), that rank within the bin, n)."""
    n = int(histogram.sum())
    if n == 0:
        raise OpenAIMError("nothing to select: no sample survived dedup and safety")
    rank = min(int(n * fraction), n - 1)
    above = np.cumsum(histogram[::-1])  # survivors in the top bins, highest bin first
    top = int(np.searchsorted(above, rank + 1))  # first count of top bins that passes the rank
    bin_index = len(histogram) - 1 - top
    return bin_index, rank - (int(above[top - 1]) if top else 0), n


def threshold_from_bin(bin_scores: list[np.ndarray], rank_in_bin: int) -> float:
    """The exact threshold: the score at ``rank_in_bin`` (descending) among the scores of its bin."""
    ordered = np.sort(np.concatenate(bin_scores).astype(np.float64))[::-1]
    return float(ordered[rank_in_bin])
