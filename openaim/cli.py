"""The `openaim` command. Subcommands live with their stage (or, for those spanning stages, in
openaim.pipeline_cli) and are imported only when invoked, so `openaim --help` answers fast and never
imports torch. ``python -m openaim`` runs it; launchers that want a script path (spark-submit) take
``openaim/__main__.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
import typer.core
import typer.main

# Each command's import, run only when that command is invoked: a typer app or a plain command function.


def _web() -> Any:
    from shared.miniweb.cli import app

    return app


def _build_dataset() -> Any:
    from openaim.pipeline_cli import build_dataset

    return build_dataset


def _train_filter() -> Any:
    from openaim.pipeline_cli import train_filter

    return train_filter


def _train() -> Any:
    from training.cli import train

    return train


def _eval() -> Any:
    from evaluation.cli import evaluate

    return evaluate


def _report() -> Any:
    from openaim.pipeline_cli import report

    return report


def _run() -> Any:
    from openaim.pipeline_cli import run

    return run


def _status() -> Any:
    from openaim.pipeline_cli import status

    return status


def _demo() -> Any:
    from openaim.pipeline_cli import demo

    return demo


# name -> (its import, one-line help)
COMMANDS: dict[str, tuple[Callable[[], Any], str]] = {
    "web": (_web, "The mini web: a synthetic Common Crawl slice (generate, serve)."),
    "build-dataset": (_build_dataset, "Curate image-text pairs into webdataset shards (DFN-2B)."),
    "train-filter": (_train_filter, "Train our own data filtering network (a small CLIP)."),
    "train": (_train, "Pretrain an AIM model (prefix-causal ViT, next-patch regression)."),
    "eval": (_eval, "Attentive and linear probes of frozen trunks on the benchmarks."),
    "report": (_report, "Write the HTML + Markdown benchmark report."),
    "run": (_run, "Run the whole pipeline: build-dataset -> train -> eval -> report."),
    "status": (_status, "Show each pipeline step as fresh or would-run, and why."),
    "demo": (_demo, "The whole pipeline on the built-in mini web, on this machine."),
}


def _load(target: Callable[[], Any], name: str):
    obj = target()
    if isinstance(obj, typer.Typer):
        cmd = typer.main.get_command(obj)
    else:
        app = typer.Typer(add_completion=False)
        app.command(name)(obj)
        cmd = typer.main.get_command(app)
    cmd.name = name
    return cmd


class LazyGroup(typer.core.TyperGroup):
    """A typer group whose subcommands are imported on first use (typer has no lazy loading itself)."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        if name not in COMMANDS:
            return None
        return _load(COMMANDS[name][0], name)

    def format_commands(self, ctx, formatter) -> None:
        # Help texts come from the table, so listing commands imports no stage.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])


# Plain (non-rich) help formatting, so listing commands goes through format_commands above.
cli = LazyGroup(
    name="openaim", rich_markup_mode=None, no_args_is_help=True,
    help="openaim: curate image-text data with a DFN, pretrain AIM, probe it on 15 benchmarks.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def main() -> None:
    cli.main(prog_name="openaim")


if __name__ == "__main__":
    main()
