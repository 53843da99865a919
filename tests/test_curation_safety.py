"""Face blurring on a real photo and the concept filter on real text embeddings."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import data

from curation.safety import blur_faces, concept_filter, detect_faces


def test_astronaut_face_is_found_and_only_its_region_changes():
    image = Image.fromarray(data.astronaut())
    boxes = detect_faces(image)
    assert boxes, "the Haar detector should find the astronaut's face"
    blurred, n = blur_faces(image)
    assert n == len(boxes) >= 1
    before, after = np.asarray(image).astype(int), np.asarray(blurred).astype(int)
    x, y, w, h = boxes[0]
    assert np.abs(before[y:y + h, x:x + w] - after[y:y + h, x:x + w]).mean() > 3
    mask = np.zeros(before.shape[:2], bool)
    for bx, by, bw, bh in boxes:  # far from every box (beyond the padding) nothing changes
        mask[max(0, by - bh):by + 2 * bh, max(0, bx - bw):bx + 2 * bw] = True
    assert (before[~mask] == after[~mask]).all()
    assert np.asarray(image).tolist() == data.astronaut().tolist()  # input untouched


def test_image_without_face_is_returned_unchanged():
    flat = Image.new("RGB", (128, 128), (120, 140, 160))
    out, n = blur_faces(flat)
    assert n == 0 and out.tobytes() == flat.tobytes()


class _TextNet:
    """A stand-in text tower: fixed unit vectors per prompt (the filter itself is plain numpy)."""

    def __init__(self, table):
        self.table = table

    def encode_texts(self, texts):
        return np.stack([self.table[t] for t in texts])


def test_concept_filter_drops_the_image_nearest_a_concept():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 16)).astype(np.float32)
    concept = emb[17] / np.linalg.norm(emb[17])
    concept = concept + 0.05 * rng.normal(size=16)
    concept = (concept / np.linalg.norm(concept)).astype(np.float32)
    net = _TextNet({"a forbidden thing": concept})
    keep = concept_filter(emb, net, ["a forbidden thing"], threshold=0.8)
    assert not keep[17] and keep.sum() == 49
    assert concept_filter(emb, net, [], 0.8).all()
