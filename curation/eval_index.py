"""The evaluation index that decontamination checks the pool against: every test image we evaluate on.

The test splits come from the evaluation registry (evaluation.benchmarks.registry), read by its own
loaders: the mini web's sets (``<web>/bench/<task>``), every paper benchmark whose files are found under
``evaluation.data_root`` (official layouts), the digits set, and any generic ``imagefolder:``/``wds:`` set
named in ``evaluation.benchmarks``. ``dedup.eval_sets`` narrows it to the named benchmarks.

The index is each test image's copy descriptor and zoomed views (curation.copy_detection), mixed with the
filter embedding when ``dedup.filter_weight`` > 0, as the unit dedup vectors [images * views, D]. It is
small next to the pool (test splits: ~10^5 images) and written once per dedup run to a file every dedup
task loads.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from curation.copy_detection import copy_descriptors, dedup_vectors
from evaluation.benchmarks.registry import benchmark_root, load_split, missing_reason, resolve_benchmarks
from evaluation.benchmarks.spec import BenchmarkSpec
from shared import fsio
from shared.errors import OpenAIMError

log = logging.getLogger("openaim.curation")
BATCH = 256


def eval_benchmarks(eval_sets: list[str], benchmarks: list[str], data_root: str | Path,
                    web_dir: Path) -> list[tuple[BenchmarkSpec, Path]]:
    """(spec, root) of every registry benchmark whose test split is present: curation.dedup.eval_sets,
    or (when that is empty) every known set plus evaluation.benchmarks, looked for under evaluation's
    ``data_root`` and the mini web's ``web_dir``."""
    found = []
    for spec in resolve_benchmarks(eval_sets or ["all", *benchmarks]):
        root = benchmark_root(spec, data_root, web_dir)
        reason = missing_reason(spec, root)
        if reason:
            if eval_sets:
                log.warning("dedup: not decontaminated against %s", reason)
            continue
        found.append((spec, root))
    return found


def eval_signature(found: list[tuple[BenchmarkSpec, Path]]) -> str:
    """What the index is built from, cheaply: each set's files by name, size and mtime (the stage cache's
    input: a changed or added test set reruns dedup, nothing is decoded to find out)."""
    h = hashlib.sha256()
    for spec, root in found:
        h.update(f"{spec.name}\0{root}\n".encode())
        if spec.name == "digits":
            continue  # bundled with scikit-learn: no files
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _test_images(spec: BenchmarkSpec, root: Path):
    split = load_split(spec, root, "test")
    for i in range(len(split)):
        item = split[i]
        if item is not None:
            yield item[0]


def build_eval_index(found: list[tuple[BenchmarkSpec, Path]], out: str, filter_weight: float,
                     encode_images=None) -> int:
    """Write the index to ``out`` (.npy, a path or a URL, written whole); returns the number of test
    images in it.
    ``encode_images`` (the filter network's) is needed only when ``filter_weight`` > 0."""
    blocks = []
    count = 0
    for spec, root in found:
        try:
            images = [*_test_images(spec, root), None]
        except OpenAIMError as exc:
            # A test split that cannot be read cannot be evaluated either (eval records it as failed), so
            # one damaged benchmark does not stop curation; fixing its files reruns dedup (eval_signature).
            log.warning("dedup: not decontaminated against %s: %s", spec.name, exc)
            continue
        batch: list = []
        for image in images:
            if image is not None:
                batch.append(image.convert("RGB"))
            if batch and (image is None or len(batch) == BATCH):
                copies = copy_descriptors(batch)  # [m, views, 768]
                emb = encode_images(batch) if filter_weight > 0 else np.zeros((len(batch), 1), np.float32)
                blocks += [dedup_vectors(emb, copies[:, v], filter_weight) for v in range(copies.shape[1])]
                count += len(batch)
                batch = []
        log.info("dedup: eval index: %s", spec.name)
    index = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, 1), np.float32)
    with fsio.local_file(out) as tmp, open(tmp, "wb") as f:
        np.save(f, index)
    return count
