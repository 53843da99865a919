"""`openaim eval`: every checkpoint x every present benchmark -> features -> probe grids -> results.

Checkpoints: cfg.evaluation.checkpoints, or this run's final model plus (evaluate_intermediate) the
intermediate ones under training_dir/checkpoints/ named "<run>-step_N", plus (random_baseline) a
random-weights trunk of the same architecture named "random-init". Missing benchmarks are listed in
missing.json and never fail the run. A benchmark that is there but cannot be read (a damaged csv, an
unreadable image list) is recorded in failed.json with its reason; every other benchmark is still
evaluated and written, then the command ends with a non-zero exit (shared.errors.PartialFailure).
Features and per-benchmark probe results are cached: a rerun with unchanged weights, data and probe
config trains nothing. run_info.json records this run's config, torch version, device and wall time.

Under torchrun (``torchrun --nproc_per_node N -m shared.cli eval --config ...``) each split's features are
extracted in shards across the ranks, then the probe jobs (checkpoint x benchmark x probe kind) are dealt
out round-robin; rank 0 gathers the results and writes every file, the same files a single process writes.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torchvision

from evaluation import probe_grid
from evaluation.benchmarks import registry
from evaluation.features import (
    checkpoint_hash,
    extract_split_features,
    feature_path,
    load_features,
    resolve_blocks,
)
from evaluation.mlaim_head import evaluate_head, head_for
from evaluation.results import (
    read_result,
    result_path,
    write_failed,
    write_missing,
    write_result,
    write_results_csv,
)
from shared.atomic import atomic_write_json
from shared.config.evaluation import EvaluationConfig, ProbeConfig
from shared.config.root import OpenAIMConfig
from shared.errors import ConfigError, InputError, PartialFailure
from shared.progress import progress_bar
from shared.stage_cache import StageCache, StepSpec, hash_json
from shared.torchrun import broadcast_from_rank0, local_device, rank_world
from training.checkpoint import complete_checkpoints, load_model_for_eval
from training.model.aim import build_aim

# Bump when the probe results (the whole evaluation/ package) change for the same config and inputs: this
# step and every step after it rerun (shared/stage_cache.py). Edits that change no result (comments,
# refactors) need no bump.
VERSION = 1

log = logging.getLogger("openaim.eval")

RANDOM_INIT = "random-init"


@dataclass
class CheckpointEntry:
    name: str
    path: Path | None  # None = random weights
    step: int | None


def _name_for(path: Path) -> str:
    parts = [p for p in path.resolve().parts if p not in ("final", "training", "checkpoints", "/")]
    name = Path(parts[-1]).stem if parts else "checkpoint"
    if path.name.startswith("step_"):
        name = f"{parts[-2] if len(parts) > 1 else 'run'}-{path.name}"
    return name


def checkpoint_entries(ev: EvaluationConfig, training_dir: Path, run_name: str,
                       training_steps: int) -> list[CheckpointEntry]:
    """What to evaluate: evaluation.checkpoints, else this run's final weights (named ``run_name``) and,
    with evaluate_intermediate (or no final weights yet), its complete checkpoints; then the random
    baseline."""
    entries: list[CheckpointEntry] = []
    if ev.checkpoints:
        for raw in ev.checkpoints:
            path = Path(raw)
            if not path.exists():
                raise InputError(f"evaluation.checkpoints: {path} does not exist")
            entries.append(CheckpointEntry(_name_for(path), path, None))
    else:
        final = training_dir / "final"
        intermediate = complete_checkpoints(training_dir) if training_dir.is_dir() else []
        if (final / "model.safetensors").is_file():
            last = intermediate[-1][0] if intermediate else None
            entries.append(CheckpointEntry(run_name, final, max(training_steps, last or 0)))
        elif not intermediate:
            raise InputError(
                f"no trained model in {training_dir}: run `openaim train` first "
                "or set evaluation.checkpoints"
            )
        if ev.evaluate_intermediate or not entries:
            # the checkpoint at the final step holds the final weights: probing it twice adds nothing
            final_step = entries[0].step if entries else None
            entries += [
                CheckpointEntry(f"{run_name}-step_{step}", d, step)
                for step, d in intermediate
                if step != final_step
            ]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"evaluation.checkpoints: two checkpoints would be named {dupes[0]!r}; rename one")
    if ev.random_baseline:
        entries.append(CheckpointEntry(RANDOM_INIT, None, 0))
    return entries


def _load_trunk(entry: CheckpointEntry, arch_cfg, seed: int):
    """(model, model_cfg, weights hash) for a checkpoint; random weights get a hash of arch + seed."""
    if entry.path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_aim(arch_cfg)
        return (
            model.eval(),
            arch_cfg,
            hash_json({"random-init": arch_cfg.model_dump(mode="json"), "seed": seed}),
        )
    try:
        model, model_cfg = load_model_for_eval(entry.path)
    except InputError:
        raise
    except Exception as exc:  # a wrong-shape or unreadable checkpoint becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load checkpoint {entry.path}: {first[:300]}") from exc
    return model.eval(), model_cfg, checkpoint_hash(entry.path)


# --- which benchmarks: present, missing, failed ----------------------------------------------------


def _benchmarks(ev: EvaluationConfig, web_dir: Path) -> tuple[list[tuple[Any, Path]], list[dict[str, str]]]:
    """(present [(spec, root)], missing entries) for evaluation.benchmarks; unknown names raise."""
    specs = registry.resolve_benchmarks(ev.benchmarks)  # ConfigError on an unknown name
    present, missing = [], []
    for spec in specs:
        root = registry.benchmark_root(spec, ev.data_root, web_dir)
        reason = registry.missing_reason(spec, root)
        if reason:
            missing.append(
                {
                    "benchmark": spec.name,
                    "title": spec.title,
                    "path": str(root),
                    "how_to_get": registry.how_to_get(spec, ev.data_root),
                    "reason": reason,
                }
            )
        else:
            present.append((spec, root))
    return present, missing


def _failure(spec, root: Path, entry: CheckpointEntry, exc: BaseException) -> dict[str, str]:
    """A failed-benchmark entry: one line saying what could not be read."""
    text = str(exc).strip()
    reason = text.splitlines()[0][:500] if text else ""
    if not isinstance(exc, InputError):  # a library's own error: say which, so the line can be searched
        reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return {
        "benchmark": spec.name,
        "title": spec.title,
        "path": str(root),
        "checkpoint": entry.name,
        "reason": reason,
    }


# --- one checkpoint x one benchmark -------------------------------------------------------------------


def _split_features(ev: EvaluationConfig, eval_dir: Path, spec, root, model, ckpt_hash, blocks, img_size,
                    progress):
    out, skipped, paths, classes = {}, 0, {}, 0
    for split in ("train", "val", "test"):
        max_items = ev.max_train_per_benchmark if split == "train" else None
        dataset = registry.load_split(spec, root, split, ev.probe.val_fraction, ev.seed, max_items)
        data_key = {
            "benchmark": spec.name,
            "split": split,
            "val_fraction": ev.probe.val_fraction,
            "seed": ev.seed,
            "max_items": max_items,
            "n": len(dataset),
        }
        path = feature_path(eval_dir, ckpt_hash, spec.name, split, blocks, img_size, data_key)
        feats, n_skipped = extract_split_features(
            model,
            dataset,
            path,
            blocks,
            img_size,
            ev.batch_size,
            ev.num_workers,
            description=f"{spec.name}/{split} features",
            progress=progress,
            metadata={"benchmark": spec.name, "split": split, "checkpoint_hash": ckpt_hash},
        )
        skipped += n_skipped  # counted by our collate (the dataset's own counters live in workers)
        out[split], paths[split] = feats, path
        classes = max(classes, len(dataset.classes))
    return out, skipped, paths, classes


def _probe_kinds(probe_cfg: ProbeConfig) -> list[str]:
    kind = probe_cfg.kind
    return ["attentive", "linear"] if kind == "both" else [kind]


@dataclass
class ProbeTask:
    """One checkpoint x benchmark whose probes must be (re)trained: its feature files and its record so
    far."""

    step: StepSpec
    record: dict[str, Any]
    paths: dict[str, Path]  # split -> cached features
    num_classes: int
    num_heads: int


def features_for_checkpoint_on_benchmark(
    ev: EvaluationConfig,
    eval_dir: Path,
    entry: CheckpointEntry,
    spec,
    root,
    model,
    model_cfg,
    ckpt_hash: str,
    blocks: list[int],
    img_size: int,
    cache: StageCache,
    progress,
) -> dict[str, Any] | ProbeTask | None:
    """Features (cached; sharded across ranks under torchrun). Then, on rank 0: the cached result record
    when the probe step is fresh, else the ProbeTask to train; None on the other ranks."""
    start = time.perf_counter()
    splits, skipped, paths, n_classes = _split_features(ev, eval_dir, spec, root, model, ckpt_hash, blocks,
                                                        img_size, progress)
    if rank_world()[0] != 0:
        return None
    out = result_path(eval_dir, entry.name, spec.name)
    step = StepSpec(
        name=f"eval-probe-{entry.name}-{spec.name}",
        config={
            "evaluation.probe": ev.probe.model_dump(mode="json"),
            "kinds": _probe_kinds(ev.probe),
            "checkpoint": {"path": str(entry.path), "step": entry.step},
        },
        inputs={split: str(p.name) + "@" + p.parent.parent.name for split, p in paths.items()},
        version=VERSION,
        outputs=[out],
    )
    if cache.check(step).fresh and (cached := read_result(out)) is not None:
        return cached
    record: dict[str, Any] = {
        "checkpoint": entry.name,
        "checkpoint_path": str(entry.path) if entry.path else None,
        "checkpoint_hash": ckpt_hash,
        "step": entry.step,
        "benchmark": spec.name,
        "blocks": blocks,
        "img_size": img_size,
        "n_train": len(splits["train"]),
        "n_val": len(splits["val"]),
        "n_test": len(splits["test"]),
        "skipped_corrupt": skipped,
        "probes": {},
        "seconds": time.perf_counter() - start,
    }  # the probes' own seconds are added as they finish
    return ProbeTask(step, record, paths, int(spec.num_classes or n_classes), model_cfg.heads)


def _load_task_features(task: ProbeTask) -> dict[str, Any]:
    """A task's cached feature splits, read back from disk (any rank may train any task's probes)."""
    splits = {}
    for split, path in task.paths.items():
        loaded = load_features(path)
        if loaded is None:
            raise InputError(f"feature cache {path} vanished or is unreadable: rerun `openaim eval`")
        splits[split] = loaded[0]
    return splits


def _probe_job(probe_cfg: ProbeConfig, task: ProbeTask, splits: dict[str, Any], kind: str,
               progress) -> dict[str, float]:
    """Train one probe grid of ``kind`` on a task's features (the same seed whichever rank runs it)."""
    label = f"{task.record['checkpoint']} {task.record['benchmark']} {kind} probes"
    bar = progress.add_task(label, total=None)
    res = probe_grid.run_probe_grid(
        kind,
        splits["train"],
        splits["val"],
        splits["test"],
        task.num_classes,
        task.num_heads,
        probe_cfg,
        on_step=lambda s, total: progress.update(bar, completed=s, total=total),
    )
    progress.remove_task(bar)
    return res


def train_probes(probe_cfg: ProbeConfig, eval_dir: Path, tasks: list[ProbeTask], cache: StageCache,
                 progress) -> list[dict[str, Any]]:
    """Train every task's probe grids; returns the finished records (on rank 0; [] elsewhere).

    One job = one task x one probe kind. Under torchrun job i runs on rank i % world: the ranks train a
    round of ``world`` jobs at once, then rank 0 gathers the round's results and writes (and records in
    the stage cache) each task whose kinds are all in, so a killed run keeps its finished results. One
    process is the same loop with rounds of one job; the results do not depend on the number of ranks.
    """
    rank, world = rank_world()
    tasks = broadcast_from_rank0(tasks)  # rank 0 read the stage cache: it says what is stale
    if rank == 0:
        for task in tasks:
            cache.invalidate(task.step.name)  # a stale record must not survive a crash mid-step
    kinds = _probe_kinds(probe_cfg)
    jobs = [(t, kind) for t in range(len(tasks)) for kind in kinds]
    done: list[dict[str, Any]] = []
    loaded: tuple[int, dict[str, Any]] | None = None  # the last task's features: its next kind reuses them
    for first in range(0, len(jobs), world):
        mine = first + rank
        res = None
        if mine < len(jobs):
            t, kind = jobs[mine]
            if world > 1:
                log.info(
                    "rank %d of %d trains %s %s %s probes",
                    rank,
                    world,
                    tasks[t].record["checkpoint"],
                    tasks[t].record["benchmark"],
                    kind,
                )
            if loaded is None or loaded[0] != t:
                loaded = (t, _load_task_features(tasks[t]))
            res = _probe_job(probe_cfg, tasks[t], loaded[1], kind, progress)
        results = [res]
        if world > 1:
            results = [None] * world if rank == 0 else None
            dist.gather_object(res, results, dst=0)
        if rank != 0:
            continue
        for offset, res in enumerate(results[: len(jobs) - first]):
            t, kind = jobs[first + offset]
            task = tasks[t]
            task.record["probes"][kind] = res
            task.record["seconds"] += res["seconds"]
            log.info(
                "%s %s %s: top-1 %.3f (lr %g, wd %g)",
                task.record["checkpoint"],
                task.record["benchmark"],
                kind,
                res["top1"],
                res["lr"],
                res["weight_decay"],
            )
            if len(task.record["probes"]) == len(kinds):
                task.record["probes"] = {k: task.record["probes"][k] for k in kinds}  # the config's order
                write_result(eval_dir, task.record)
                cache.record(task.step)
                done.append(task.record)
    return done


def run_info(cfg: OpenAIMConfig, device: str, seconds: float) -> dict[str, Any]:
    """What the report shows about how this evaluation ran (and the config diff between runs uses)."""
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "config": cfg.model_dump(mode="json"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "world_size": rank_world()[1],
        "seconds": round(seconds, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def evaluate_from_config(cfg: OpenAIMConfig) -> Path:
    """Run the evaluation stage; returns cfg.eval_dir/results.csv (on rank 0; the same path elsewhere).

    Every readable benchmark is evaluated; those that fail are written to failed.json, and then (after
    results.csv and every other file is written) PartialFailure names them."""
    started = time.perf_counter()
    ev = cfg.evaluation
    if ev.threads:
        torch.set_num_threads(ev.threads)
    present, missing = _benchmarks(ev, cfg.web_dir)
    entries = checkpoint_entries(ev, cfg.training_dir, cfg.name, cfg.training.steps)
    rank, _ = rank_world()
    if rank == 0:
        write_missing(cfg.eval_dir, missing)
        for m in missing:
            log.warning("benchmark %s not found at %s: %s", m["benchmark"], m["path"], m["how_to_get"])
    cache = StageCache(cfg.workdir)
    records: list[dict[str, Any]] = []
    failed: dict[str, dict[str, str]] = {}  # benchmark -> its failure (the first checkpoint that hit it)
    arch_cfg = cfg.training.model
    device = local_device()  # one GPU per rank under torchrun
    if device != "cpu":
        torch.cuda.set_device(device)
    tasks: list[ProbeTask] = []
    with progress_bar(transient=False, disable=rank != 0) as progress:
        overall = progress.add_task("features", total=len(entries) * len(present))
        # First every trunk's features (each split sharded across ranks), then the probes of every stale
        # checkpoint x benchmark (the jobs spread across ranks). Real checkpoints first, so the random
        # baseline takes their architecture.
        for entry in entries:
            model, model_cfg, ckpt_hash = _load_trunk(entry, arch_cfg, ev.seed)
            if entry.path is not None:
                arch_cfg = model_cfg
            model = model.to(device)
            blocks = resolve_blocks(ev.blocks, ev.n_blocks, model, model_cfg.depth)
            img_size = ev.img_size or model_cfg.img_size
            for spec, root in present:
                progress.update(overall, description=f"features {entry.name} / {spec.name}")
                if spec.name in failed:  # unreadable data stays unreadable for the next trunk
                    progress.advance(overall)
                    continue
                head = head_for(ev.heads, entry.path, spec.name)
                try:
                    if head is not None:  # a released probe head: applied as it is, nothing to train
                        got = evaluate_head(ev, cfg.eval_dir, entry, spec, root, model, model_cfg, ckpt_hash,
                                            head, img_size, progress)
                    else:
                        got = features_for_checkpoint_on_benchmark(ev, cfg.eval_dir, entry, spec, root, model,
                                                                   model_cfg, ckpt_hash, blocks, img_size,
                                                                   cache, progress)
                except (ConfigError, KeyboardInterrupt):
                    raise  # the user's config is wrong for every benchmark: stop
                except Exception as exc:
                    failed[spec.name] = _failure(spec, root, entry, exc)
                    log.error("benchmark %s failed at %s: %s", spec.name, root, failed[spec.name]["reason"])
                    log.debug("benchmark %s failure", spec.name, exc_info=True)
                    got = None
                if isinstance(got, ProbeTask):
                    tasks.append(got)
                elif got is not None:
                    records.append(got)  # probes unchanged since the last run: its cached record
                progress.advance(overall)
            del model
        progress.remove_task(overall)
        records += train_probes(ev.probe, cfg.eval_dir, tasks, cache, progress)
    path = cfg.eval_dir / "results.csv"
    if rank == 0:
        write_results_csv(cfg.eval_dir, records)
        write_failed(cfg.eval_dir, list(failed.values()))
        atomic_write_json(
            cfg.eval_dir / "run_info.json", run_info(cfg, device, time.perf_counter() - started)
        )
    if failed:
        names = "; ".join(f"{f['benchmark']}: {f['reason']}" for f in failed.values())
        raise PartialFailure(
            f"{len(failed)} benchmark(s) could not be read ({names[:600]}); the other results "
            f"are in {path} and the failures in {cfg.eval_dir / 'failed.json'}"
        )
    return path
