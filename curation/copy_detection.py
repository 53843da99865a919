"""Copy-detection descriptors for near-duplicate and benchmark-leak search.

A CLIP-style filter network is trained to map *different* images with the same meaning close together
(on the mini web, every "three red circles on stripes" scene lands in nearly one point), so its
embeddings cannot tell a copy from a look-alike. Deduplication therefore searches a separate descriptor
made for copies, as DataComp does with a copy-detection model: here a small, training-free one, the
image reduced to a 16x16 thumbnail (area averaging), each colour channel centred, L2-normalised.
Resizing and re-encoding barely move it; a different layout of objects does.

Crops move it: a copy cut 5-8% in from each border and scaled back is a zoom by 1.09-1.19, which shifts
everything off-centre by up to a pixel of the thumbnail, and striped scenes then fall to cosine ~0.2.
So every image also gets *zoomed views* (central crops at `ZOOMS`) that serve as extra queries: a
crop of A matches A's zoomed view. The similarity of two images is the best cosine over views
(measured on the demo web's copy pairs: benchmarks/RESULTS.md, "Curation: dedup design figures").

`dedup_vectors` optionally mixes in the filter embedding (weight w: inner product = w * filter cosine
+ (1 - w) * copy cosine). The default weight is 0: on the mini web the filter embedding only adds
look-alike matches. A learned copy detector (e.g. SSCD) can replace the thumbnail behind the same functions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMB = 16
DIM = THUMB * THUMB * 3
ZOOMS = (1.0, 1.09, 1.18)  # view 0 is the image itself; the others are central crops (zoom-ins)
VIEWS = len(ZOOMS)


def _zoom_box(size: tuple[int, int], zoom: float) -> tuple[float, float, float, float] | None:
    if zoom == 1.0:
        return None
    w, h = size
    cw, ch = w / zoom, h / zoom
    return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)


def _unit_thumbnails(thumbs: np.ndarray) -> np.ndarray:
    """[v, THUMB, THUMB, 3] -> [v, 768] unit vectors, each colour channel centred first (a tint or a
    brightness shift is not a difference)."""
    a = thumbs.astype(np.float32)
    a -= a.mean(axis=(1, 2), keepdims=True)
    v = a.reshape(len(a), -1)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.where(norms > 1e-6, v / np.maximum(norms, 1e-6), 0.0).astype(np.float32)


def copy_views(image) -> np.ndarray:
    """PIL image -> float32 [VIEWS, 768]: the descriptor of the image and of its zoomed views
    (one colour conversion and one numpy pass for all views: this runs once per pool image)."""
    image = image.convert("RGB")
    thumbs = [np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BOX, box=_zoom_box(image.size, z)))
              for z in ZOOMS]
    return _unit_thumbnails(np.stack(thumbs))


def copy_descriptors(images) -> np.ndarray:
    """list of PIL images -> float32 [n, VIEWS, 768]."""
    return np.stack([copy_views(im) for im in images]) if images else np.zeros((0, VIEWS, DIM), np.float32)


def dedup_vectors(embeddings: np.ndarray, descriptors: np.ndarray, filter_weight: float = 0.0) -> np.ndarray:
    """[n, d] filter embeddings + [n, 768] copy descriptors (one view) -> [n, D] unit vectors for FAISS
    whose inner product is filter_weight * filter cosine + (1 - filter_weight) * copy cosine."""
    c = _unit(descriptors)
    if filter_weight <= 0:
        return c
    e = _unit(embeddings)
    if filter_weight >= 1:
        return e
    mixed = np.concatenate([np.sqrt(filter_weight) * e, np.sqrt(1 - filter_weight) * c], axis=1)
    return np.ascontiguousarray(mixed, dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x / norms, dtype=np.float32)
