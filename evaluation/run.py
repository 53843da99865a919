"""`openaim eval`: every checkpoint x every present benchmark -> features -> probe grids -> results.

Checkpoints: cfg.evaluation.checkpoints, or this run's final model plus (evaluate_intermediate) the
intermediate ones named "<run>-step_N" (committed ones, under training_dir/checkpoints/ or under
training.checkpoint_root, a folder or an s3:// URL), plus (random_baseline) a random-weights trunk of the
same architecture named "random-init". Missing benchmarks are listed in
missing.json and never fail the run. A benchmark that is there but cannot be read (a damaged csv, an
unreadable image list) is recorded in failed.json with its reason; every other benchmark is still
evaluated and written, then the command ends with a non-zero exit (shared.errors.PartialFailure).
Features and per-benchmark probe results are cached: a rerun with unchanged weights, data and probe
config trains nothing. run_info.json records this run's config, torch version, device and wall time.

Under torchrun (``torchrun --nproc_per_node N -m openaim eval --config ...``) each split's features are
extracted in shards across the ranks, then the probe jobs (checkpoint x benchmark x probe kind) are dealt
out round-robin; rank 0 gathers the results and writes every file, the same files a single process writes.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from evaluation.benchmarks import registry
from evaluation.checkpoints import CheckpointEntry, checkpoint_entries, load_trunk
from evaluation.features import resolve_blocks
from evaluation.mlaim_head import evaluate_head, head_for
from evaluation.probe_tasks import ProbeTask, features_for_checkpoint_on_benchmark, train_probes
from evaluation.results import write_failed, write_missing, write_results_csv
from shared.atomic import atomic_write_json
from shared.config.evaluation import EvaluationConfig
from shared.config.root import OpenAIMConfig
from shared.errors import ConfigError, InputError, PartialFailure
from shared.progress import progress_bar
from shared.stage_cache import StageCache
from shared.torchrun import local_device, rank_world

# Bump when the probe results (the whole evaluation/ package) change for the same config and inputs: this
# step and every step after it rerun (shared/stage_cache.py). Edits that change no result (comments,
# refactors) need no bump.
VERSION = 1

log = logging.getLogger("openaim.eval")


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
    entries = checkpoint_entries(ev, cfg.training_dir, cfg.name, cfg.training.steps,
                                 cfg.training.checkpoint_root)
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
            model, model_cfg, ckpt_hash = load_trunk(entry, arch_cfg, ev.seed)
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
                                                                   cache, progress, VERSION)
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
