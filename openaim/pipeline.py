"""The pipeline graph: web -> build-dataset -> train -> eval -> report, over the stage cache.

Curation caches each of its own steps (extract, download, score, ...). On top of that the pipeline keeps
one record per stage (`train`, `eval`), keyed by the stage's config section, its upstream outputs and
its module's ``VERSION`` (training.loop, evaluation.run); `openaim status` checks the same specs
(``pipeline_plan``):

- a stage whose config and inputs are unchanged is reused;
- a stage that is stale because its inputs or config changed *after it had finished* first moves its
  previous outputs to ``<workdir>/history/run-NNN/`` (training, eval, the curation manifest), so the new
  run starts clean and the report can show the old and the new run side by side;
- a stage that never finished (killed mid-way) is simply run again and resumes from its own checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import evaluation.run
import training.loop
from curation.pipeline import build_dataset
from curation.step_specs import step_specs
from evaluation.run import evaluate_from_config
from openaim.report import report_from_config
from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.config.root import OpenAIMConfig
from shared.errors import PartialFailure
from shared.miniweb.generate import generate_web
from shared.miniweb.server import serve_in_background
from shared.stage_cache import Freshness, StageCache, StepSpec, hash_json, hash_path, plan
from training.loop import train_from_config

log = logging.getLogger("openaim.pipeline")
console = Console()


def train_spec(cfg: OpenAIMConfig, cache: StageCache) -> StepSpec:
    """Training takes the curated shards (select's outputs), or the user's own shard list."""
    shards = cfg.training.data.shards
    return StepSpec(
        name="train",
        config={"training": cfg.training.model_dump(mode="json")},
        inputs={"shards": hash_json(sorted(shards))} if shards else {"select": cache.outputs_hash("select")},
        version=training.loop.VERSION,
        outputs=[cfg.training_dir / "final"],
    )


def eval_spec(cfg: OpenAIMConfig, cache: StageCache) -> StepSpec:
    checkpoints = cfg.evaluation.checkpoints
    return StepSpec(
        name="eval",
        config={"evaluation": cfg.evaluation.model_dump(mode="json")},
        inputs={"checkpoints": hash_json(sorted(checkpoints))} if checkpoints
        else {"train": cache.outputs_hash("train")},
        version=evaluation.run.VERSION,
        outputs=[cfg.eval_dir / "results.csv"],
    )


def pipeline_plan(cfg: OpenAIMConfig) -> list[tuple[str, Freshness]]:
    """Every step of `openaim run` (curation's, then train and eval) and whether the next run reuses it.

    A stage's spec takes its upstream's outputs as recorded now; when that upstream runs, ``plan`` marks
    the stage as running too."""
    cache = StageCache(cfg.workdir)
    curation = [] if cfg.training.data.shards else step_specs(cfg, cache)
    return plan(cache, [*curation, train_spec(cfg, cache), eval_spec(cfg, cache)])


def history_runs(workdir: Path) -> list[Path]:
    root = workdir / "history"
    return sorted(p for p in root.glob("run-*") if p.is_dir()) if root.is_dir() else []


def archive_previous_run(cfg: OpenAIMConfig, reasons: list[str],
                         manifest: bytes | None = None) -> Path | None:
    """Move the finished training/eval outputs aside so the new run starts clean and stays comparable.

    ``manifest``: the curation manifest the finished run was trained on, read before curation reran
    (run_pipeline); None copies the manifest now on disk."""
    if not (cfg.training_dir / "final").exists():
        return None
    dest = cfg.workdir / "history" / f"run-{len(history_runs(cfg.workdir)) + 1:03d}"
    dest.mkdir(parents=True)
    for src in (cfg.training_dir, cfg.eval_dir):
        if src.exists():
            shutil.move(str(src), str(dest / src.name))
    if manifest is None:
        manifest = _read_manifest(cfg.curation_dir)
    if manifest is not None:
        atomic_write_bytes(dest / "curation" / "manifest.json", manifest)
    if (cfg.workdir / "pipeline.json").is_file():  # still the finished run's: stage wall times
        shutil.copy2(cfg.workdir / "pipeline.json", dest / "pipeline.json")
    atomic_write_json(dest / "run.json", {"archived_because": reasons})
    cache = StageCache(cfg.workdir)
    cache.invalidate("train")
    cache.invalidate("eval")
    console.print(f"[cyan]previous run moved to {dest} ({'; '.join(reasons)})")
    return dest


def _read_manifest(curation_dir: Path) -> bytes | None:
    try:
        return (curation_dir / "manifest.json").read_bytes()
    except FileNotFoundError:
        return None


def _run_cached_stage(cfg: OpenAIMConfig, cache: StageCache, name: str,
                      spec_fn: Callable[[OpenAIMConfig, StageCache], StepSpec],
                      run: Callable[[OpenAIMConfig], object], ran: list[str], reused: list[str],
                      upstream_reasons: list[str], seconds: dict[str, float],
                      manifest_before: bytes | None = None) -> None:
    spec = spec_fn(cfg, cache)  # after the stages before it ran: it takes their recorded outputs
    state = cache.check(spec)
    if state.fresh:
        console.print(f"[green]✓ {name}[/] reused (inputs, config and version unchanged)")
        reused.append(name)
        return
    if name == "train" and cache.load("train") is not None:
        archive_previous_run(cfg, state.reasons + upstream_reasons, manifest_before)
    console.rule(f"[bold]{name}")
    cache.invalidate(spec.name)
    start = time.perf_counter()
    run(cfg)
    seconds[name] = round(time.perf_counter() - start, 1)
    cache.record(spec, outputs_hash=hash_path(spec.outputs[0]) if name == "train" else None)
    ran.append(name)


def run_pipeline(cfg: OpenAIMConfig) -> dict[str, list[str]]:
    """build-dataset -> train -> eval -> report. Returns which stages ran and which were reused."""
    cache = StageCache(cfg.workdir)
    ran: list[str] = []
    reused: list[str] = []

    # Why curation steps run now (e.g. "select: config curation.select.fraction: 0.15 -> 0.3"): recorded
    # with the archived run so the report can say what changed between the runs.
    upstream_reasons = [f"{name}: {why}" for name, state in pipeline_plan(cfg)
                        if name not in ("train", "eval") for why in state.reasons]
    seconds: dict[str, float] = {}  # wall time of each stage that ran (the report shows it)
    # The finished run was trained on this manifest; curation is about to rewrite it, and the archive
    # made when training reruns must keep the run's own curation numbers.
    manifest_before = _read_manifest(cfg.curation_dir)
    if not cfg.training.data.shards:
        console.rule("[bold]build-dataset")
        start = time.perf_counter()
        build_dataset(cfg)
        seconds["build-dataset"] = round(time.perf_counter() - start, 1)
        ran.append("build-dataset")
    partial: PartialFailure | None = None  # e.g. one unreadable benchmark: the report still shows the rest
    for name, spec_fn, run in (("train", train_spec, train_from_config),
                               ("eval", eval_spec, evaluate_from_config)):
        try:
            _run_cached_stage(cfg, cache, name, spec_fn, run, ran, reused, upstream_reasons, seconds,
                              manifest_before)
        except PartialFailure as exc:
            partial = exc

    console.rule("[bold]report")
    # the report shows the stages' wall times: this run's so far
    atomic_write_json(cfg.workdir / "pipeline.json", {"ran": ran, "reused": reused, "seconds": seconds})
    with_history = cfg.model_copy(deep=True)
    previous = [str(p) for p in history_runs(cfg.workdir)[-2:]]
    with_history.report.compare = list(cfg.report.compare) + previous
    start = time.perf_counter()
    path = report_from_config(with_history)
    seconds["report"] = round(time.perf_counter() - start, 1)
    ran.append("report")
    console.print(f"[bold green]report:[/] {path}")
    atomic_write_json(cfg.workdir / "pipeline.json", {"ran": ran, "reused": reused, "seconds": seconds})
    if partial is not None:
        raise partial
    return {"ran": ran, "reused": reused}


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
