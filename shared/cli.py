"""The `openaim` command. Subcommands live with their stage and are imported only when invoked,
so `openaim --help` answers fast and never imports torch."""

from __future__ import annotations

import importlib

import typer
import typer.core
import typer.main

# name -> (module:attribute, one-line help). The attribute is a typer app or a plain command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "web": ("shared.miniweb.cli:app", "The mini web: a synthetic Common Crawl slice (generate, serve)."),
    "build-dataset": ("curation.cli:build_dataset", "Curate image-text pairs into webdataset shards (DFN-2B)."),
    "train-filter": ("curation.cli:train_filter", "Train our own data filtering network (a small CLIP)."),
    "train": ("training.cli:train", "Pretrain an AIM model (prefix-causal ViT, next-patch regression)."),
    "eval": ("evaluation.cli:evaluate", "Attentive and linear probes of frozen trunks on the benchmarks."),
    "report": ("evaluation.cli:report", "Write the HTML + Markdown benchmark report."),
    "run": ("shared.pipeline_cli:run", "Run the whole pipeline: build-dataset -> train -> eval -> report."),
    "status": ("shared.pipeline_cli:status", "Show each pipeline step as fresh or would-run, and why."),
    "demo": ("shared.pipeline_cli:demo", "The whole pipeline on the built-in mini web, on this machine."),
}


def _load(target: str, name: str):
    module_name, attr = target.split(":")
    obj = getattr(importlib.import_module(module_name), attr)
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
