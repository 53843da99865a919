"""download: the pairs' image URLs -> the pool (webdataset shards fetched by img2dataset, curation.download).

A new pool is fetched into ``pool.partial/`` (where a killed run of the same settings resumes, skipping
finished shards) before this step's record is touched, and swapped in place of ``pool/`` only once it
succeeded: a failed, empty or interrupted download leaves ``pool/`` and the record as they were.
"""

from __future__ import annotations

from curation import download
from openaim.steps.base import RunContext, Step
from openaim.steps.resources import engine
from shared.config.root import OpenAIMConfig
from shared.stage_cache import StepSpec, combine_digests, hash_file, listing_digest


class Download(Step):
    name, stage = "download", "build-dataset"
    # Bump when the downloaded pool changes for the same config and inputs: this step and every step after
    # it rerun. 2: guarded connections, "blocked by policy", damaged shards refetched; 3: the download list
    # is a folder, one file per pairs partition (img2dataset shards each file alone).
    VERSION = 3
    reads = ("extract",)
    writes = ("curation/pool", "curation/download_stats.json")

    def config(self, cfg: OpenAIMConfig) -> dict:
        cur = cfg.curation
        return {"curation.download": cur.download.model_dump(mode="json"),
                "curation.extract.allow_hosts": cur.extract.allow_hosts}

    def prepare(self, ctx: RunContext, spec: StepSpec, rerun: bool) -> None:
        if rerun:
            cur = ctx.cfg.curation
            download.stage_pool(cur.download, ctx.store.url("curation/pairs"),
                                ctx.store.url(self.writes[0]), cur.extract.allow_hosts, spec.fingerprint,
                                restart=ctx.force, engine=engine(ctx))

    def run(self, ctx: RunContext) -> None:
        fingerprint = self.identity(ctx).fingerprint  # the staged pool's, as in prepare
        summary = download.swap_in_pool(ctx.store.url(self.writes[0]), fingerprint)
        ctx.store.write_json(self.writes[1], summary)

    def outputs_hash(self, ctx: RunContext) -> str:
        # img2dataset records no digest: the pool is identified by its files' names and sizes (one listing,
        # nothing read) and the download summary
        pool, stats = (ctx.store.url(name) for name in self.writes)
        return combine_digests([listing_digest(pool), hash_file(stats)])
