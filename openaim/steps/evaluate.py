"""eval: attentive and linear probes of the frozen trunks on the benchmarks (evaluation.run)."""

from __future__ import annotations

import evaluation.run
from openaim.steps.base import RunContext, Step
from shared.config.root import OpenAIMConfig
from shared.stage_cache import hash_json


class Evaluate(Step):
    name, stage = "eval", "eval"
    # evaluation.run's VERSION, which also keys the per-(checkpoint, benchmark) probe records inside the
    # step (evaluation.probe_tasks): bump it there when the probe results change.
    VERSION = evaluation.run.VERSION
    reads = ("train",)
    writes = ("eval/results.csv",)

    def config(self, cfg: OpenAIMConfig) -> dict:
        return {"evaluation": cfg.evaluation.model_dump(mode="json")}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        """The final checkpoint of this run's training, or the user's own checkpoints."""
        checkpoints = ctx.cfg.evaluation.checkpoints
        return {"checkpoints": hash_json(sorted(checkpoints))} if checkpoints else super().inputs(ctx)

    def run(self, ctx: RunContext) -> None:
        evaluation.run.evaluate_from_config(ctx.cfg)
