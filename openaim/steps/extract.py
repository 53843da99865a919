"""extract: the crawl's WARC/WAT/parquet files -> (url, caption) pairs (curation.extract_parts)."""

from __future__ import annotations

from curation import extract
from curation.extract_parts import run_extract
from openaim.steps.base import RunContext, Step
from openaim.steps.resources import engine
from shared import fsio
from shared.config.root import OpenAIMConfig
from shared.errors import InputError
from shared.stage_cache import file_signature, hash_json


def sources_hash(sources: list[str]) -> str:
    """Local files by name, size and modification time (a regenerated crawl reruns extraction; a crawl of
    terabytes is not read to find out), URLs (http, object stores) by name: a crawl's files are not
    rewritten under the same name."""
    return hash_json([s if fsio.is_url(s) else file_signature(s) for s in sources])


class Extract(Step):
    name, stage = "extract", "build-dataset"
    # Bump when the pairs change for the same config and inputs (curation.extract and curation.warc_links
    # decide what a pair is, curation.extract_parts shuffles them into parts): this step and every step
    # after it rerun.
    # 3: input uids kept, charset header > meta > detection, non-link records skipped; 4: FastWARC
    # records, HTML parsed by the HTML standard's rules (lexbor), cut gzip members counted; 5: charset
    # labels by the WHATWG table (a Python-only codec label such as rot13 or zlib falls through, not a
    # corrupt record; utf-7 is no web encoding; latin1 is windows-1252), pages cut at max_page_bytes and
    # counted; 6: the pairs' parts (buckets) set by the sources' bytes, not their number (the same pairs, in
    # other parts when a crawl has more than one bucket's bytes or many small files). (Until the steps
    # moved here it was curation.extract's VERSION + 1, the parts' shuffle.)
    VERSION = 6
    writes = ("curation/pairs", "curation/extract_stats.json")

    def config(self, cfg: OpenAIMConfig) -> dict:
        return {"curation.extract": cfg.curation.extract.model_dump(mode="json")}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        try:
            return {"sources": sources_hash(self._sources(ctx.cfg))}
        except InputError:  # nothing to extract yet (e.g. no mini web): the step runs, and says why then
            return {"sources": "missing"}

    @staticmethod
    def _sources(cfg: OpenAIMConfig) -> list[str]:
        return extract.resolve_sources(cfg.curation.extract.sources, cfg.web_dir / "warc")

    def run(self, ctx: RunContext) -> str:
        pairs, stats = (ctx.store.url(name) for name in self.writes)
        return run_extract(engine(ctx), ctx.cfg.curation.extract, self._sources(ctx.cfg), pairs,
                           stats)["outputs_digest"]
