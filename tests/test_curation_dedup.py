"""Dedup on planted duplicates: exact by digest, near by embedding (flat and PCA+IVF agree),
decontamination."""

from __future__ import annotations

import numpy as np

from curation.dedup import decontaminate
from tests.reference_dedup import exact_duplicates, near_duplicates


def _planted(n: int, d: int, n_dups: int, seed: int = 0):
    """n random unit vectors, the last n_dups of them noisy copies of earlier rows; (emb, scores, source)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    src = rng.choice(n - n_dups, size=n_dups, replace=False)
    emb[n - n_dups:] = emb[src] + 0.02 * rng.normal(size=(n_dups, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, rng.random(n).astype(np.float32), src


def test_exact_duplicates_keep_the_highest_score():
    digests = ["a", "b", "a", "c", "b", "a"]
    scores = np.array([0.1, 0.9, 0.7, 0.5, 0.2, 0.3])
    keep = exact_duplicates(digests, scores)
    assert keep.tolist() == [False, True, True, True, False, False]


def test_near_duplicates_found_and_best_kept():
    emb, scores, src = _planted(2000, 64, 100, seed=1)
    keep = near_duplicates(emb, scores, threshold=0.95, index="flat")
    dup = np.arange(1900, 2000)
    assert keep.sum() == 1900  # exactly one of each planted pair goes
    for original, copy in zip(src, dup, strict=True):
        best = original if scores[original] >= scores[copy] else copy
        assert keep[best] and not keep[original + copy - best]


def test_flat_and_ivf_agree_on_20k_planted():
    emb, scores, _ = _planted(20_000, 64, 500, seed=2)
    flat = near_duplicates(emb, scores, threshold=0.95, index="flat")
    ivf = near_duplicates(emb, scores, threshold=0.95, index="ivf")
    assert flat.sum() == 19_500
    assert (flat == ivf).mean() >= 0.999


def test_decontaminate_drops_leaks_only():
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(500, 32)).astype(np.float32)
    evals = rng.normal(size=(40, 32)).astype(np.float32)
    leaked = [5, 77, 300]
    pool[leaked] = evals[[0, 1, 2]] * 3 + 0.01 * rng.normal(size=(3, 32))  # scale does not hide a leak
    keep = decontaminate(pool, evals, threshold=0.95)
    assert sorted(np.flatnonzero(~keep).tolist()) == leaked


def test_a_chain_of_look_alikes_is_not_merged():
    """A~B and B~C but not A~C: only B (a copy of the better A) goes; C is no copy of A and stays."""
    from curation.dedup import keep_best_of_neighbours

    keep = keep_best_of_neighbours(3, np.array([0, 1]), np.array([1, 2]), np.array([0.9, 0.8, 0.7]))
    assert keep.tolist() == [True, False, True]
    # If B scores best it stays and both of its copies go.
    keep = keep_best_of_neighbours(3, np.array([0, 1]), np.array([1, 2]), np.array([0.5, 0.9, 0.7]))
    assert keep.tolist() == [False, True, False]
    # A long chain of 1000 look-alikes keeps every other one, not a single image.
    n = 1000
    keep = keep_best_of_neighbours(n, np.arange(n - 1), np.arange(1, n), np.linspace(1, 0, n))
    assert keep.sum() == n // 2 and keep[0]


def _scene(seed: int, texture: str):
    from shared.miniweb.scenes import draw_scene, sample_scene

    scene = sample_scene(np.random.default_rng(seed), texture=texture, count=3)
    return draw_scene(scene, 96).resize((64, 64))


def test_zoomed_views_catch_cropped_copies_of_striped_scenes():
    """A 6% crop of a striped scene defeats the plain thumbnail; the zoomed views find it, and distinct
    scenes with the same attributes stay apart."""
    from PIL import Image

    from curation.copy_detection import VIEWS, copy_descriptors

    originals = [_scene(s, t) for s in range(6) for t in ("stripes", "checker")]
    crops = []
    for im in originals:
        m = 4  # ~6% of 64 px off each border, scaled back: the mini web's "cropped" near duplicate
        crops.append(im.crop((m, m, 64 - m, 64 - m)).resize((64, 64), Image.Resampling.BICUBIC))
    d = copy_descriptors(originals + crops)  # [24, views, 768]
    assert d.shape == (24, VIEWS, 768)
    plain = (d[:12, 0] * d[12:, 0]).sum(1)
    best = np.maximum.reduce([(d[:12, v] * d[12:, 0]).sum(1) for v in range(VIEWS)])
    assert plain.min() < 0.9 <= best.min(), (plain.min(), best.min())
    # near_duplicates with the views as extra queries pairs every crop with its original, nothing else
    scores = np.r_[np.ones(12), np.zeros(12)]
    keep = near_duplicates(d[:, 0], scores, 0.9, index="flat", views=[d[:, v] for v in range(1, VIEWS)])
    assert keep.tolist() == [True] * 12 + [False] * 12
    keep_plain = near_duplicates(d[:, 0], scores, 0.9, index="flat")
    assert keep_plain[12:].sum() > 0, "without views some crops survive (the reason views exist)"


def test_views_work_through_ivf_too():
    emb, scores, src = _planted(20_000, 64, 300, seed=4)
    rng = np.random.default_rng(5)
    # a "view" of each copy row that is its source's vector (as a zoom of a crop would be); the row itself
    # is far
    view = emb.copy()
    moved = np.arange(19_700, 20_000)
    emb[moved] = rng.normal(size=(300, 64))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    view[moved] = emb[src] + 0.01 * rng.normal(size=(300, 64))
    flat = near_duplicates(emb, scores, 0.95, index="flat", views=[view])
    ivf = near_duplicates(emb, scores, 0.95, index="ivf", views=[view])
    assert flat.sum() == 19_700 and (flat == ivf).mean() >= 0.999
