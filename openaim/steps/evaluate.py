"""eval: attentive and linear probes of the frozen trunks on the benchmarks (evaluation.run)."""

from __future__ import annotations

import evaluation.run
from evaluation.checkpoints import checkpoint_entries, checkpoint_stats
from openaim.steps.base import RunContext, Step
from shared.config.root import OpenAIMConfig
from shared.errors import ConfigError, InputError
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
        """The user's own checkpoints, or this run's training (its step's record); and either way the
        version of every checkpoint the step would evaluate (evaluation.checkpoints.checkpoint_stats: the
        weights' size and mtime or ETag, from metadata): a checkpoint rewritten in place, or one committed
        to training.checkpoint_root after the train step's record (a run continued outside `openaim run`,
        a root shared by runs) with evaluate_intermediate, makes the step stale."""
        cfg = ctx.cfg
        found = {} if cfg.evaluation.checkpoints else super().inputs(ctx)
        try:
            entries = checkpoint_entries(cfg.evaluation, cfg.training_dir, cfg.name, cfg.training.steps,
                                         cfg.training.checkpoint_root)
            found["checkpoints"] = hash_json(checkpoint_stats(entries))
        # nothing trained yet, a checkpoint missing, a URL workdir (eval's folder is local): planning goes on
        # (`openaim status` of a curation run in a bucket), and the step's run says which
        except (InputError, ConfigError) as exc:
            found["checkpoints"] = f"unreadable: {exc}"
        return found

    def run(self, ctx: RunContext) -> None:
        evaluation.run.evaluate_from_config(ctx.cfg)
