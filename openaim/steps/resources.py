"""What the curation steps share within one run: the engine and the filter network, each opened by the
first step that needs it and closed when build-dataset's steps are done (RunContext.release)."""

from __future__ import annotations

import shutil
from pathlib import Path

from curation.engine import make_engine
from curation.filter_network import load_filter_network
from curation.parts import Part, list_parts
from openaim.steps.base import RunContext
from shared import fsio
from shared.errors import OpenAIMError
from shared.torchrun import local_device

CURATION = "curation"  # the curation steps' folder under the run's storage root
SCORE_PARTS = "curation.score_parts"


def engine(ctx: RunContext):
    """The curation engine (curation.engine: local processes or Spark)."""
    cur = ctx.cfg.curation

    def open_():
        ctx.store.makedirs(CURATION)
        # The local engine's shuffle files are this machine's by design (its processes share them): beside
        # the curation folder on a local workdir, in the system's temporary folder under a URL one.
        scratch = ctx.store.local_root(CURATION)
        for stale in scratch.glob(".shuffle-*") if scratch else ():  # a killed run's: never read again
            shutil.rmtree(stale, ignore_errors=True)
        made = make_engine(cur.engine, cur.workers, scratch_root=scratch)
        made.set_step(ctx.step)  # its jobs carry the step's name (the Spark UI's job group)
        ctx.on_step(made.set_step)
        return made

    return ctx.resource("curation.engine", open_, lambda e: e.close())


def filter_net(ctx: RunContext):
    """The filter network (curation.filter): a named open_clip model or ours (train-filter's output)."""
    return ctx.resource("curation.filter", lambda: _load_net(ctx))


def _load_net(ctx: RunContext):
    conf = ctx.cfg.curation.filter
    # a library that reads a folder: a local copy of it for this process, under a URL workdir
    own = Path(fsio.process_copy(ctx.store.url(CURATION, "filter"))) if conf.model == "own" else None
    try:
        return load_filter_network(conf, own, device=local_device() if conf.device == "auto" else conf.device)
    except OpenAIMError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot load is a user-facing config problem
        first = (str(exc).strip().splitlines() or [""])[0]
        raise OpenAIMError(f"cannot load filter network {conf.model!r}: "
                           f"{type(exc).__name__}: {first}") from None


def score_parts(ctx: RunContext) -> list[Part]:
    """The score step's parts (one per pool shard), which dedup, safety and select map over: listed once per
    run (after the score step, the only one writing them)."""
    return ctx.resource(SCORE_PARTS, lambda: list_parts(ctx.store.url(CURATION, "scores", "parts")))
