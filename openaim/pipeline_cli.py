"""`openaim run`, `openaim status`, `openaim demo`, `openaim report`: the stages as one graph over the stage
cache, and the report that reads them all.

Part of the lazy top-level CLI (like the stages' cli.py modules): openaim.pipeline, which imports every
stage and torch, is imported inside each command, so `openaim --help` stays fast.
"""

from __future__ import annotations

from shared.cli_common import ConfigOpt, DebugOpt, SetOpt, run_with_config, say


def run(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Run build-dataset -> train -> eval -> report, reusing every step whose inputs are unchanged."""
    def body(cfg):
        from openaim.pipeline import run_pipeline
        run_pipeline(cfg)
    run_with_config(body, config, set_, debug)


def status(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print each step as fresh or would-run and why (which config key, input or VERSION changed)."""
    def body(cfg):
        from openaim.pipeline import print_status
        print_status(cfg)
    run_with_config(body, config, set_, debug)


def demo(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Generate and serve the mini web, then run the whole pipeline on it."""
    def body(cfg):
        from openaim.pipeline import run_demo
        run_demo(cfg)
    run_with_config(body, config, set_, debug)


def report(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Write the HTML + Markdown report from the evaluation results."""

    def body(cfg):
        from openaim.report import report_from_config

        path = report_from_config(cfg)
        say("report:", "bold green", path)

    run_with_config(body, config, set_, debug)
