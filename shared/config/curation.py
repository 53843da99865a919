"""Config of `openaim build-dataset` (Common Crawl pairs -> DFN filter -> dedup -> top fraction -> shards)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from shared.config.base import StrictModel
from shared.config.benchmark_names import check_benchmark_name

DRIVER_SAMPLE = 65_536  # dedup.driver_sample's default


class ExtractConfig(StrictModel):
    # WARC/WAT paths, globs, http(s) URLs, or url/caption parquet files. Empty = the mini web's WARCs.
    sources: list[str] = Field(default_factory=list)
    allow_hosts: list[str] = Field(default_factory=list,
                                   description="hosts (names, or IP addresses: any name resolving to one) "
                                               "fetched although not globally routable")
    min_caption_chars: int = Field(1, ge=0)
    # Web input is hostile: a 1 MiB gzip or brotli body can inflate to gigabytes. Common Crawl stores at most
    # 1 MiB of a page (more is cut, WARC-Truncated), so 16 MiB decoded is far past an honest page. A task's
    # peak memory grows with it: parsing a cut page of parse errors (a bomb of NULs) costs ~20x its size.
    max_page_bytes: int = Field(16 << 20, ge=1024,
                                description="the most bytes of one record read, stored and after its "
                                            "transfer/content codings are undone; a page over it is parsed "
                                            "from its first max_page_bytes and counted as oversized_records")


class DownloadConfig(StrictModel):
    distributor: Literal["multiprocessing", "pyspark"] = "multiprocessing"
    processes: int = Field(2, ge=1)
    threads: int = Field(16, ge=1)
    image_size: int = Field(224, ge=16)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio"
    samples_per_shard: int = Field(1000, ge=1)
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(0, ge=0)
    max_image_pixels: int = Field(40_000_000, ge=1,
                                  description="decompression-bomb cap, checked before decoding")


class FilterNetworkConfig(StrictModel):
    # An open_clip spec: "hf-hub:apple/DFN-public", "ViT-B-32" (+ pretrained tag), or "own" for the
    # filter network trained by `openaim train-filter` on the high-quality set.
    model: str = "own"
    pretrained: str | None = None
    checkpoint: str | None = None
    batch_size: int = Field(128, ge=1)
    # How scoring runs; neither changes a score, so neither is part of the score step's cache key.
    num_workers: int = Field(
        1, ge=0, description="image-decoding processes per scoring rank (0/1: in the scoring process)")
    device: str = Field(
        "auto", description="'auto' (cuda:LOCAL_RANK when CUDA is present, else cpu), 'cpu' or 'cuda[:i]'")
    lease_s: float = Field(
        60.0, gt=0, description="seconds a scoring rank's claim on a pool shard lasts unless renewed (every "
                                 "third of it while the rank lives): a dead rank's shard is taken after this")


class TrainFilterConfig(StrictModel):
    embed_dim: int = Field(64, ge=8)
    image_size: int = Field(64, ge=16)
    vision_width: int = Field(128, ge=16)
    vision_layers: int = Field(3, ge=1)
    patch_size: int = Field(8, ge=1)
    text_width: int = Field(128, ge=16)
    text_layers: int = Field(3, ge=1)
    text_heads: int = Field(4, ge=1)
    context_length: int = Field(32, ge=8)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads while training (default: torch's "
                                "choice, which follows OMP_NUM_THREADS)")


class DedupConfig(StrictModel):
    exact: bool = True
    near: bool = True
    near_threshold: float = Field(
        0.9, gt=0, le=1, description="cosine (best over zoomed views) above which two images are copies")
    filter_weight: float = Field(
        0.0, ge=0, le=1,
        description="share of the filter-embedding cosine in the copy similarity (0: copy descriptor only)")
    # Near copies are searched cluster by cluster (curation.dedup_parts): "flat" = one cluster, exact but
    # one task holds every row; "auto" = one cluster up to flat_max rows, else ~sqrt(3 n) k-means clusters
    # (compared in a PCA-64 space past 50k rows, candidates checked on the stored descriptors); "ivf" =
    # clusters and PCA at any size.
    index: Literal["auto", "flat", "ivf"] = "auto"
    flat_max: int = Field(5_000, ge=1,
                          description="most rows compared all against all by one task under 'auto'")
    # The clusters are trained from a sample of the survivors (~2 (4096 + 40 sqrt(3 n)) rows). Up to this
    # many sample rows the driver reads the whole sample; past it, a seeded subsample of at most this many
    # rows (view 0, 768 float32 each: 192 MiB at the default) trains the PCA and a coarse k-means on the
    # driver, and engine tasks keyed by coarse cluster train the fine centroids and bound their tasks
    # (curation.dedup_near): the driver's share of the sample is bounded whatever the pool's size.
    driver_sample: int = Field(DRIVER_SAMPLE, ge=100,
                               description="most sample rows the driver reads to train the clusters")
    decontaminate: bool = True
    eval_threshold: float = Field(
        0.9, gt=0, le=1, description="copy similarity to any evaluation image above which a pool image goes")
    eval_sets: list[str] = Field(default_factory=list,
                                 description="registry benchmark names to decontaminate against; "
                                 "empty = every "
                                 "benchmark found (mini web sets, evaluation.data_root)")

    _known_eval_sets = field_validator("eval_sets")(lambda names: [check_benchmark_name(n) for n in names])

    @model_serializer(mode="wrap")
    def _identity(self, handler):
        """driver_sample is left out at its default: it came after the configs whose hashes step records
        and manifests hold, and the default keeps their results (pools whose sample fits the driver); a
        set value is part of the identity."""
        out = handler(self)
        if self.driver_sample == DRIVER_SAMPLE:
            out.pop("driver_sample", None)
        return out


class SafetyConfig(StrictModel):
    blur_faces: bool = True
    concepts: list[str] = Field(default_factory=list,
                                description="text prompts whose close images are dropped")
    concept_threshold: float = Field(0.3, ge=-1, le=1)


class SelectConfig(StrictModel):
    fraction: float | None = Field(0.15, gt=0, le=1)
    threshold: float | None = Field(None, ge=-1, le=1)
    shard_size: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _one_rule(self) -> SelectConfig:
        if self.fraction is None and self.threshold is None:
            raise ValueError("set either fraction or threshold")
        return self


class CurationConfig(StrictModel):
    # Where the partition functions of extract, dedup, safety and select run (curation.engine): "local"
    # (this process when workers is 1, else a pool of spawned worker processes) or "spark" (Spark tasks:
    # the active SparkSession, e.g. under spark-submit, else local[workers]). Neither changes a result, so
    # neither is part of any step's cache key. Download has its own distributor; scoring runs under torchrun.
    engine: Literal["local", "spark"] = "local"
    workers: int = Field(1, ge=1,
                         description="local: worker processes (1: in-process); spark: local[N] cores")
    task_bytes: int = Field(1 << 30, ge=1,
                            description="input bytes per task of dedup, safety and select: consecutive small "
                                        "score parts are grouped into one task up to this size (never "
                                        "changes a result)")
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    filter: FilterNetworkConfig = Field(default_factory=FilterNetworkConfig)
    train_filter: TrainFilterConfig = Field(default_factory=TrainFilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
