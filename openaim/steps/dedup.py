"""dedup: exact copies, near copies and evaluation-set leaks over the score parts (curation.dedup_parts),
one keep file per part."""

from __future__ import annotations

from curation.dedup_parts import run_dedup
from curation.eval_index import build_eval_index, eval_benchmarks, eval_signature
from openaim.steps.base import RunContext, Step
from openaim.steps.resources import engine, filter_net, score_parts
from shared.config.root import OpenAIMConfig
from shared.stage_cache import combine_digests, hash_json


def _eval_sets(cfg: OpenAIMConfig) -> list:
    """(spec, root) of every evaluation test split decontamination checks against (curation.eval_index)."""
    dedup, ev = cfg.curation.dedup, cfg.evaluation
    if not dedup.decontaminate:
        return []
    return eval_benchmarks(dedup.eval_sets, ev.benchmarks, ev.data_root, cfg.web_dir)


class Dedup(Step):
    name, stage = "dedup", "build-dataset"
    # Bump when the keep files (curation.dedup_parts, dedup_near, dedup_resolve, dedup, dedup_clusters,
    # copy_detection, eval_index, parts) change for the same config and inputs: this step and every step
    # after it rerun. 2: cluster-partitioned, registry eval sets, int8. 3: nearest cluster by faiss's
    # top-k, within-cluster candidates in the PCA space (when used), verified. 4: clusters over a task's
    # target bounded (near-copy cores, second-level k-means); one cluster ("flat") unchanged. 5: a sample
    # larger than dedup.driver_sample trains in two levels (coarse on the driver, fine on the engine); a
    # smaller one unchanged.
    VERSION = 5
    reads = ("score",)
    writes = ("curation/dedup/keep", "curation/dedup/stats.json")

    def config(self, cfg: OpenAIMConfig) -> dict:
        return {"curation.dedup": cfg.curation.dedup.model_dump(mode="json")}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        """The eval sets are an input by their files' names, sizes and times (curation.eval_index)."""
        return super().inputs(ctx) | {"eval_sets": eval_signature(_eval_sets(ctx.cfg))}

    def run(self, ctx: RunContext) -> str:
        conf, store = ctx.cfg.curation.dedup, ctx.store
        found = _eval_sets(ctx.cfg)
        eval_index, n_eval = None, 0
        if found:
            eval_index = store.url("curation/dedup/eval_index.npy")
            encode = filter_net(ctx).encode_images if conf.filter_weight > 0 else None
            n_eval = build_eval_index(found, eval_index, conf.filter_weight, encode)
        keep, stats = self.writes
        with store.build_dir(keep) as tmp:
            counts = run_dedup(engine(ctx), score_parts(ctx), conf, store.url("curation/dedup/work"), tmp,
                               eval_index, ctx.cfg.curation.task_bytes)
        store.remove("curation/dedup/work")
        keep_digest = counts.pop("keep_digest")  # the tasks' records of the keep files they wrote
        counts |= {"eval_images": n_eval, "eval_sets": [spec.name for spec, _ in found]}
        store.write_json(stats, counts)
        return combine_digests([keep_digest, hash_json(counts)])
