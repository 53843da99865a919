"""`openaim eval`. Only typer/stdlib/shared.cli_common at module level. (`openaim report`, which reads every
stage, is the roof's: openaim.pipeline_cli.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.cli_common import ConfigOpt, DebugOpt, SetOpt, run_with_config, say

if TYPE_CHECKING:  # the config module imports pydantic: only the command's body loads it
    from shared.config.root import OpenAIMConfig


def evaluate(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Probe frozen trunks (attentive + linear, a grid of lr x wd) on the benchmarks found on disk."""

    def body(cfg: OpenAIMConfig) -> None:
        from evaluation.run import evaluate_from_config
        from shared.torchrun import torchrun_stage

        with torchrun_stage():
            path = evaluate_from_config(cfg)
        say("results:", "bold green", path)

    run_with_config(body, config, set_, debug)
