"""safety: drop pairs whose image matches an unsafe concept prompt (curation.safety), one keep file per
score part."""

from __future__ import annotations

import numpy as np

from curation.safety import run_safety
from openaim.steps.base import RunContext, Step
from openaim.steps.resources import engine, filter_net, score_parts
from shared.config.root import OpenAIMConfig
from shared.stage_cache import combine_digests, hash_json


class Safety(Step):
    name, stage = "safety", "build-dataset"
    # Bump when the safety keep files (curation.safety, curation.parts) change for the same config and
    # inputs: this step and every step after it rerun. 2: one keep file per score part.
    VERSION = 2
    reads = ("score",)
    writes = ("curation/safety/keep", "curation/safety/stats.json")

    def config(self, cfg: OpenAIMConfig) -> dict:
        conf = cfg.curation.safety  # blur_faces is select's: it changes the shards, not the keep files
        return {"curation.safety": {"concepts": conf.concepts, "concept_threshold": conf.concept_threshold}}

    def run(self, ctx: RunContext) -> str:
        conf = ctx.cfg.curation.safety
        text = (np.asarray(filter_net(ctx).encode_texts(list(conf.concepts)), np.float32) if conf.concepts
                else None)
        keep, stats = self.writes
        with ctx.store.build_dir(keep) as tmp:
            counts = run_safety(engine(ctx), score_parts(ctx), text, conf.concept_threshold, tmp,
                                ctx.cfg.curation.task_bytes)
        n, kept = counts["in"], counts["out"]
        summary = {"in": n, "out": kept, "dropped": {"concept": n - kept}}
        ctx.store.write_json(stats, summary)
        return combine_digests([counts["keep_digest"], hash_json(summary)])
