"""Units of the curation stage: face blurring, concept filter, dedup, uid subsets, filter-network errors."""

from __future__ import annotations

import numpy as np
import pytest


def test_face_blur_on_a_real_photo():
    from PIL import Image
    from skimage import data

    from curation.safety import blur_faces, detect_faces

    img = Image.fromarray(data.astronaut())
    boxes = detect_faces(img)
    assert len(boxes) >= 1
    out, n = blur_faces(img)
    assert n == len(boxes)
    a, b = np.asarray(img).astype(int), np.asarray(out).astype(int)
    x, y, w, h = boxes[0]
    assert np.abs(a[y:y + h, x:x + w] - b[y:y + h, x:x + w]).mean() > 5  # the face changed
    assert (a[-40:, :40] == b[-40:, :40]).all()  # far-away pixels did not
    plain = Image.new("RGB", (128, 128), (200, 30, 30))
    assert blur_faces(plain) == (plain, 0)


class _TextNet:
    def __init__(self, table):
        self.table = table

    def encode_texts(self, texts):
        return np.stack([self.table[t] for t in texts])


def test_concept_filter_drops_images_near_a_concept():
    from curation.safety import concept_filter

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    net = _TextNet({"weapon": emb[7] + 0.01})
    keep = concept_filter(emb, net, ["weapon"], threshold=0.9)
    assert not keep[7] and keep.sum() == 49
    assert concept_filter(emb, net, [], 0.9).all()


def _planted(n, d, n_pairs, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.choice(n, n_pairs, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), n_pairs, replace=False)
    x[dst] = x[src] + rng.normal(scale=0.01, size=(n_pairs, d)).astype(np.float32)
    return x, src, dst


def test_near_duplicates_keep_the_best_scoring_copy_flat_and_ivf_agree():
    from tests.reference_dedup import near_duplicates

    x, src, dst = _planted(20_000, 64, 300)
    scores = np.random.default_rng(1).random(len(x))
    flat = near_duplicates(x, scores, 0.95, index="flat")
    ivf = near_duplicates(x, scores, 0.95, index="ivf")
    assert (flat == ivf).mean() > 0.999
    for s, t in zip(src, dst, strict=True):
        assert flat[s] != flat[t]
        assert flat[s if scores[s] > scores[t] else t]
    assert flat.sum() == len(x) - 300


def test_exact_duplicates_and_decontamination():
    from curation.dedup import decontaminate
    from tests.reference_dedup import exact_duplicates

    keep = exact_duplicates(["a", "b", "a", "c", "a"], np.array([0.1, 0.5, 0.9, 0.2, 0.3]))
    assert keep.tolist() == [False, True, True, True, False]
    x, src, _dst = _planted(500, 32, 5)
    leak = decontaminate(x, x[src[:3]] + 0.001, 0.95)
    assert (~leak).sum() >= 3 and not leak[src[:3]].any()


def test_uid_subset_roundtrip():
    from curation.select import subset_to_uids, uid_subset

    uids = sorted(f"{i:032x}" for i in (5, 2**70 + 3, 2**127 + 9))
    arr = uid_subset(uids)
    assert arr.dtype == np.dtype("u8,u8")
    assert subset_to_uids(arr) == uids


def test_selection_rule_is_datacomp_top_k():
    from curation.select import select_mask
    from shared.config.curation import SelectConfig

    scores = np.arange(100, dtype=float)
    survivors = np.ones(100, bool)
    survivors[99] = False
    mask, threshold = select_mask(scores, survivors, SelectConfig(fraction=0.1))
    assert not mask[99] and mask.sum() in (9, 10) and threshold >= 89
    mask, threshold = select_mask(scores, survivors, SelectConfig(fraction=None, threshold=0.5))
    assert threshold == 0.5


def test_unloadable_filter_network_is_one_line(tmp_path):
    from curation.filter_network import load_filter_network
    from shared.config.curation import FilterNetworkConfig
    from shared.errors import InputError

    for cfg in (FilterNetworkConfig(model="hf-hub:apple/DFN-public"),
                FilterNetworkConfig(model="own"),
                FilterNetworkConfig(model="ViT-B-32", checkpoint=str(tmp_path / "missing.pt"))):
        with pytest.raises(InputError) as err:
            load_filter_network(cfg, tmp_path / "nothing-here")
        assert "\n" not in str(err.value)
