"""A benchmark as CLIP_benchmark's webdataset export (train/ and test/ tar shards, classnames.txt).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.benchmark_fixtures.images import image_bytes


def make_wds(root: Path, n_train: int = 6, n_test: int = 3) -> dict:
    classes = ["cat", "dog", "bird"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    fmts = [("webp", "WEBP"), ("jpg", "JPEG"), ("png", "PNG")]
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(exist_ok=True)
        k = 0
        for shard in range(2):
            with tarfile.open(root / split / f"{shard}.tar", "w") as tar:
                for _ in range(n):
                    label = k % 3
                    ext, fmt = fmts[k % 3]
                    for name, payload in (
                        (f"s{k:06d}.{ext}", image_bytes(label, fmt)),
                        (f"s{k:06d}.cls", str(label).encode()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
                    k += 1
    return {"train": 2 * n_train, "test": 2 * n_test, "classes": 3}
