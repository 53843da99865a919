"""select: the DataComp subset and its webdataset shards: the best-scoring kept pairs, by fraction
(curation.select_parts): ``shards/``, ``subset/`` parts by uid range and ``subset.npy``."""

from __future__ import annotations

from curation.select_parts import run_select
from openaim.steps.base import RunContext, Step
from openaim.steps.resources import engine, score_parts
from shared.config.root import OpenAIMConfig
from shared.stage_cache import combine_digests, hash_json


class Select(Step):
    name, stage = "select", "build-dataset"
    # Bump when the selected subset and its shards (curation.select_parts, select, write) change for the same
    # config and inputs: this step and every step after it rerun. 2: per-shard tars in hashed-uid order,
    # threshold from the histogram pass. 3: subset/ parts by uid range, subset.npy streamed.
    VERSION = 3
    reads = ("download", "score", "dedup", "safety")
    writes = ("curation/shards", "curation/subset", "curation/subset.npy", "curation/select_stats.json")

    def config(self, cfg: OpenAIMConfig) -> dict:
        return {"curation.select": cfg.curation.select.model_dump(mode="json"),
                "curation.safety.blur_faces": cfg.curation.safety.blur_faces}

    def run(self, ctx: RunContext) -> str:
        cur, store = ctx.cfg.curation, ctx.store
        shards, subset, subset_npy, stats = self.writes
        with store.build_dir(shards) as shards_tmp, store.build_dir(subset) as subset_tmp:
            counts = run_select(engine(ctx), score_parts(ctx),
                                [store.url("curation/dedup/keep"), store.url("curation/safety/keep")],
                                store.url("curation/pool"), shards_tmp, subset_tmp, store.url(subset_npy),
                                cur.select, cur.safety.blur_faces, cur.task_bytes)
        digest = counts.pop("outputs_digest")  # the tasks' records of the shards and parts they wrote
        store.write_json(stats, counts)
        return combine_digests([digest, hash_json(counts)])
