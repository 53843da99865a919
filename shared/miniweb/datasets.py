"""The clean sets drawn beside the web: labelled benchmark folders and the high-quality captioned pairs.

Each set draws from its own random stream (see `stream`), so web, hq and benchmark images never coincide.
Files are written plainly: `generate_web` writes into a temporary directory that it swaps in whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from shared.miniweb.captions import NUMBER_WORDS, describe
from shared.miniweb.scenes import COLORS, SHAPES, TEXTURES, Scene, draw_scene, encode, sample_scene

# Stream ids: one independent random stream per set (and per item inside it).
WEB, HQ, BENCH, PLAN = 1, 2, 3, 4

# task -> (scene attribute it labels, class names in label order)
BENCH_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "miniweb-shape": ("shape", SHAPES),
    "miniweb-color": ("color", tuple(COLORS)),
    "miniweb-count": ("count", tuple(NUMBER_WORDS.values())),
    "miniweb-texture": ("texture", TEXTURES),
}
COUNT_OF_WORD = {w: n for n, w in NUMBER_WORDS.items()}


def stream(seed: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, *ids])


@dataclass
class BenchImage:
    task: str
    split: str
    class_name: str
    index: int
    scene: Scene
    relpath: str  # under OUT/

    @property
    def image_id(self) -> str:
        return f"bench:{self.task}/{self.split}/{self.class_name}/{self.index:04d}"


def write_bench(out: Path, seed: int, side: int, train_per_class: int, test_per_class: int,
                progress=None) -> list[BenchImage]:
    """OUT/bench/<task>/{train,test}/<class>/<index>.png; returns every image written."""
    written: list[BenchImage] = []
    for t, (task, (attr, classes)) in enumerate(BENCH_TASKS.items()):
        for s, (split, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
            for c, class_name in enumerate(classes):
                value = COUNT_OF_WORD[class_name] if attr == "count" else class_name
                folder = out / "bench" / task / split / class_name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    scene = sample_scene(stream(seed, BENCH, t, s, c, i), **{attr: value})
                    rel = f"bench/{task}/{split}/{class_name}/{i:04d}.png"
                    (out / rel).write_bytes(encode(draw_scene(scene, side), "PNG"))
                    written.append(BenchImage(task, split, class_name, i, scene, rel))
                    if progress is not None:
                        progress()
    return written


def write_hq(out: Path, seed: int, side: int, size: int, shard_size: int, progress=None) -> list[str]:
    """OUT/hq/hq-%05d.tar webdataset shards of (jpg, txt) clean pairs; returns the shard paths (relative)."""
    (out / "hq").mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    for shard, start in enumerate(range(0, size, shard_size)):
        rel = f"hq/hq-{shard:05d}.tar"
        # Fixed member metadata: identical tars per seed.
        with open(out / rel, "wb") as f, wds.TarWriter(f, user="", group="", mode=0o644, mtime=0) as sink:
            for i in range(start, min(size, start + shard_size)):
                rng = stream(seed, HQ, i)
                scene = sample_scene(rng)
                jpg = encode(draw_scene(scene, side), quality=92)
                sink.write({"__key__": f"{i:07d}", "jpg": jpg, "txt": describe(scene, rng)})
                if progress is not None:
                    progress()
        shards.append(rel)
    return shards
