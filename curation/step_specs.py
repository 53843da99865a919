"""Each curation step's identity: the config keys, inputs, VERSION and outputs the stage cache records.

`openaim build-dataset` (curation.pipeline) runs a step unless its spec matches the record, and `openaim
status` (openaim.pipeline) reads the same specs to say what is stale. A step's version is its step
module's ``VERSION`` (the partitioned modules' versions include the readers they build on). The engine
(``curation.engine``, ``curation.workers``) is in no spec: it never changes a result.
"""

from __future__ import annotations

from curation import dedup_parts, download, extract, extract_parts, safety, score, select_parts, train_filter
from curation.eval_index import eval_benchmarks, eval_signature
from shared.errors import InputError
from shared.stage_cache import StageCache, StepSpec, file_signature, hash_json, hash_path


def sources_hash(sources: list[str]) -> str:
    """Local files by name, size and modification time (a regenerated crawl reruns extraction; a crawl of
    terabytes is not read to find out), URLs by name."""
    return hash_json([s if s.startswith(("http://", "https://")) else file_signature(s) for s in sources])


def extract_spec(cfg, cache: StageCache) -> StepSpec:
    try:
        sources = sources_hash(extract.resolve_sources(cfg.curation.extract.sources, cfg.web_dir / "warc"))
    except InputError:  # nothing to extract yet (e.g. no mini web): the step runs, and says why then
        sources = "missing"
    d = cfg.curation_dir
    return StepSpec("extract", config={"curation.extract": cfg.curation.extract.model_dump(mode="json")},
                    inputs={"sources": sources}, version=extract_parts.VERSION,
                    outputs=[d / "pairs", d / "extract_stats.json"])


def download_spec(cfg, cache: StageCache) -> StepSpec:
    cur, d = cfg.curation, cfg.curation_dir
    return StepSpec("download", config={"curation.download": cur.download.model_dump(mode="json"),
                                        "curation.extract.allow_hosts": cur.extract.allow_hosts},
                    inputs={"extract": cache.outputs_hash("extract")}, version=download.VERSION,
                    outputs=[d / "pool", d / "download_stats.json"])


def train_filter_spec(cfg, cache: StageCache) -> StepSpec:
    conf = cfg.curation.train_filter.model_dump(mode="json", exclude={"threads"})
    return StepSpec("train-filter", config={"curation.train_filter": conf},
                    inputs={"hq": hash_path(cfg.web_dir / "hq")}, version=train_filter.VERSION,
                    outputs=[cfg.curation_dir / "filter"])


def score_spec(cfg, cache: StageCache) -> StepSpec:
    inputs = {"download": cache.outputs_hash("download")}
    if cfg.curation.filter.model == "own":
        inputs["train-filter"] = cache.outputs_hash("train-filter")
    conf = cfg.curation.filter.model_dump(mode="json", exclude={"num_workers", "device", "lease_s"})
    return StepSpec("score", config={"curation.filter": conf}, inputs=inputs, version=score.VERSION,
                    outputs=[cfg.curation_dir / "scores"])


def dedup_spec(cfg, cache: StageCache) -> StepSpec:
    """The eval sets are an input by their files' names, sizes and times (curation.eval_index)."""
    out = cfg.curation_dir / "dedup"
    dedup, ev = cfg.curation.dedup, cfg.evaluation
    found = (eval_benchmarks(dedup.eval_sets, ev.benchmarks, ev.data_root, cfg.web_dir)
             if dedup.decontaminate else [])
    return StepSpec("dedup", config={"curation.dedup": cfg.curation.dedup.model_dump(mode="json")},
                    inputs={"score": cache.outputs_hash("score"), "eval_sets": eval_signature(found)},
                    version=dedup_parts.VERSION, outputs=[out / "keep", out / "stats.json"])


def safety_spec(cfg, cache: StageCache) -> StepSpec:
    out, conf = cfg.curation_dir / "safety", cfg.curation.safety
    return StepSpec("safety", config={"curation.safety": {"concepts": conf.concepts,
                                                          "concept_threshold": conf.concept_threshold}},
                    inputs={"score": cache.outputs_hash("score")}, version=safety.VERSION,
                    outputs=[out / "keep", out / "stats.json"])


def select_spec(cfg, cache: StageCache) -> StepSpec:
    d = cfg.curation_dir
    conf = {"curation.select": cfg.curation.select.model_dump(mode="json"),
            "curation.safety.blur_faces": cfg.curation.safety.blur_faces}
    return StepSpec("select", config=conf,
                    inputs={k: cache.outputs_hash(k) for k in ("download", "score", "dedup", "safety")},
                    version=select_parts.VERSION,
                    outputs=[d / "shards", d / "subset", d / "subset.npy", d / "select_stats.json"])


# Every curation step, in run order, with the function that gives its identity now.
SPECS = {"extract": extract_spec, "download": download_spec, "train-filter": train_filter_spec,
         "score": score_spec, "dedup": dedup_spec, "safety": safety_spec, "select": select_spec}


def step_names(cfg) -> list[str]:
    """The curation steps of this config in run order (train-filter only for the own filter network)."""
    return [name for name in SPECS if name != "train-filter" or cfg.curation.filter.model == "own"]


def step_specs(cfg, cache: StageCache) -> list[StepSpec]:
    """Every curation step's identity as of now, in run order (what `openaim status` checks)."""
    return [SPECS[name](cfg, cache) for name in step_names(cfg)]


def chosen_steps(cfg, cache: StageCache, steps: list[str]) -> list[str]:
    """``--steps``: the named steps in run order, once every input step that is not among them is fresh.

    A step's inputs named after another step are that step's recorded outputs; a step among ``steps`` runs
    (or is reused) before the steps that take it. Raises one line naming the first stale input step."""
    names = step_names(cfg)
    unknown = [s for s in steps if s not in names]
    if unknown:
        raise InputError(f"--steps: unknown step {unknown[0]!r}; "
                         f"the steps of this config: {', '.join(names)}")
    chosen = [name for name in names if name in steps]
    if not chosen:
        raise InputError(f"--steps: no step named; the steps of this config: {', '.join(names)}")
    for name in chosen:
        for upstream in SPECS[name](cfg, cache).inputs:
            if upstream not in SPECS or upstream in chosen:
                continue
            state = cache.check(SPECS[upstream](cfg, cache))
            if not state.fresh:
                raise InputError(f"--steps {name}: its input step {upstream} is not fresh "
                                 f"({state.reasons[0]}); run `build-dataset --steps {upstream}` first")
    return chosen
