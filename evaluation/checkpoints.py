"""What `openaim eval` evaluates: the checkpoint entries (evaluation.checkpoints, or this run's final weights
and intermediate checkpoints, plus the random-weights baseline) and loading each one's trunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from evaluation.results import RANDOM_INIT
from shared import fsio
from shared.config.evaluation import EvaluationConfig
from shared.config.training import ModelConfig
from shared.errors import ConfigError, InputError
from shared.stage_cache import file_signature, hash_json
from training.checkpoint import CONFIG_FILE, complete_checkpoints
from training.eval_weights import load_model_and_digest, resolve_weights
from training.model.aim import INIT_VERSION, build_aim


@dataclass
class CheckpointEntry:
    name: str
    path: str | Path | None  # a path, or a URL (a checkpoint in a bucket); None = random weights
    step: int | None


def _name_for(raw: str) -> str:
    """A checkpoint's name from its path or URL: the run folder's (or the file's stem), with the step of a
    step_* folder ("run-step_0001000")."""
    if fsio.is_url(raw):
        full = raw.split("://", 1)[1].split("/")  # bucket and keys
    else:
        full = list(Path(raw).resolve().parts)
    parts = [p for p in full if p and p not in ("final", "training", "checkpoints", "/")]
    name = os.path.splitext(parts[-1])[0] if parts else "checkpoint"
    if fsio.name_of(raw).startswith("step_"):
        name = f"{parts[-2] if len(parts) > 1 else 'run'}-{fsio.name_of(raw)}"
    return name


def checkpoint_entries(ev: EvaluationConfig, training_dir: Path, run_name: str, training_steps: int,
                       checkpoint_root: str = "") -> list[CheckpointEntry]:
    """What to evaluate: evaluation.checkpoints, else this run's final weights (named ``run_name``) and,
    with evaluate_intermediate (or no final weights yet), its committed checkpoints with consolidated
    weights, listed under ``checkpoint_root`` (training.checkpoint_root: a folder or URL; empty: the
    training folder) through shared.fsio; then the random baseline."""
    entries: list[CheckpointEntry] = []
    if ev.checkpoints:
        for raw in ev.checkpoints:  # paths or URLs
            if not fsio.exists(raw):
                raise InputError(f"evaluation.checkpoints: {raw} does not exist")
            entries.append(CheckpointEntry(_name_for(raw), raw if fsio.is_url(raw) else Path(raw), None))
    else:
        final = training_dir / "final"
        intermediate = complete_checkpoints(checkpoint_root or training_dir)  # COMPLETE ones only
        if (final / "model.safetensors").is_file():
            last = intermediate[-1][0] if intermediate else None
            entries.append(CheckpointEntry(run_name, final, max(training_steps, last or 0)))
        elif not intermediate:
            where = f"{training_dir} or {checkpoint_root}" if checkpoint_root else str(training_dir)
            raise InputError(f"no trained model in {where}: run `openaim train` first or set "
                             "evaluation.checkpoints")
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


def checkpoint_stats(entries: list[CheckpointEntry]) -> dict[str, list]:
    """Name -> what identifies the version of each checkpoint evaluated, read from metadata only, never
    the bytes (shared.stage_cache.file_signature: size + mtime locally, size + ETag in a bucket), for the
    eval step's identity: a checkpoint rewritten at the same path or URL makes the step stale.

    Per checkpoint: the weights file that evaluating it loads (resolve_weights: a folder's
    model.safetensors, an ml-aim backbone.pth, a run dir's final or newest committed checkpoint) and the
    config.json beside it, and nothing else: they are all that evaluation reads (the other files of a
    checkpoint folder, its DCP shards and optimizer state, can be many and large and change no probe), and
    a folder written again writes its weights file again (new mtime / ETag). The random baseline has none:
    the config keys it."""
    stats: dict[str, list] = {}
    for entry in entries:
        if entry.path is None:
            continue
        weights = resolve_weights(entry.path)
        config = fsio.join(fsio.parent(weights), CONFIG_FILE)
        stats[entry.name] = [os.fspath(entry.path), entry.step, weights, file_signature(weights),
                             _signature_or_none(config)]
    return stats


def _signature_or_none(path: str) -> list | None:
    try:
        return file_signature(path)
    except FileNotFoundError:
        return None


def load_trunk(entry: CheckpointEntry, arch_cfg: ModelConfig,
               seed: int) -> tuple[torch.nn.Module, ModelConfig, str]:
    """(model, model_cfg, weights hash) for a checkpoint; random weights get a hash of arch + seed."""
    if entry.path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_aim(arch_cfg)
        return (
            model.eval(),
            arch_cfg,
            hash_json({"random-init": arch_cfg.model_dump(mode="json"), "seed": seed, "init": INIT_VERSION}),
        )
    try:
        # every rank loads each entry here, in the same order (evaluation.run): one download per host
        model, model_cfg, weights_hash = load_model_and_digest(entry.path, every_rank=True)
    except InputError:
        raise
    except Exception as exc:  # a wrong-shape or unreadable checkpoint becomes one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load checkpoint {entry.path}: {first[:300]}") from exc
    return model.eval(), model_cfg, weights_hash
