"""Config of the mini web: a synthetic, deterministic Common Crawl slice with known ground truth."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config.base import StrictModel


class WebConfig(StrictModel):
    # The mini web's folder, always on local disk (it is served from there); default {workdir}/web, which
    # a workdir on an object store cannot hold: such a config names its own web.dir.
    dir: Path | None = None
    seed: int = 0
    n_images: int = Field(2000, ge=20, description="distinct web image records (before broken/unsafe links)")
    images_per_page: int = Field(8, ge=1)
    image_size: int = Field(96, ge=16, description="side of the drawn scenes, in pixels")
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535,
                      description="port baked into the WARC's image URLs; `web serve` uses it")
    hq_size: int = Field(1500, ge=10, description="clean captioned pairs for training our own filter network")
    bench_train_per_class: int = Field(40, ge=2)
    bench_test_per_class: int = Field(20, ge=2)
    slow_seconds: float = Field(30.0, gt=0, description="how long the 'very slow' broken URLs stall")
