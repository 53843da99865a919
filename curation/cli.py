"""`openaim build-dataset` and `openaim train-filter`.

    openaim build-dataset --config configs/demo.yaml --set curation.select.fraction=0.3
    openaim train-filter --config configs/demo.yaml
    openaim build-dataset --config my.yaml --steps extract,download           # some steps only
    torchrun --nproc_per_node 4 -m openaim build-dataset --config ...   # the score step on 4 processes
"""

from __future__ import annotations

from typing import Annotated

import typer

from shared.cli_common import ConfigOpt, DebugOpt, SetOpt, run_with_config

ForceOpt = Annotated[bool,
                     typer.Option("--force", help="rerun every step, even those whose inputs are unchanged")]
StepsOpt = Annotated[str | None, typer.Option(
    "--steps", help="comma-separated curation steps to run (default: all), e.g. score; refused when an "
                    "input step outside them is not fresh")]


def build_dataset(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
                  force: ForceOpt = False, steps: StepsOpt = None) -> None:
    """Curate image-text pairs into webdataset shards: extract, download, score, dedup, safety, select."""
    only = [s.strip() for s in steps.split(",") if s.strip()] if steps is not None else None

    def body(cfg):
        from curation.pipeline import build_dataset as run
        from curation.pipeline import join_scoring
        from curation.score import BACKEND, WAIT_FOR_RANK0
        from shared.torchrun import torchrun_stage

        with torchrun_stage(BACKEND, WAIT_FOR_RANK0) as (rank, _):
            if rank > 0:  # under torchrun the other ranks only join the score step
                if only is None or "score" in only:
                    join_scoring(cfg, force=force)
                return
            manifest = run(cfg, force=force, only=only)
        if manifest is None:
            typer.echo(f"ran the steps {', '.join(only)} in {cfg.curation_dir}")
            return
        q = manifest.get("quality") or {}
        typer.echo(f"kept {manifest['kept']} pairs (threshold {manifest['threshold']:.4f}) -> "
                   f"{cfg.curation_dir / 'shards'}; ran: {', '.join(manifest['ran']) or 'nothing'}"
                   + (f"; precision {q['precision']}" if q.get("precision") is not None else ""))

    run_with_config(body, config, set_, debug)


def train_filter(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
                 force: ForceOpt = False) -> None:
    """Train our own data filtering network (a small CLIP) on the mini web's high-quality pairs."""

    def body(cfg):
        from curation.pipeline import train_filter_step

        out = train_filter_step(cfg, force=force)
        typer.echo(f"filter network: {out}")

    run_with_config(body, config, set_, debug)
