"""One checkpoint x one benchmark: its split features (cached), then its probe grids, trained as jobs spread
across the torchrun ranks (rank 0 gathers the records and writes them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from evaluation import probe_grid
from evaluation.benchmarks import registry
from evaluation.checkpoints import CheckpointEntry
from evaluation.features import extract_split_features, feature_path, load_features
from evaluation.results import read_result, result_path, write_result
from shared.config.evaluation import EvaluationConfig, ProbeConfig
from shared.config.training import ModelConfig
from shared.errors import InputError
from shared.stage_cache import StageCache, StepSpec
from shared.torchrun import broadcast_from_rank0, rank_world

log = logging.getLogger("openaim.eval")


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
    model_cfg: ModelConfig,
    ckpt_hash: str,
    blocks: list[int],
    img_size: int,
    cache: StageCache,
    progress,
    version: int,
) -> dict[str, Any] | ProbeTask | None:
    """Features (cached; sharded across ranks under torchrun). Then, on rank 0: the cached result record
    when the probe step (``version``: the eval step's, evaluation.run.VERSION) is fresh, else the
    ProbeTask to train; None on the other ranks."""
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
        version=version,
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
