"""The pipeline graph: web -> build-dataset -> train -> eval -> report, over the stage cache.

Curation caches each of its own steps (extract, download, score, ...). On top of that the pipeline keeps
one record per stage (`train`, `eval`), keyed by the stage's config section and its upstream outputs:

- a stage whose config and inputs are unchanged is reused;
- a stage that is stale because its inputs or config changed *after it had finished* first moves its
  previous outputs to ``<workdir>/history/run-NNN/`` (training, eval, the curation manifest), so the new
  run starts clean and the report can show the old and the new run side by side;
- a stage that never finished (killed mid-way) is simply run again and resumes from its own checkpoints.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.errors import PartialFailure
from shared.stage_cache import StageCache, StepSpec, hash_json, hash_path

log = logging.getLogger("openaim.pipeline")
console = Console()


@dataclass
class Stage:
    name: str
    module: str
    function: str

    def load(self) -> Callable[[Any], Any] | None:
        try:
            return getattr(importlib.import_module(self.module), self.function)
        except ModuleNotFoundError as exc:
            # Only "this stage is not installed" is tolerated; a broken import inside a stage is a bug.
            if exc.name and (exc.name == self.module or self.module.startswith(exc.name + ".")):
                return None
            raise


CURATION = Stage("build-dataset", "curation.pipeline", "build_dataset")
TRAINING = Stage("train", "training.loop", "train_from_config")
EVALUATION = Stage("eval", "evaluation.run", "evaluate_from_config")
REPORT = Stage("report", "evaluation.report", "report_from_config")


def curated_shards_hash(cfg, cache: StageCache) -> str:
    """What training depends on: the curated shards (or the user's own shard list)."""
    if cfg.training.data.shards:
        return _hash_json_list(cfg.training.data.shards)
    recorded = cache.load("select")
    if recorded is not None:
        return recorded["outputs_hash"]
    return hash_path(cfg.curation_dir / "shards")


def _hash_json_list(items: list[str]) -> str:
    return hash_json(sorted(items))


def train_spec(cfg, cache: StageCache) -> StepSpec:
    return StepSpec(
        name="train",
        config={"training": cfg.training.model_dump(mode="json")},
        inputs={"shards": curated_shards_hash(cfg, cache)},
        outputs=[cfg.training_dir / "final"],
    )


def eval_spec(cfg, cache: StageCache) -> StepSpec:
    checkpoints = cfg.evaluation.checkpoints
    model_input = _hash_json_list(checkpoints) if checkpoints else cache.outputs_hash("train")
    return StepSpec(
        name="eval",
        config={"evaluation": cfg.evaluation.model_dump(mode="json")},
        inputs={"train": model_input},
        outputs=[cfg.eval_dir / "results.csv"],
    )


def history_runs(cfg) -> list[Path]:
    root = cfg.workdir / "history"
    return sorted(p for p in root.glob("run-*") if p.is_dir()) if root.is_dir() else []


def archive_previous_run(cfg, reasons: list[str], manifest: bytes | None = None) -> Path | None:
    """Move the finished training/eval outputs aside so the new run starts clean and stays comparable.

    ``manifest``: the curation manifest the finished run was trained on, read before curation reran
    (run_pipeline); None copies the manifest now on disk."""
    if not (cfg.training_dir / "final").exists():
        return None
    dest = cfg.workdir / "history" / f"run-{len(history_runs(cfg)) + 1:03d}"
    dest.mkdir(parents=True)
    for src in (cfg.training_dir, cfg.eval_dir):
        if src.exists():
            shutil.move(str(src), str(dest / src.name))
    if manifest is None:
        manifest = _read_manifest(cfg)
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


def _read_manifest(cfg) -> bytes | None:
    try:
        return (cfg.curation_dir / "manifest.json").read_bytes()
    except FileNotFoundError:
        return None


def _run_cached_stage(cfg, cache: StageCache, stage: Stage, spec: StepSpec, ran: list[str],
                      reused: list[str], missing: list[str], upstream_reasons: list[str],
                      seconds: dict[str, float], manifest_before: bytes | None = None) -> None:
    fn = stage.load()
    if fn is None:
        missing.append(stage.name)
        return
    state = cache.check(spec)
    if state.fresh:
        console.print(f"[green]✓ {stage.name}[/] reused (inputs and config unchanged)")
        reused.append(stage.name)
        return
    if stage is TRAINING and cache.load("train") is not None:
        archive_previous_run(cfg, state.reasons + upstream_reasons, manifest_before)
    console.rule(f"[bold]{stage.name}")
    cache.invalidate(spec.name)
    start = time.perf_counter()
    fn(cfg)
    seconds[stage.name] = round(time.perf_counter() - start, 1)
    cache.record(spec, outputs_hash=hash_path(spec.outputs[0]) if stage is TRAINING else None)
    ran.append(stage.name)


def run_pipeline(cfg) -> dict[str, list[str]]:
    """build-dataset -> train -> eval -> report. Returns which stages ran, were reused, or are missing."""
    cache = StageCache(cfg.workdir)
    ran: list[str] = []
    reused: list[str] = []
    missing: list[str] = []

    # Why curation steps are stale now (e.g. "select: curation.select.fraction: 0.15 -> 0.3"): recorded
    # with the archived run so the report can say what changed between the runs.
    upstream_reasons = [f"{name}: {why}" for name, fresh, reasons in collect_status(cfg)
                        if not fresh and name not in ("train", "eval") for why in reasons]
    seconds: dict[str, float] = {}  # wall time of each stage that ran (the report shows it)
    # The finished run was trained on this manifest; curation is about to rewrite it, and the archive
    # made when training reruns must keep the run's own curation numbers.
    manifest_before = _read_manifest(cfg)
    if not cfg.training.data.shards:
        build = CURATION.load()
        if build is None:
            missing.append(CURATION.name)
        else:
            console.rule("[bold]build-dataset")
            start = time.perf_counter()
            build(cfg)
            seconds[CURATION.name] = round(time.perf_counter() - start, 1)
            ran.append(CURATION.name)
    partial: PartialFailure | None = None  # e.g. one unreadable benchmark: the report still shows the rest
    for stage, spec in ((TRAINING, train_spec(cfg, cache)), (EVALUATION, eval_spec(cfg, cache))):
        try:
            _run_cached_stage(cfg, cache, stage, spec, ran, reused, missing, upstream_reasons, seconds,
                              manifest_before)
        except PartialFailure as exc:
            partial = exc

    report = REPORT.load()
    if report is None:
        missing.append(REPORT.name)
    else:
        console.rule("[bold]report")
        # the report shows the stages' wall times: this run's so far
        atomic_write_json(cfg.workdir / "pipeline.json", {"ran": ran, "reused": reused, "missing": missing,
                                                          "seconds": seconds})
        compare = list(cfg.report.compare) + [str(p) for p in history_runs(cfg)[-2:]]
        with_history = cfg.model_copy(deep=True)
        with_history.report.compare = compare
        start = time.perf_counter()
        path = report(with_history)
        seconds[REPORT.name] = round(time.perf_counter() - start, 1)
        ran.append(REPORT.name)
        console.print(f"[bold green]report:[/] {path}")
    if missing:
        console.print(f"[yellow]not built yet:[/] {', '.join(missing)}")
    atomic_write_json(cfg.workdir / "pipeline.json", {"ran": ran, "reused": reused, "missing": missing,
                                                      "seconds": seconds})
    if partial is not None:
        raise partial
    return {"ran": ran, "reused": reused, "missing": missing}


def run_demo(cfg) -> dict[str, list[str]]:
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    console.rule("[bold]mini web")
    generate_web(cfg.web, cfg.web_dir, skip_if_done=True)
    with serve_in_background(cfg.web_dir, host=cfg.web.host, port=cfg.web.port):
        return run_pipeline(cfg)


# --- openaim status ---------------------------------------------------------------------------------

def _section(cfg_dump: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg_dump
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _flat(obj: Any, prefix: str) -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: obj}


def record_staleness(rec: dict[str, Any], cfg_dump: dict[str, Any], records: dict[str, dict],
                     code: str | None = None) -> list[str]:
    """Why a recorded step no longer matches the current config, upstream records and code.

    Config sections are recorded under their dotted names (``curation.select``); inputs named after an
    upstream step compare with that step's recorded outputs hash; ``code`` is the step's current code
    version (None: not known here, not compared).
    """
    reasons = []
    if code is not None and rec.get("code") != code:
        reasons.append("code changed")
    for section, old in rec.get("config", {}).items():
        new = _section(cfg_dump, section)
        old_flat, new_flat = _flat(old, section), _flat(new, section)
        # Only the keys the step recorded matter: a step may depend on part of a section.
        for key in sorted(old_flat):
            if old_flat.get(key) != new_flat.get(key):
                reasons.append(f"{key}: {old_flat.get(key)!r} -> {new_flat.get(key)!r}")
    for name, old_hash in rec.get("inputs", {}).items():
        upstream = records.get(name)
        if upstream is not None and upstream.get("outputs_hash") != old_hash:
            reasons.append(f"input {name} changed")
    for out in rec.get("outputs", []):
        if not Path(out).exists():
            reasons.append(f"output {out} missing")
    return reasons


def _curation_code_versions() -> dict[str, str]:
    try:
        from curation.pipeline import step_code_versions
    except ModuleNotFoundError:  # the curation stage is not installed: its records are judged without code
        return {}
    return step_code_versions()


def collect_status(cfg) -> list[tuple[str, bool, list[str]]]:
    cache = StageCache(cfg.workdir)
    records = {p.stem: r for p in sorted(cache.root.glob("*.json")) if (r := cache.load(p.stem))} \
        if cache.root.is_dir() else {}
    cfg_dump = cfg.model_dump(mode="json")
    order = ["extract", "download", "train-filter", "score", "dedup", "safety", "select"]
    # Steps whose config is keyed by config sections (stage-internal records, e.g. per-probe caches, are not).
    records = {n: r for n, r in records.items()
               if all(k.split(".")[0] in cfg_dump for k in r.get("config", {}))}
    names = [n for n in order if n in records] + sorted(n for n in records if n not in order and
                                                         n not in ("train", "eval"))
    codes = _curation_code_versions()
    rows: list[tuple[str, bool, list[str]]] = []
    stale: set[str] = set()
    for name in names:
        reasons = record_staleness(records[name], cfg_dump, records, codes.get(name))
        reasons += [f"upstream {u} is stale" for u in records[name].get("inputs", {}) if u in stale]
        if reasons:
            stale.add(name)
        rows.append((name, not reasons, reasons))
    # The pipeline's own stages: train takes the selected shards, eval the trained model.
    upstream = {"train": "select", "eval": "train"}
    for spec in (train_spec(cfg, cache), eval_spec(cfg, cache)):
        state = cache.check(spec)
        reasons = list(state.reasons)
        if upstream[spec.name] in stale and not cfg.training.data.shards:
            reasons.append(f"upstream {upstream[spec.name]} is stale")
        if reasons:
            stale.add(spec.name)
        rows.append((spec.name, not reasons, reasons))
    return rows


def print_status(cfg) -> None:
    table = Table(title=f"openaim status: {cfg.workdir}")
    table.add_column("step")
    table.add_column("state")
    table.add_column("why")
    for name, fresh, reasons in collect_status(cfg):
        table.add_row(name, "[green]fresh" if fresh else "[yellow]stale", "; ".join(reasons) or "-")
    console.print(table)
