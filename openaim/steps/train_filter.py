"""train-filter: our own data filtering network (a small CLIP) trained on the mini web's high-quality set
(curation.train_filter); only when curation.filter.model is "own"."""

from __future__ import annotations

from curation.train_filter import train_filter_network
from openaim.steps.base import RunContext, Step
from shared import fsio
from shared.config.root import OpenAIMConfig
from shared.errors import InputError
from shared.stage_cache import hash_json, hash_path


class TrainFilter(Step):
    name, stage = "train-filter", "build-dataset"
    # Bump when the trained filter network changes for the same config and inputs: this step and every step
    # after it rerun. 2: the lr schedule is the one warm-up + cosine (shared.schedule; a slightly different
    # warm-up ramp).
    VERSION = 2
    writes = ("curation/filter",)

    def wanted(self, cfg: OpenAIMConfig) -> bool:
        return cfg.curation.filter.model == "own"

    def config(self, cfg: OpenAIMConfig) -> dict:
        conf = cfg.curation.train_filter
        return {"curation.train_filter": conf.model_dump(mode="json", exclude={"threads"})}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        return {"hq": hash_path(ctx.cfg.web_dir / "hq")}

    def run(self, ctx: RunContext) -> str:
        hq = ctx.cfg.web_dir / "hq"
        if not hq.is_dir():
            raise InputError(f"no high-quality set at {hq} to train the filter network (filter.model: own)")
        # the folder is written whole by the library (a temporary folder uploaded under a URL workdir);
        # its digest is taken there, before any upload, as the record's default would take it
        with fsio.local_dir(ctx.store.url(self.writes[0])) as out:
            train_filter_network(ctx.cfg.curation.train_filter, hq, out)
            return hash_json([hash_path(out)])
