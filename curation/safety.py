"""Safety filters: blur faces in kept images, drop images close to configured concepts.

Faces: OpenCV's bundled Haar cascade (frontal face), each detection blurred with a strong Gaussian.
Concepts: the filter network embeds each text prompt; an image whose cosine similarity to any prompt
exceeds the threshold is dropped.
"""

from __future__ import annotations

from functools import lru_cache, partial

import cv2
import numpy as np
import pyarrow as pa
from PIL import Image

from curation.engine import TASK_BYTES, byte_groups
from curation.parts import read_part, write_table
from shared import fsio
from shared.stage_cache import combine_digests

# Versioned by its step: bump VERSION in openaim/steps/safety.py when this changes the step's results.


@lru_cache(maxsize=1)
def _face_detector():
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise RuntimeError(f"OpenCV face detector not found at {path}")
    return detector


def detect_faces(image) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) boxes of frontal faces in a PIL image."""
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    min_side = max(16, min(gray.shape) // 20)
    boxes = _face_detector().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(min_side, min_side))
    return [tuple(int(v) for v in b) for b in boxes]


def blur_faces(image):
    """Return (image with every detected face blurred, number of faces). The input is not modified."""
    boxes = detect_faces(image)
    if not boxes:
        return image, 0
    arr = np.asarray(image.convert("RGB")).copy()
    for x, y, w, h in boxes:
        # Pad the box a little: detections are tight around eyes-mouth, hair and chin still identify.
        px, py = w // 8, h // 8
        x0, y0 = max(0, x - px), max(0, y - py)
        x1, y1 = min(arr.shape[1], x + w + px), min(arr.shape[0], y + h + py)
        k = max(3, (max(x1 - x0, y1 - y0) // 3) | 1)
        arr[y0:y1, x0:x1] = cv2.GaussianBlur(arr[y0:y1, x0:x1], (k, k), 0)
    return Image.fromarray(arr), len(boxes)


def concept_filter(emb: np.ndarray, net, concepts: list[str], threshold: float) -> np.ndarray:
    """Keep mask: False for images whose cosine to any concept prompt is above ``threshold``."""
    emb = np.asarray(emb, dtype=np.float32)
    if not concepts or len(emb) == 0:
        return np.ones(len(emb), dtype=bool)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    text = np.asarray(net.encode_texts(list(concepts)), dtype=np.float32)  # [c, d], normalised
    return (emb @ text.T).max(axis=1) <= threshold


def run_safety(engine, parts: list, concept_text: np.ndarray | None, threshold: float, out: str,
               task_bytes: int = TASK_BYTES) -> dict:
    """The safety step's keep files (one per score part, into ``out``), parts grouped into tasks of about
    ``task_bytes``; returns the counts."""
    tasks = [[parts[i].path for i in group] for group in byte_groups([p.bytes for p in parts], task_bytes)]
    counts = engine.map(partial(safety_task, concept_text=concept_text, threshold=threshold, out=out), tasks)
    return {"in": sum(c["in"] for c in counts), "out": sum(c["out"] for c in counts),
            "keep_digest": combine_digests(c["digest"] for c in counts)}


def safety_task(part_paths: list[str], concept_text: np.ndarray | None, threshold: float, out: str) -> dict:
    """A task of the safety step: the keep files of a group of score parts; their counts summed."""
    counts = [safety_part(p, concept_text, threshold, out) for p in part_paths]
    return {"in": sum(c["in"] for c in counts), "out": sum(c["out"] for c in counts),
            "digest": combine_digests(c["digest"] for c in counts)}


def safety_part(part_path: str, concept_text: np.ndarray | None, threshold: float, out: str) -> dict:
    """One task of the safety step: a score part's keep file (uid, keep, reason "concept" when dropped)
    from its stored image embeddings and the concept prompts' embeddings (computed once, shipped)."""
    data = read_part(part_path, ("uid", "embedding"))
    n = len(data["uid"])
    keep = np.ones(n, dtype=bool)
    if concept_text is not None and len(concept_text) and n:
        emb = data["embedding"] / np.maximum(np.linalg.norm(data["embedding"], axis=1, keepdims=True), 1e-12)
        keep = (emb @ concept_text.T).max(axis=1) <= threshold
    digest = write_table(fsio.join(out, fsio.name_of(part_path)),
                         pa.table({"uid": data["uid"], "keep": keep.tolist(),
                                   "reason": ["" if k else "concept" for k in keep]}))
    return {"in": n, "out": int(keep.sum()), "digest": digest}
