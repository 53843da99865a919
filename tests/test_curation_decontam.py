"""Decontamination against a real benchmark layout under ``evaluation.data_root``.

The Oxford-IIIT Pets layout (images/ + annotations/{trainval,test}.txt, written by
tests/benchmark_fixtures/ as torchvision reads it) gets one textured test image; a resized re-encode of
it is planted in a crawl of random scenes. The dedup step, run as build-dataset runs it (openaim.steps,
the evaluation registry's loaders), must drop exactly that pool image as an eval leak, and a test image of
a *train* split must not count.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from curation.copy_detection import copy_descriptors
from curation.parts import write_part
from evaluation.benchmarks.registry import BENCHMARKS
from openaim.pipeline import run_steps, step_named
from openaim.steps.base import RunContext
from shared.config import load_config
from shared.stage_cache import StepSpec
from tests.benchmark_fixtures.indexed import make_pets


def _scene(rng, side: int = 64) -> Image.Image:
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)


def _jpeg(image: Image.Image, side: int) -> Image.Image:
    buf = io.BytesIO()
    image.resize((side, side), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_planted_benchmark_test_image_is_an_eval_leak(tmp_path):
    rng = np.random.default_rng(0)
    data_root = tmp_path / "benchmarks"
    pets = data_root / BENCHMARKS["pets"].default_subdir
    make_pets(pets)
    leaked, train_only = _scene(rng), _scene(rng)
    leaked.save(pets / "images" / "Abyssinian_test1.jpg", quality=95)  # in annotations/test.txt
    train_only.save(pets / "images" / "Abyssinian_trainval0.jpg", quality=95)  # a train image

    # The crawl: 40 random scenes, a resized re-encode of the test image at row 17, of the train one at 23.
    images = [_scene(rng) for _ in range(40)]
    images[17], images[23] = _jpeg(leaked, 96), _jpeg(train_only, 96)
    uids = [f"{i:032x}" for i in range(40)]
    cfg = load_config(None, [f"workdir={tmp_path / 'run'}", f"evaluation.data_root={data_root}"])
    parts = cfg.curation_dir / "scores" / "parts"
    for s in range(0, 40, 16):
        e = min(40, s + 16)
        write_part(parts / f"{s // 16:05d}.parquet", uids[s:e], [str(i) for i in range(s, e)],
                   [f"{i:064x}" for i in range(s, e)], rng.random(e - s), np.ones((e - s, 8), np.float32),
                   copy_descriptors(images[s:e]))
    ctx = RunContext(cfg)
    ctx.cache.record(StepSpec("score", config={"fixture": True}), outputs_hash="score-fixture")
    run_steps(ctx, [step_named("dedup")])

    keep = pq.read_table(cfg.curation_dir / "dedup" / "keep").to_pydict()
    leaks = [u for u, r in zip(keep["uid"], keep["reason"], strict=True) if r == "eval_leak"]
    assert leaks == [uids[17]]
    stats = (cfg.curation_dir / "dedup" / "stats.json").read_text()
    assert '"pets"' in stats
    # the step's inputs name the eval sets: unchanged, dedup is reused; a changed test split reruns it
    again = RunContext(cfg)
    run_steps(again, [step_named("dedup")])
    assert again.reused == ["dedup"]
    _scene(rng).save(pets / "images" / "Abyssinian_test1.jpg", quality=95)
    again = RunContext(cfg)
    run_steps(again, [step_named("dedup")])
    assert again.ran == ["dedup"]
