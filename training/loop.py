"""The training loop of `openaim train`: resumable, exact on CPU, DDP / FSDP2 / HSDP under torchrun.

As torchtitan lays it out: the edge (`train_from_config`: data listed once, process group joined),
set-up and restore (training.step: `build_trainer`, `restore`), one `train_step` per global batch
(training.step), logging (`LogWindow`, `_log_window`) and saving (`_save`) as separate pieces, and
`train` running them in order.

What makes a resumed run repeat an uninterrupted one step for step:
- the lr is a function of the step (training.optim.lr_at);
- prefix lengths of step k are a function of (seed, k), sliced per rank and micro-batch
  (training.step), so they depend neither on history nor on the world size or the accumulation;
- the data stream is positioned by the checkpoint (training.data: exact on the same world size,
  the unread work re-split deterministically on another one);
- model and optimizer come back from the DCP checkpoint, resharded to this world (training.checkpoint).

The hot loop does not wait for the device: batches arrive pinned (uint8) and are copied with
non_blocking, normalised (and on GPU colour-jittered) on the device; prefix lengths are drawn on the
host and copied pinned; loss, gradient norm and the non-finite check stay on the device until a log
or checkpoint step.

Each log line (and metrics.jsonl row) also gives the share of the window's wall time the loop spent
blocked on the data loader: host time in next(loader) plus the (non_blocking) host->device copy call,
over the window's wall time, timed with perf_counter alone (no device sync of its own; the log step's
sync closes the window). Like torchtitan's data-loading time it is host time: while the host runs
ahead of the device a slow batch can hide behind queued work, so a high share means the loader
starves the device, a low one that it does not.

Non-finite loss or gradient norm: the run stops with an error naming the first such step, at the
next log or checkpoint step (where the host reads the device anyway), before anything is saved: the
latest checkpoint holds finite weights from before that step. (Skipping steps instead would hide a
diverging run.)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from shared import fsio
from shared.atomic import atomic_dir
from shared.config.root import OpenAIMConfig
from shared.config.training import TrainingConfig
from shared.errors import InputError, OpenAIMError
from shared.progress import progress_bar
from shared.torchrun import barrier, broadcast_from_rank0, torchrun_stage
from training import checkpoint as ck
from training import distributed as dd
from training.augment import to_model_input
from training.data import ImageNetIndex, build_loader, global_imagenet_count
from training.metrics import MetricsLog, mfu, peak_flops, plot_loss
from training.model.flops import flops_per_image
from training.shards import StringTable, curated_shard_list, imagenet_sources, resplit_positions
from training.step import Trainer, batch_plan, build_trainer, restore, train_step

# Versioned by its step: bump VERSION in openaim/steps/train.py when this changes the step's results.

log = logging.getLogger("openaim.training")


class TrainingDivergedError(OpenAIMError):
    """A non-finite loss or gradient: the run stops (exit code 3) before saving anything after it."""

    exit_code = 3


def _set_aside_previous_run(out: Path) -> None:
    """--no-resume keeps an earlier run's files under previous-<time>/ instead of deleting them."""
    names = [n for n in ("checkpoints", "final", "metrics.jsonl", "loss.png") if (out / n).exists()]
    if not names:
        return
    keep = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(out / name, keep / name)
    log.info("--no-resume: moved the earlier run's %s to %s", ", ".join(names), keep)


def _final_from(out: Path, ckpt_dir: str) -> Path:
    """final/ = the consolidated weights of the last checkpoint (a local folder or a URL)."""
    final = out / "final"
    if not fsio.isfile(fsio.join(ckpt_dir, ck.MODEL_FILE)):
        raise InputError(f"{ckpt_dir} has no consolidated weights ({ck.MODEL_FILE}) to make final/ from")
    with atomic_dir(final) as tmp:
        for name in (ck.MODEL_FILE, ck.CONFIG_FILE):
            fsio.download(fsio.join(ckpt_dir, name), tmp / name)
        if fsio.isdir(fsio.join(ckpt_dir, ck.MLAIM_DIR)):  # absent in checkpoints before mlaim/ existed
            fsio.download(fsio.join(ckpt_dir, ck.MLAIM_DIR), tmp / ck.MLAIM_DIR)
        (tmp / ck.COMPLETE).write_text("ok\n")
    return final


def train_from_config(cfg: OpenAIMConfig, resume: bool = True) -> Path:
    """Train `cfg.training` under `cfg.training_dir`; returns the final checkpoint dir.

    Resumes from the latest complete checkpoint there unless `resume` is False.
    """
    tcfg = cfg.training
    shards = [cfg.expand_path(p) for p in tcfg.data.shards] or [str(cfg.curation_dir / "shards" / "*.tar")]
    imagenet = [cfg.expand_path(p) for p in tcfg.data.imagenet]  # image folders or shard patterns
    with torchrun_stage(timeout=timedelta(seconds=tcfg.timeouts.startup_s),
                        timeouts_hint=dd.timeouts_hint(tcfg.timeouts)):
        info = dd.init_distributed(tcfg.parallel, tcfg.timeouts.startup_s)
        curated, imagenet = _list_data(tcfg, shards, imagenet, info)
        return train(tcfg, Path(cfg.training_dir), curated, imagenet, info, resume)


def _list_data(tcfg: TrainingConfig, shards: list[str], imagenet: list[str],
               info: dd.DistInfo) -> tuple[StringTable, StringTable | ImageNetIndex | None]:
    """Rank 0 lists the data once (a missing shard, or none, is one error line on every rank) and
    broadcasts it: shard lists as `StringTable`s, an image folder as its `ImageNetIndex`."""
    listed: dict = {}
    if info.is_main:
        try:
            n_in = global_imagenet_count(tcfg.global_batch_size, tuple(tcfg.data.mix), bool(imagenet))
            curated = StringTable(curated_shard_list(shards) if n_in < tcfg.global_batch_size else [])
            if not n_in:
                listed = {"curated": curated, "imagenet": None}
            elif all(Path(p).is_dir() for p in imagenet):
                listed = {"curated": curated, "imagenet": ImageNetIndex(imagenet, tcfg.seed)}
            else:
                listed = {"curated": curated, "imagenet": StringTable(imagenet_sources(imagenet))}
        except OpenAIMError as exc:
            listed = {"error": str(exc)}
    listed = broadcast_from_rank0(listed)
    if "error" in listed:
        raise InputError(listed["error"])
    return listed["curated"], listed["imagenet"]


def _decide_resume(tcfg: TrainingConfig, out: Path, resume: bool) -> dict:
    """Rank 0's view of the run dir: where to resume from (and its state), or why not."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = tcfg.checkpoint_root or out
    ck.remove_partial(out)
    ck.remove_partial(ckpt_root)
    latest = ck.latest_checkpoint(ckpt_root)
    if latest is not None and resume:
        diff = ck.shape_difference(ck.read_model_config(latest), tcfg.model)
        if diff:
            return {"error": f"{latest} is a checkpoint of another model ({diff}); use --no-resume or "
                             "another workdir"}
        return {"resume_dir": str(latest), "state": ck.read_state(latest)}
    if latest is not None and tcfg.checkpoint_root:  # nothing to move aside: another folder or a bucket
        return {"error": f"--no-resume: {tcfg.checkpoint_root} holds checkpoints of an earlier run "
                         f"(latest {latest}); remove them or set another training.checkpoint_root"}
    if latest is not None or (out / "final").exists():
        _set_aside_previous_run(out)
    return {"resume_dir": None, "state": None}


class LogWindow:
    """The open log window: the steps since the last metrics line, their summed loss and the first
    non-finite step (device tensors, read only at log and checkpoint steps), wall time and data wait."""

    def __init__(self, device: torch.device, saved: dict | None):
        self.loss_sum = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.steps, self.start, self.data_wait = 0, time.perf_counter(), 0.0
        if saved is not None:  # a resumed run logs the same means as an uninterrupted one
            self.loss_sum += saved["loss_sum"]
            self.steps = int(saved["steps"])

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.first_bad = torch.where(finite | (self.first_bad >= 0), self.first_bad,
                                     torch.full_like(self.first_bad, step))
        self.loss_sum += loss
        self.steps += 1

    def check_finite(self, total_steps: int) -> None:
        bad = int(dd.all_reduce_max(self.first_bad))
        if bad >= 0:
            raise TrainingDivergedError(
                f"non-finite loss or gradient norm at step {bad + 1} (of {total_steps}); nothing was saved "
                "after it: lower training.optim.lr or check the data")

    def saved(self) -> dict:
        return {"loss_sum": float(dd.all_reduce_mean(self.loss_sum)), "steps": self.steps}

    def close(self) -> tuple[float, float, float]:
        """(mean loss over ranks and steps, elapsed s, share of it spent waiting for data); reopens."""
        mean_loss = float(dd.all_reduce_mean(self.loss_sum)) / self.steps
        elapsed = time.perf_counter() - self.start
        wait_share = min(self.data_wait / max(elapsed, 1e-9), 1.0)
        self.loss_sum.zero_()
        self.steps, self.start, self.data_wait = 0, time.perf_counter(), 0.0
        return mean_loss, elapsed, wait_share


@dataclass
class DataState:
    """This rank's data stream state: reader positions per stream and the bad-sample count."""

    positions: list[dict]
    num_streams: int
    bad_samples: int


def _data_state(tcfg: TrainingConfig, state: dict | None, info: dd.DistInfo) -> DataState:
    """Reader positions from the checkpoint (re-split when the world size or workers changed)."""
    num_streams = max(1, tcfg.data.num_workers)
    saved = state["data"] if state else None
    if saved and (saved["world_size"], saved["num_streams"]) != (info.world_size, num_streams):
        log.warning("world size or workers changed since the checkpoint (%d x %d -> %d x %d): the old "
                    "readers' unread shards are dealt to the new ones", saved["world_size"],
                    saved["num_streams"], info.world_size, num_streams)
    positions = resplit_positions(saved["positions"] if saved else None, info.world_size, num_streams,
                                  ["curated", "imagenet"])[info.rank]
    return DataState(positions, num_streams, int(saved.get("bad_samples", 0)) if saved else 0)


def _save(writer: ck.CheckpointWriter, trainer: Trainer, tcfg: TrainingConfig, info: dd.DistInfo,
          window: LogWindow, data: DataState, step_done: int, keep_steps: set[int]) -> None:
    """A resumable checkpoint after `step_done` (a collective): weights, optimizer, per-rank RNG and
    data positions, the open log window."""
    window.check_finite(tcfg.steps)
    saved_window = window.saved()
    rngs = dd.all_gather_object(ck.rng_state())
    all_positions = dd.all_gather_object(data.positions)
    train_state = {
        "step": step_done, "rng": rngs, "metrics_window": saved_window,
        "data": {"world_size": info.world_size, "num_streams": data.num_streams, "positions": all_positions,
                 "global_batch_size": tcfg.global_batch_size, "bad_samples": data.bad_samples},
    }
    writer.save(step_done, trainer.aim, trainer.optimizer, train_state if info.is_main else None,
                export_weights=step_done == tcfg.steps or step_done in keep_steps)


def _log_window(window: LogWindow, tcfg: TrainingConfig, info: dd.DistInfo, done: int, lr: float,
                grad_norm: torch.Tensor, bad_samples: int, metrics: MetricsLog | None, flops: float,
                peak_device: float | None) -> str:
    """Close the log window after step `done`: a metrics.jsonl row (rank 0) and a log line; returns
    the progress bar's description."""
    window.check_finite(tcfg.steps)
    steps = window.steps
    mean_loss, elapsed, wait_share = window.close()
    ips = steps * tcfg.global_batch_size / max(elapsed, 1e-9)
    eta = (tcfg.steps - done) * elapsed / steps
    row_mfu = mfu(flops, ips, peak_device, info.world_size)
    if metrics is not None:
        metrics.write({"step": done, "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                       "images_per_s": ips, "mfu": row_mfu, "data_wait_share": wait_share,
                       "bad_samples": bad_samples, "time": time.time()})
    log.info("step %d/%d  loss %.4f  %.1f img/s%s  data wait %.1f%%  ETA %s", done, tcfg.steps,
             mean_loss, ips, f"  MFU {row_mfu:.1%}" if row_mfu is not None else "",
             100 * wait_share, timedelta(seconds=round(eta)))
    return f"train  loss {mean_loss:.4f}  {ips:.0f} img/s"


def train(tcfg: TrainingConfig, out: Path, curated, imagenet, info: dd.DistInfo, resume: bool) -> Path:
    """Set up, restore, then `train_step` per global batch with logging and checkpoints; final/ at the end."""
    rank, device = info.rank, info.device
    plan = batch_plan(tcfg, info)

    # Rank 0 decides whether and where to resume, and every rank follows (one view of the filesystem).
    decision = None
    if info.is_main:
        try:
            decision = _decide_resume(tcfg, out, resume)
        except OpenAIMError as exc:
            decision = {"error": str(exc)}
    decision = broadcast_from_rank0(decision)
    if decision.get("error"):
        raise InputError(decision["error"])
    resume_dir = decision["resume_dir"]  # a path or a URL
    state = decision["state"]
    start_step = int(state["step"]) if state else 0
    if start_step >= tcfg.steps:
        final = out / "final"
        if info.is_main and not (final / ck.COMPLETE).is_file():
            _final_from(out, resume_dir)
        barrier()
        log.info("already trained: %s is at step %d of %d", resume_dir, start_step, tcfg.steps)
        return final
    if resume_dir is not None:
        log.info("resuming from %s (step %d of %d)", resume_dir, start_step, tcfg.steps)

    trainer = build_trainer(tcfg, info, fresh=resume_dir is None)
    if resume_dir is not None:
        restore(trainer, resume_dir, state, rank)

    data = _data_state(tcfg, state, info)
    loader = build_loader(tcfg, curated, imagenet, rank, info.world_size, start_step, data.positions,
                          pin_memory=device.type == "cuda")

    metrics = MetricsLog(out / "metrics.jsonl", resume_step=start_step) if info.is_main else None
    # A bar on rank 0's terminal; no progress log lines: the loop logs its own (loss, img/s, ETA) below.
    progress = progress_bar(transient=False, disable=not info.is_main, plain_log=False)
    progress_task = progress.add_task("train", total=tcfg.steps, completed=start_step)
    progress.start()
    flops = float(flops_per_image(tcfg.model, include_head=True))
    peak_device = peak_flops(device)
    writer = ck.CheckpointWriter(tcfg.checkpoint_root or out, tcfg.model, keep_last=2,
                                 keep_steps=list(tcfg.keep_checkpoints),
                                 async_save=tcfg.async_checkpoint and info.world_size > 1)
    keep_steps = set(tcfg.keep_checkpoints)
    timeouts = dd.PhaseTimeouts(tcfg.timeouts, trainer.wrapped.layout.mesh, [writer.group])
    window = LogWindow(device, state["metrics_window"] if state is not None else None)

    data_iter = iter(loader)
    try:
        for step in range(start_step, tcfg.steps):
            fetch_start = time.perf_counter()
            batch = next(data_iter)
            if batch["step"] != step:
                raise RuntimeError(f"data stream out of order: got step {batch['step']}, expected {step}")
            data.positions[batch["stream"]] = batch["position"]
            data.bad_samples += batch["bad"]
            raw = batch["images"].to(device, non_blocking=True)  # [B, 3, S, S] uint8
            window.data_wait += time.perf_counter() - fetch_start
            # [B, 3, S, S] float; the jitter table stays on the host (to_model_input groups it there)
            images = to_model_input(raw, batch["jitter"])

            loss, grad_norm, lr = train_step(trainer, tcfg, plan, images, step)
            window.add(step, loss, grad_norm)
            done = step + 1
            timeouts.first_step_done(device)
            if done % tcfg.log_every == 0 or done == tcfg.steps:
                description = _log_window(window, tcfg, info, done, lr, grad_norm, data.bad_samples, metrics,
                                          flops, peak_device)
                progress.update(progress_task, completed=done, description=description)
            else:
                progress.update(progress_task, completed=done)
            if done % tcfg.checkpoint_every == 0 or done == tcfg.steps or done in keep_steps:
                with timeouts.io():
                    _save(writer, trainer, tcfg, info, window, data, done, keep_steps)
        timeouts.steps_over()
        writer.close()
    finally:
        progress.stop()
        if metrics is not None:
            metrics.close()

    final = out / "final"
    if info.is_main:
        _final_from(out, ck.step_dir(tcfg.checkpoint_root or out, tcfg.steps))
        plot_loss(out / "metrics.jsonl", out / "loss.png")
        if data.bad_samples:
            log.warning("skipped %d unreadable shards/samples", data.bad_samples)
        log.info("trained %d steps; final weights in %s", tcfg.steps, final)
    barrier()
    return final
