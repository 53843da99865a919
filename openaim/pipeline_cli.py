"""The commands that go through the pipeline's list of steps (openaim.steps): `openaim run`, `openaim status`,
`openaim demo`, `openaim build-dataset`, `openaim train-filter`, and `openaim report`, which reads them all.

    openaim build-dataset --config configs/demo.yaml --set curation.select.fraction=0.3
    openaim train-filter --config configs/demo.yaml
    openaim build-dataset --config my.yaml --steps extract,download           # some steps only
    torchrun --nproc_per_node 4 -m openaim build-dataset --config ...   # the score step on 4 processes


Part of the lazy top-level CLI (like the stages' cli.py modules): openaim.pipeline, which imports every
stage and torch, is imported inside each command, so `openaim --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from shared import fsio
from shared.cli_common import ConfigOpt, DebugOpt, SetOpt, run_with_config, say

if TYPE_CHECKING:  # the config module imports pydantic: only the commands' bodies load it
    from shared.config.root import OpenAIMConfig

ForceOpt = Annotated[bool,
                     typer.Option("--force", help="rerun every step, even those whose inputs are unchanged")]
StepsOpt = Annotated[str | None, typer.Option(
    "--steps", help="comma-separated curation steps to run (default: all), e.g. score; refused when an "
                    "input step outside them is not fresh")]


def run(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Run build-dataset -> train -> eval -> report, reusing every step whose inputs are unchanged."""
    def body(cfg: OpenAIMConfig) -> None:
        from openaim.pipeline import run_pipeline
        run_pipeline(cfg)
    run_with_config(body, config, set_, debug)


def status(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print each step as fresh or would-run and why (which config key, input or VERSION changed)."""
    def body(cfg: OpenAIMConfig) -> None:
        from openaim.pipeline import print_status
        print_status(cfg)
    run_with_config(body, config, set_, debug)


def demo(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Generate and serve the mini web, then run the whole pipeline on it."""
    def body(cfg: OpenAIMConfig) -> None:
        from openaim.pipeline import run_demo
        run_demo(cfg)
    run_with_config(body, config, set_, debug)


def report(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Write the HTML + Markdown report from the evaluation results."""

    def body(cfg: OpenAIMConfig) -> None:
        from openaim.report import report_from_config

        path = report_from_config(cfg)
        say("report:", "bold green", path)

    run_with_config(body, config, set_, debug)


def build_dataset(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
                  force: ForceOpt = False, steps: StepsOpt = None) -> None:
    """Curate image-text pairs into webdataset shards: extract, download, score, dedup, safety, select."""
    only = [s.strip() for s in steps.split(",") if s.strip()] if steps is not None else None

    def body(cfg: OpenAIMConfig) -> None:
        from curation.score import BACKEND, WAIT_FOR_RANK0
        from openaim import pipeline
        from shared.torchrun import torchrun_stage

        with torchrun_stage(BACKEND, WAIT_FOR_RANK0) as (rank, _):
            if rank > 0:  # under torchrun the other ranks only join the score step
                if only is None or "score" in only:
                    pipeline.join_build_dataset(cfg, force=force)
                return
            manifest = pipeline.build_dataset(cfg, force=force, only=only)
        if manifest is None:
            typer.echo(f"ran the steps {', '.join(only)} in {cfg.curation_dir}")
            return
        q = manifest.get("quality") or {}
        typer.echo(f"kept {manifest['kept']} pairs (threshold {manifest['threshold']:.4f}) -> "
                   f"{fsio.join(cfg.curation_dir, 'shards')}; ran: {', '.join(manifest['ran']) or 'nothing'}"
                   + (f"; precision {q['precision']}" if q.get("precision") is not None else ""))

    run_with_config(body, config, set_, debug)


def train_filter(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
                 force: ForceOpt = False) -> None:
    """Train our own data filtering network (a small CLIP) on the mini web's high-quality pairs."""

    def body(cfg: OpenAIMConfig) -> None:
        from openaim.pipeline import run_steps, step_named
        from openaim.steps.base import RunContext

        step = step_named("train-filter")
        ctx = RunContext(cfg, force=force)
        run_steps(ctx, [step])
        typer.echo(f"filter network: {ctx.store.url(*step.writes)}")

    run_with_config(body, config, set_, debug)
