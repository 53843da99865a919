"""score: every pool shard through the filter network, one part per shard (curation.score). Under torchrun
rank 0 runs the other steps and owns the stage cache, and tells the other ranks (which only join this
step: ``join``) whether it reruns; then every rank leaves the process group (no collective follows: the
ranks share the pool through the scoring queue, curation.shard_queue) and, if the step reruns, scores
until every part exists, so a rank that dies mid-shard stops no other rank."""

from __future__ import annotations

from curation import score
from openaim.steps.base import RunContext, Step
from openaim.steps.resources import SCORE_PARTS, filter_net
from shared.config.root import OpenAIMConfig
from shared.stage_cache import StepSpec
from shared.torchrun import broadcast_from_rank0, leave_process_group, rank_world


class Score(Step):
    name, stage = "score", "build-dataset"
    # Bump when the scores (curation.score, filter_network, copy_detection) change for the same config and
    # inputs: this step and every step after it rerun. 2: one parquet part per pool shard with int8
    # descriptors, no assembly.
    VERSION = 2
    reads = ("download",)
    writes = ("curation/scores",)

    def config(self, cfg: OpenAIMConfig) -> dict:
        # the worker count, the device and the queue's lease never change a score
        return {"curation.filter": cfg.curation.filter.model_dump(
            mode="json", exclude={"num_workers", "device", "lease_s"})}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        inputs = super().inputs(ctx)
        if ctx.cfg.curation.filter.model == "own":
            inputs["train-filter"] = ctx.cache.outputs_hash("train-filter")
        return inputs

    def prepare(self, ctx: RunContext, spec: StepSpec, rerun: bool) -> None:
        ctx.forget(SCORE_PARTS)  # listed again after this step
        rank_world(score.BACKEND, score.WAIT_FOR_RANK0)  # joins the other ranks' group under torchrun
        parts = self.writes[0] + "/parts"
        # Finished parts from another model, pool or scoring code are not resumable work: start afresh.
        # (No record at all means a killed run, whose parts are resumed.)
        if rerun and ctx.store.exists(parts) and (ctx.force or ctx.cache.load(self.name)):
            ctx.store.remove(parts)
            ctx.store.remove(f"{self.writes[0]}/{score.CLAIMS}")
            ctx.store.remove(f"{self.writes[0]}/digests")
        broadcast_from_rank0(rerun)  # the other ranks score with rank 0, or go home
        leave_process_group(succeeded=True)  # a barrier while every rank is alive, then no group

    def run(self, ctx: RunContext) -> None:
        conf = ctx.cfg.curation.filter
        score.score_pool(ctx.store.url("curation/pool"), filter_net(ctx), ctx.store.url(self.writes[0]),
                         conf.batch_size, num_workers=conf.num_workers, lease_s=conf.lease_s)

    def outputs_hash(self, ctx: RunContext) -> str:
        return score.outputs_digest(ctx.store.url(self.writes[0]))  # from the ranks' digest records

    def join(self, ctx: RunContext) -> None:
        """Wait for rank 0 at this step and, if it reruns, take shards from the scoring queue until every
        part exists."""
        rank_world(score.BACKEND, score.WAIT_FOR_RANK0)
        rerun = broadcast_from_rank0(None)  # waits here until rank 0 reaches this step
        leave_process_group(succeeded=True)
        if rerun:
            self.run(ctx)
