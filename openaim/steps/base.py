"""What a step of the pipeline graph is, and the one way a step is run or reused.

A step is one object in one file (``openaim/steps/<step>.py``) and one entry in the ordered list
``openaim.steps.STEPS``. The object says everything the graph needs about it:

- ``name``: its record in the stage cache (``<workdir>/.steps/<name>.json``) and its row in `openaim status`;
- ``stage``: the command that runs it (build-dataset, train, eval, report), which `openaim run` times;
- ``VERSION``: bumped by the step's author when its results change for the same config and inputs;
- ``reads``: the upstream steps whose outputs it takes (their recorded outputs hashes are its inputs);
- ``writes``: its outputs, named relative to the run's storage root (shared.storage);
- ``config(cfg)`` and ``inputs(ctx)``: with VERSION, its identity (``identity``: a StepSpec);
- ``run(ctx)``: the work, which reads and writes through ``ctx.store``.

``run_step`` is the life of every step: compute the identity, compare it with the record, ``prepare``
(what a step must do once it knows whether it reruns, before its old record goes), run, and commit the
record last. A step with ``cached = False`` (the manifest, the report: cheap summaries of the others'
outputs) runs every time and has no record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.config.root import OpenAIMConfig
from shared.stage_cache import Freshness, StageCache, StepSpec
from shared.stage_cache import plan as stage_plan
from shared.storage import Storage

log = logging.getLogger("openaim.pipeline")


@dataclass
class RunContext:
    """One run of some steps over one config: where they read and write, the records, what ran."""

    cfg: OpenAIMConfig
    force: bool = False  # rerun every step, even the fresh ones
    store: Storage = field(init=False)
    cache: StageCache = field(init=False)
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step that ran
    stage_of: dict[str, str] = field(default_factory=dict)  # step name -> stage, of the steps seen so far
    step: str = ""  # the step running now (a Spark engine labels its jobs with it)
    # What `openaim run` knew before any step ran: why curation reruns, the curation manifest the finished
    # run was trained on and its pipeline.json (the train step's archive of that run keeps all three).
    upstream_reasons: list[str] = field(default_factory=list)
    manifest_before: bytes | None = None
    pipeline_before: bytes | None = None
    _resources: dict[str, tuple[Any, Callable[[Any], None] | None]] = field(default_factory=dict)
    _on_step: list[Callable[[str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store = Storage(self.cfg.workdir)
        self.cache = StageCache(self.store)

    def resource(self, key: str, open_: Callable[[], Any], close: Callable[[Any], None] | None = None) -> Any:
        """A resource several steps of a stage share (the curation engine, the filter network), opened by
        the first step that asks and closed by ``release`` when the stage ends."""
        if key not in self._resources:
            self._resources[key] = (open_(), close)
        return self._resources[key][0]

    def begin(self, step: str) -> None:
        """A step starts: tell the resources that label their work with it."""
        self.step = step
        for tell in self._on_step:
            tell(step)

    def on_step(self, tell: Callable[[str], None]) -> None:
        """Call ``tell(step)`` at each step's start, until the resources are released."""
        self._on_step.append(tell)

    def forget(self, key: str) -> None:
        """Drop a resource whose value is stale (the score parts once the score step writes new ones)."""
        obj, close = self._resources.pop(key, (None, None))
        if close is not None:
            close(obj)

    def opened(self, key: str) -> Any:
        """The resource if a step opened it, else None."""
        return self._resources[key][0] if key in self._resources else None

    def release(self) -> None:
        self._on_step.clear()
        while self._resources:
            _, (obj, close) = self._resources.popitem()
            if close is not None:
                close(obj)


class Step:
    """The protocol every step of the graph follows (see the module docstring)."""

    name: ClassVar[str]
    stage: ClassVar[str]
    VERSION: ClassVar[int]
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    cached: ClassVar[bool] = True

    def wanted(self, cfg: OpenAIMConfig) -> bool:
        """Whether this config has the step at all (train-filter only for filter.model: own)."""
        return True

    def config(self, cfg: OpenAIMConfig) -> dict[str, Any]:
        """The config keys its results depend on, by dotted section name (nothing that never changes a
        result, such as worker counts)."""
        return {}

    def inputs(self, ctx: RunContext) -> dict[str, str]:
        """Input name -> hash: by default the recorded outputs hash of every step it reads."""
        return {name: ctx.cache.outputs_hash(name) for name in self.reads}

    def identity(self, ctx: RunContext) -> StepSpec:
        return StepSpec(self.name, config=self.config(ctx.cfg), inputs=self.inputs(ctx), version=self.VERSION,
                        outputs=[ctx.store.url(name) for name in self.writes])

    def prepare(self, ctx: RunContext, spec: StepSpec, rerun: bool) -> None:
        """Called once freshness is decided, before the old record is dropped."""

    def run(self, ctx: RunContext) -> str | None:
        """The work. Returns its outputs' digest when its tasks took it as they wrote (recording the
        step then reads none of its outputs), else None (``outputs_hash`` says what identifies them)."""
        raise NotImplementedError

    def join(self, ctx: RunContext) -> None:
        """A torchrun rank other than 0 at this step (rank 0 runs every step and owns the records): most
        steps run on rank 0 alone; a step that spreads across ranks (score) waits for rank 0 here."""

    def outputs_hash(self, ctx: RunContext) -> str | None:
        """What downstream steps take as this step's outputs; None: the content of every output."""
        return None


def run_step(step: Step, ctx: RunContext) -> bool:
    """Run ``step`` unless its record matches its identity; returns whether it ran."""
    ctx.stage_of[step.name] = step.stage
    ctx.begin(step.name)
    if not step.cached:
        _timed(step, ctx)
        return True
    spec = step.identity(ctx)
    rerun = ctx.force or not ctx.cache.check(spec).fresh
    step.prepare(ctx, spec, rerun)
    if not rerun:
        ctx.reused.append(step.name)
        log.info("%-12s reused (config, inputs and version unchanged)", step.name)
        return False
    ctx.cache.invalidate(step.name)  # a stale record must not survive a crash mid-step
    digest = _timed(step, ctx)
    ctx.cache.record(spec, digest if digest is not None else step.outputs_hash(ctx))  # last: outputs complete
    return True


def _timed(step: Step, ctx: RunContext) -> str | None:
    start = time.perf_counter()
    digest = step.run(ctx)
    ctx.seconds[step.name] = round(time.perf_counter() - start, 1)
    ctx.ran.append(step.name)
    log.info("%-12s done", step.name)
    return digest


def plan(ctx: RunContext, steps: Iterable[Step]) -> list[tuple[str, Freshness]]:
    """What the next run does with each cached step, in run order (`openaim status`): reuse it, or run
    it and why (shared.stage_cache.plan over the steps' identities as recorded now)."""
    return stage_plan(ctx.cache, [step.identity(ctx) for step in steps if step.cached])
