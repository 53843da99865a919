"""Demo sets that need no download: the mini web's tasks and scikit-learn's bundled digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from evaluation.benchmarks.generic import image_folder
from evaluation.benchmarks.items import ArrayImages
from evaluation.benchmarks.splits import fixed_split


def miniweb(root: Path, split: str):
    """<web_dir>/bench/<task>/{train,test}/<class>/*.png, written by the mini web generator."""
    return image_folder(root, split)


DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0  # fixed: the same 70/30 split for every run
DIGITS_SIZE = 32  # 8x8 upscaled (nearest) so the patch embedding sees more than one pixel per patch


def digits(root: Path | None, split: str) -> ArrayImages:
    bunch = load_digits()
    # values are 0..16 (ink counts); scale to 0..255 and repeat each pixel 4x4, grey -> RGB
    grey = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    scale = DIGITS_SIZE // grey.shape[1]
    big = grey.repeat(scale, axis=1).repeat(scale, axis=2)
    rgb = np.ascontiguousarray(np.repeat(big[..., None], 3, axis=3))
    train, test = fixed_split(
        bunch.target, (1 - DIGITS_TEST_FRACTION, DIGITS_TEST_FRACTION), DIGITS_SPLIT_SEED
    )
    indices = train if split == "train" else test
    # keys number the whole set, so train and test keys can be compared
    return ArrayImages(
        rgb[indices], bunch.target[indices], [str(d) for d in range(10)], [f"digits#{i}" for i in indices]
    )
