"""train: pretrain AIM on the curated shards, or on the user's own (training.loop). A rerun after a
finished run first archives that run (openaim.history), so the report can compare the two."""

from __future__ import annotations

from openaim.history import archive_previous_run
from openaim.steps.base import RunContext, Step
from shared.config.root import OpenAIMConfig
from shared.stage_cache import StepSpec, hash_json, hash_path
from training.loop import train_from_config


class Train(Step):
    name, stage = "train", "train"
    # Bump when the trained weights (the whole training/ package) change for the same config and inputs:
    # this step and every step after it rerun. 2: colour-jitter factors as float32 from the per-image
    # jitter table; 3: patch bias init (l3m's).
    VERSION = 3
    reads = ("select",)
    writes = ("training/final",)

    def config(self, cfg: OpenAIMConfig) -> dict:
        return {"training": cfg.training.model_dump(mode="json")}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        """The curated shards (select's outputs), or the user's own shard list."""
        shards = ctx.cfg.training.data.shards
        return {"shards": hash_json(sorted(shards))} if shards else super().inputs(ctx)

    def prepare(self, ctx: RunContext, spec: StepSpec, rerun: bool) -> None:
        if rerun and ctx.cache.load(self.name) is not None:
            reasons = ctx.cache.check(spec).reasons + ctx.upstream_reasons
            if archive_previous_run(ctx.store, reasons, ctx.manifest_before, ctx.pipeline_before) is not None:
                ctx.cache.invalidate("train")
                ctx.cache.invalidate("eval")

    def run(self, ctx: RunContext) -> None:
        train_from_config(ctx.cfg)

    def outputs_hash(self, ctx: RunContext) -> str:
        return hash_path(ctx.store.local(self.writes[0]))
