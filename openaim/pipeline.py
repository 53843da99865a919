"""The pipeline graph: web -> build-dataset -> train -> eval -> report, as one ordered list of steps
(openaim.steps.STEPS) over the stage cache.

`openaim run` runs the list, `openaim build-dataset` its build-dataset steps, `openaim status` asks each
cached step of the list whether the next run reuses it (``pipeline_plan``), all through ``run_step``:

- a step whose config, inputs and VERSION are unchanged is reused;
- training that is stale because its inputs or config changed *after it had finished* first moves its
  previous outputs to ``<workdir>/history/run-NNN/`` (openaim.history), so the new run starts clean and the
  report can show the old and the new run side by side;
- a step that never finished (killed mid-way) is simply run again and resumes from its own checkpoints.

``<workdir>/pipeline.json`` records, per stage (the command that runs a step: build-dataset, train, eval,
report), whether it ran or was reused and its wall time; the report shows them.
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.table import Table

from openaim.steps import STEPS
from openaim.steps.base import RunContext, Step, plan, run_step
from shared.config.root import OpenAIMConfig
from shared.errors import InputError, PartialFailure
from shared.miniweb.generate import generate_web
from shared.miniweb.server import serve_in_background
from shared.stage_cache import Freshness

log = logging.getLogger("openaim.pipeline")
console = Console()
CURATION = "build-dataset"  # the stage whose steps a config with its own training shards does not need


def pipeline_steps(cfg: OpenAIMConfig) -> list[Step]:
    """The steps of `openaim run` (and `openaim status`) for this config, in run order: every wanted step;
    a config that names its own training shards has nothing to curate."""
    return [s for s in STEPS if s.wanted(cfg) and not (cfg.training.data.shards and s.stage == CURATION)]


def stage_steps(cfg: OpenAIMConfig, stage: str) -> list[Step]:
    """The steps of one stage's command (e.g. `openaim build-dataset`), in run order."""
    return [s for s in STEPS if s.stage == stage and s.wanted(cfg)]


def step_named(name: str) -> Step:
    return next(s for s in STEPS if s.name == name)


def pipeline_plan(cfg: OpenAIMConfig) -> list[tuple[str, Freshness]]:
    """Every cached step of `openaim run` and whether the next run reuses it (and why not). A step's
    identity takes its upstream's outputs as recorded now; when that upstream runs, ``plan`` marks the
    step as running too."""
    return plan(RunContext(cfg), pipeline_steps(cfg))


def run_steps(ctx: RunContext, steps: list[Step]) -> None:
    """Run (or reuse) ``steps`` in order; the resources a stage's steps share (the curation engine, the
    filter network) are released when its last step is done."""
    try:
        for step in steps:
            run_step(step, ctx)
    finally:
        ctx.release()


def chosen_steps(ctx: RunContext, only: list[str]) -> list[Step]:
    """``build-dataset --steps``: the named curation steps in run order, once every input step that is not
    among them is fresh (a step among them runs, or is reused, before the steps that take it); the
    manifest after them when the last step it reads (select) is among them. Raises one line naming the
    first stale input step."""
    steps = [s for s in stage_steps(ctx.cfg, CURATION) if s.cached]
    names = [s.name for s in steps]
    unknown = [s for s in only if s not in names]
    if unknown:
        raise InputError(f"--steps: unknown step {unknown[0]!r}; "
                         f"the steps of this config: {', '.join(names)}")
    chosen = [s for s in steps if s.name in only]
    if not chosen:
        raise InputError(f"--steps: no step named; the steps of this config: {', '.join(names)}")
    by_name = {s.name: s for s in steps}
    for step in chosen:
        for upstream in step.identity(ctx).inputs:
            if upstream not in by_name or upstream in only:
                continue
            state = ctx.cache.check(by_name[upstream].identity(ctx))
            if not state.fresh:
                raise InputError(f"--steps {step.name}: its input step {upstream} is not fresh "
                                 f"({state.reasons[0]}); run `build-dataset --steps {upstream}` first")
    for summary in (s for s in stage_steps(ctx.cfg, CURATION) if not s.cached):
        last_input = [n for n in names if n in summary.reads][-1:]  # the manifest's: select
        if last_input and last_input[0] in only:
            chosen.append(summary)
    return chosen


def build_dataset(cfg: OpenAIMConfig, force: bool = False, only: list[str] | None = None) -> dict | None:
    """Run (or reuse) every curation step, or the steps in ``only`` (``--steps``: refused when an input step
    outside them is not fresh), and write ``manifest.json`` once the last step (select) is done; returns the
    manifest, or None when ``only`` stops before select."""
    ctx = RunContext(cfg, force=force)
    steps = stage_steps(cfg, CURATION) if only is None else chosen_steps(ctx, only)
    ctx.store.makedirs("curation")
    run_steps(ctx, steps)
    if not any(not s.cached for s in steps):
        log.info("ran %s, reused %s", ", ".join(ctx.ran) or "nothing", ", ".join(ctx.reused) or "nothing")
        return None
    return ctx.store.read_json("curation/manifest.json")


def join_build_dataset(cfg: OpenAIMConfig, force: bool = False) -> None:
    """A torchrun rank other than 0 in build-dataset: rank 0 runs every step, this rank joins those that
    spread across ranks (score: this rank's share of the pool's shards, if the step reruns)."""
    ctx = RunContext(cfg, force=force)
    try:
        for step in stage_steps(cfg, CURATION):
            step.join(ctx)
    finally:
        ctx.release()


def _stages(ctx: RunContext, steps: list[Step]) -> dict:
    """pipeline.json: per stage, whether a step of it ran (else, if all its steps were reused, reused) and
    the wall time of the steps that ran."""
    ran, reused, seconds = [], [], {}
    for stage in dict.fromkeys(s.stage for s in steps):
        names = [s.name for s in steps if s.stage == stage]
        if any(n in ctx.ran for n in names):
            ran.append(stage)
            seconds[stage] = round(sum(ctx.seconds.get(n, 0.0) for n in names), 1)
        elif names and all(n in ctx.reused for n in names):
            reused.append(stage)
    return {"ran": ran, "reused": reused, "seconds": seconds}


def run_pipeline(cfg: OpenAIMConfig) -> dict[str, list[str]]:
    """Every step of the graph in order. Returns which stages ran and which were reused."""
    steps = pipeline_steps(cfg)
    ctx = RunContext(cfg)
    # Why curation steps run now (e.g. "select: config curation.select.fraction: 0.15 -> 0.3"): recorded
    # with the archived run so the report can say what changed between the runs.
    stage_of = {s.name: s.stage for s in steps}
    ctx.upstream_reasons = [f"{name}: {why}" for name, state in plan(ctx, steps)
                            if stage_of[name] == CURATION for why in state.reasons]
    # The finished run was trained on this manifest; curation is about to rewrite it, and the archive
    # made when training reruns must keep the run's own curation numbers.
    ctx.manifest_before = ctx.store.read_bytes("curation/manifest.json")
    ctx.pipeline_before = ctx.store.read_bytes("pipeline.json")  # rewritten as each stage ends
    partial: PartialFailure | None = None  # e.g. one unreadable benchmark: the report still shows the rest
    stage = None
    try:
        for step in steps:
            if step.stage != stage:  # a stage ends: its resources go, its wall time is on record
                ctx.release()
                if stage is not None:
                    ctx.store.write_json("pipeline.json", _stages(ctx, steps))
                stage = step.stage
                console.rule(f"[bold]{stage}")
            try:
                run_step(step, ctx)
            except PartialFailure as exc:
                partial = exc
    finally:
        ctx.release()
    summary = _stages(ctx, steps)
    ctx.store.write_json("pipeline.json", summary)
    if partial is not None:
        raise partial
    return {"ran": summary["ran"], "reused": summary["reused"]}


def run_demo(cfg: OpenAIMConfig) -> dict[str, list[str]]:
    console.rule("[bold]mini web")
    generate_web(cfg.web, cfg.web_dir, skip_if_done=True)
    with serve_in_background(cfg.web_dir, host=cfg.web.host, port=cfg.web.port):
        return run_pipeline(cfg)


# --- openaim status ---------------------------------------------------------------------------------

def print_status(cfg: OpenAIMConfig) -> None:
    table = Table(title=f"openaim status: {cfg.workdir}")
    table.add_column("step")
    table.add_column("next run")
    table.add_column("why")
    for name, state in pipeline_plan(cfg):
        state_text = "[green]fresh" if state.fresh else "[yellow]would run"
        table.add_row(name, state_text, "; ".join(state.reasons) or "-")
    console.print(table)
