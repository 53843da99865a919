"""manifest: ``curation/manifest.json``, what went in and out of every curation step and how good the result
is (curation.manifest). Written on every build-dataset, from the steps' stats files: no record."""

from __future__ import annotations

import logging

from curation.manifest import curation_manifest
from openaim.steps.base import RunContext, Step

log = logging.getLogger("openaim.curation")


class Manifest(Step):
    name, stage = "manifest", "build-dataset"
    VERSION = 1
    cached = False
    reads = ("extract", "download", "score", "dedup", "safety", "select")
    writes = ("curation/manifest.json",)

    def run(self, ctx: RunContext) -> None:
        # this stage's steps, in run order, as they ran or were reused
        ran, reused = ([n for n in names if ctx.stage_of.get(n) == self.stage and n != self.name]
                       for names in (ctx.ran, ctx.reused))
        manifest = curation_manifest(ctx.cfg, ran, reused)
        ctx.store.write_json(self.writes[0], manifest)
        q = manifest.get("quality") or {}
        log.info("curated %s pairs (threshold %.4f) into %s%s", manifest["kept"], manifest["threshold"],
                 ctx.store.url("curation/shards"),
                 f"; precision {q['precision']}" if q.get("precision") is not None else "")
