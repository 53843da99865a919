"""`openaim train`: pretrain AIM. Runs alone or under torchrun:

    openaim train --config configs/demo.yaml
    python -m torch.distributed.run --nproc_per_node 8 -m openaim train --config configs/aim-600m.yaml
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli_common import ConfigOpt, DebugOpt, SetOpt, run_with_config

if TYPE_CHECKING:  # the config module imports pydantic: only the command's body loads it
    from shared.config.root import OpenAIMConfig

ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="continue from the latest complete checkpoint of this run "
                                              "(--no-resume moves earlier results aside and starts over)")]


def train(config: ConfigOpt = None, set_: SetOpt = None, debug: DebugOpt = False,
          resume: ResumeOpt = True) -> None:
    """Pretrain an AIM model (prefix-causal ViT, next-patch regression) on the curated shards."""

    def body(cfg: OpenAIMConfig) -> None:
        from training.loop import train_from_config

        final = train_from_config(cfg, resume=resume)
        typer.echo(f"final checkpoint: {final}")

    run_with_config(body, config, set_, debug)
