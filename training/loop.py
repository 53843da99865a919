"""The training loop of `openaim train`: resumable, exact on CPU, DDP / FSDP2 / HSDP under torchrun.

What makes a resumed run repeat an uninterrupted one step for step:
- the lr is a function of the step (training.optim.lr_at);
- prefix lengths of step k are drawn for the whole *global* batch from a generator seeded by
  (seed, k) and each rank (and micro-batch) takes its slice, so they depend neither on history nor
  on the world size or the accumulation;
- the data stream is positioned by the checkpoint (training.data: exact on the same world size,
  re-split deterministically on another one);
- model and optimizer come back from the DCP checkpoint, resharded to this world (training.checkpoint).

One optimizer step per global batch: each rank's G / world images run as micro-batches of
`micro_batch_size` with gradient accumulation. Each micro-batch's loss is weighted by its share of
the global batch's counted (post-prefix) patches, times the world size (DDP/FSDP average gradients
over ranks), so the accumulated gradient is the gradient of the global batch's loss (a mean over
counted patches) for any world size and micro-batch size.

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
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from shared.atomic import atomic_dir
from shared.config.training import TrainingConfig
from shared.errors import ConfigError, InputError, OpenAIMError
from shared.progress import progress_bar
from shared.torchrun import barrier, broadcast_from_rank0, torchrun_stage
from training import checkpoint as ck
from training import distributed as dd
from training.augment import to_model_input
from training.data import (
    build_loader,
    curated_shard_list,
    global_imagenet_count,
    resplit_positions,
)
from training.metrics import MetricsLog, mfu, peak_flops, plot_loss
from training.model.aim import build_aim
from training.model.flops import flops_per_image
from training.model.prefix import sample_prefix_lengths
from training.optim import build_optimizer, lr_at, peak_lr, set_lr

# Bump when the trained weights (the whole training/ package) change for the same config and inputs: this
# step and every step after it rerun (shared/stage_cache.py). Edits that change no result (comments,
# refactors) need no bump.
VERSION = 3  # 2: colour-jitter factors as float32 from the per-image jitter table; 3: patch bias init (l3m's)

log = logging.getLogger("openaim.training")


class TrainingDivergedError(OpenAIMError):
    """A non-finite loss or gradient: the run stops (exit code 3) before saving anything after it."""

    exit_code = 3


def prefix_generator_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, 3, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_prefix_lengths(seed: int, step: int, global_batch: int, num_patches: int) -> torch.Tensor:
    """Prefix lengths [global_batch] of step `step`, the same on every rank and world size."""
    gen = torch.Generator().manual_seed(prefix_generator_seed(seed, step))
    return sample_prefix_lengths(global_batch, num_patches, gen)


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


def _final_from(out: Path, ckpt_dir: Path) -> Path:
    """final/ = the consolidated weights of the last checkpoint."""
    final = out / "final"
    if not (ckpt_dir / ck.MODEL_FILE).is_file():
        raise InputError(f"{ckpt_dir} has no consolidated weights ({ck.MODEL_FILE}) to make final/ from")
    with atomic_dir(final) as tmp:
        for name in (ck.MODEL_FILE, ck.CONFIG_FILE):
            shutil.copy2(ckpt_dir / name, tmp / name)
        if (ckpt_dir / ck.MLAIM_DIR).is_dir():  # absent in checkpoints written before mlaim/ existed
            shutil.copytree(ckpt_dir / ck.MLAIM_DIR, tmp / ck.MLAIM_DIR)
        (tmp / ck.COMPLETE).write_text("ok\n")
    return final


def train_from_config(cfg, resume: bool = True) -> Path:
    """Train `cfg.training` under `cfg.training_dir`; returns the final checkpoint dir.

    Resumes from the latest complete checkpoint there unless `resume` is False.
    """
    tcfg = cfg.training
    n_in = global_imagenet_count(tcfg.global_batch_size, tuple(tcfg.data.mix), bool(tcfg.data.imagenet))
    # Fail now, in one line, when there is nothing to read.
    shards = [cfg.expand_path(p) for p in tcfg.data.shards] or [str(cfg.curation_dir / "shards" / "*.tar")]
    curated = curated_shard_list(shards) if n_in < tcfg.global_batch_size else []
    imagenet = [cfg.expand_path(p) for p in tcfg.data.imagenet]  # image folders or shard patterns
    with torchrun_stage(timeout=timedelta(seconds=tcfg.timeouts.startup_s),
                        timeouts_hint=dd.timeouts_hint(tcfg.timeouts)):
        info = dd.init_distributed(tcfg.parallel, tcfg.timeouts.startup_s)
        return train(tcfg, Path(cfg.training_dir), curated, imagenet, info, resume)


def _decide_resume(tcfg: TrainingConfig, out: Path, resume: bool) -> dict:
    """Rank 0's view of the run dir: where to resume from (and its state), or why not."""
    out.mkdir(parents=True, exist_ok=True)
    ck.remove_partial(out)
    latest = ck.latest_checkpoint(out)
    if latest is not None and resume:
        diff = ck.shape_difference(ck.read_model_config(latest), tcfg.model)
        if diff:
            return {"error": f"{latest} is a checkpoint of another model ({diff}); use --no-resume or "
                             "another workdir"}
        return {"resume_dir": str(latest), "state": ck.read_state(latest)}
    if latest is not None or (out / "final").exists():
        _set_aside_previous_run(out)
    return {"resume_dir": None, "state": None}


def train(tcfg: TrainingConfig, out: Path, curated: list[str], imagenet: list[str], info: dd.DistInfo,
          resume: bool) -> Path:
    world, rank, device = info.world_size, info.rank, info.device
    if tcfg.global_batch_size % world:
        raise ConfigError(f"training.global_batch_size {tcfg.global_batch_size} is not divisible by "
                          f"{world} processes")
    local_batch = tcfg.global_batch_size // world
    micro = tcfg.micro_batch_size or local_batch
    if local_batch % micro:
        raise ConfigError(f"training.micro_batch_size {micro} does not divide the {local_batch} images per "
                          f"process (global batch {tcfg.global_batch_size} over {world})")
    accum = local_batch // micro
    mcfg = tcfg.model
    num_patches = mcfg.num_patches

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
    resume_dir = Path(decision["resume_dir"]) if decision["resume_dir"] else None
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

    # Model: the seeded init of a single process, then activation checkpointing, compile, sharding,
    # then (on resume) the checkpoint's weights. Under FSDP/HSDP the model is built on the meta device;
    # a fresh run materialises rank 0's full weights and scatters them shard by shard.
    mode = dd.resolve_parallel(tcfg.parallel, info)
    dtype = dd.resolve_precision(tcfg.precision, device)
    sharded = mode in ("fsdp", "hsdp")
    full_state = None
    if sharded:
        if info.is_main and resume_dir is None:
            torch.manual_seed(tcfg.seed)
            full_state = build_aim(mcfg, device="cpu").state_dict()
        aim = build_aim(mcfg, device="meta")
    else:
        torch.manual_seed(tcfg.seed)
        aim = build_aim(mcfg, device=device)
    dd.apply_activation_checkpointing(aim, tcfg.activation_checkpointing)
    if tcfg.compile:
        dd.apply_compile(aim)
    mesh = dd.build_mesh(mode, info, tcfg.fsdp)
    wrapped = dd.wrap_model(aim, mode, info, dtype, tcfg.fsdp, mesh)
    if sharded:
        if resume_dir is None:
            dd.materialize_from_rank0(aim, full_state, device)
        else:
            aim.to_empty(device=device)
        del full_state
    aim.train()
    optimizer = build_optimizer(aim, tcfg.optim, tcfg.global_batch_size, fused=device.type == "cuda")
    peak = peak_lr(tcfg.optim, tcfg.global_batch_size)
    if resume_dir is not None:
        ck.load_resumable(resume_dir, aim, optimizer)
        ck.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    # Data, positioned by the checkpoint (re-split when the world size or workers changed).
    num_streams = max(1, tcfg.data.num_workers)
    saved = state["data"] if state else None
    if saved and (saved["world_size"], saved["num_streams"]) != (world, num_streams):
        log.warning("world size or workers changed since the checkpoint (%d x %d -> %d x %d): the data "
                    "readers restart after every shard the old ones opened", saved["world_size"],
                    saved["num_streams"], world, num_streams)
    positions = resplit_positions(saved["positions"] if saved else None, world, num_streams,
                                  ["curated", "imagenet"])[rank]
    loader = build_loader(tcfg, curated, imagenet, rank, world, start_step, positions,
                          pin_memory=device.type == "cuda")
    bad_samples = int(saved.get("bad_samples", 0)) if saved else 0

    metrics = MetricsLog(out / "metrics.jsonl", resume_step=start_step) if info.is_main else None
    # A bar on rank 0's terminal; no progress log lines: the loop logs its own (loss, img/s, ETA) below.
    progress = progress_bar(transient=False, disable=not info.is_main, plain_log=False)
    progress_task = progress.add_task("train", total=tcfg.steps, completed=start_step)
    progress.start()
    flops = float(flops_per_image(mcfg, include_head=True))
    peak_device = peak_flops(device)
    writer = ck.CheckpointWriter(out, mcfg, keep_last=2, keep_steps=list(tcfg.keep_checkpoints),
                                 async_save=tcfg.async_checkpoint and world > 1)
    keep_steps = set(tcfg.keep_checkpoints)
    timeouts = dd.PhaseTimeouts(tcfg.timeouts, mesh, [writer.group])

    loss_sum = torch.zeros((), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    steps_in_window, window_start = 0, time.perf_counter()
    data_wait = 0.0  # seconds blocked on the loader in the open log window
    if state is not None:
        loss_sum += state["metrics_window"]["loss_sum"]
        steps_in_window = int(state["metrics_window"]["steps"])

    def check_finite() -> None:
        bad = int(dd.all_reduce_max(first_bad))
        if bad >= 0:
            raise TrainingDivergedError(
                f"non-finite loss or gradient norm at step {bad + 1} (of {tcfg.steps}); nothing was saved "
                "after it: lower training.optim.lr or check the data")

    def save(step_done: int) -> None:
        with timeouts.io():
            _save(step_done)

    def _save(step_done: int) -> None:
        check_finite()
        # The open log window (steps since the last metrics line), so a resumed run logs the same means.
        window = {"loss_sum": float(dd.all_reduce_mean(loss_sum)), "steps": steps_in_window}
        rngs = dd.all_gather_object(ck.rng_state())
        all_positions = dd.all_gather_object(positions)
        train_state = {
            "step": step_done, "rng": rngs, "metrics_window": window,
            "data": {"world_size": world, "num_streams": num_streams, "positions": all_positions,
                     "global_batch_size": tcfg.global_batch_size, "bad_samples": bad_samples},
        }
        writer.save(step_done, aim, optimizer, train_state if info.is_main else None,
                    export_weights=step_done == tcfg.steps or step_done in keep_steps)

    data_iter = iter(loader)
    try:
        for step in range(start_step, tcfg.steps):
            fetch_start = time.perf_counter()
            batch = next(data_iter)
            if batch["step"] != step:
                raise RuntimeError(f"data stream out of order: got step {batch['step']}, expected {step}")
            positions[batch["stream"]] = batch["position"]
            bad_samples += batch["bad"]
            raw = batch["images"].to(device, non_blocking=True)  # [B, 3, S, S] uint8
            data_wait += time.perf_counter() - fetch_start
            # [B, 3, S, S] float; the jitter table stays on the host (to_model_input groups it there)
            images = to_model_input(raw, batch["jitter"])

            prefix_all = global_prefix_lengths(tcfg.seed, step, tcfg.global_batch_size, num_patches)  # [GB]
            counted_all = float((num_patches - prefix_all).sum())  # targets at index >= prefix, all ranks
            lr = lr_at(step, tcfg.steps, peak, tcfg.optim)
            set_lr(optimizer, lr)
            step_loss = torch.zeros((), device=device)
            for m in range(accum):
                lo = rank * local_batch + m * micro
                prefix = prefix_all[lo:lo + micro]  # [micro]
                weight = float((num_patches - prefix).sum()) * world / counted_all
                if device.type == "cuda":
                    prefix = prefix.pin_memory().to(device, non_blocking=True)
                with wrapped.sync_context(last_micro_batch=m == accum - 1):
                    with dd.autocast_context(device, dtype):
                        loss = wrapped.loss_fn(images[m * micro:(m + 1) * micro], prefix)
                    weighted = loss.float() * weight
                    weighted.backward()
                step_loss += weighted.detach()
            grad_norm = dd.clip_grad_norm(aim, tcfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            finite = torch.isfinite(step_loss) & torch.isfinite(grad_norm)
            first_bad = torch.where(finite | (first_bad >= 0), first_bad, torch.full_like(first_bad, step))
            loss_sum += step_loss
            steps_in_window += 1
            done = step + 1
            timeouts.first_step_done(device)

            if done % tcfg.log_every == 0 or done == tcfg.steps:
                check_finite()
                mean_loss = float(dd.all_reduce_mean(loss_sum)) / steps_in_window
                elapsed = time.perf_counter() - window_start
                ips = steps_in_window * tcfg.global_batch_size / max(elapsed, 1e-9)
                eta = (tcfg.steps - done) * elapsed / steps_in_window
                row_mfu = mfu(flops, ips, peak_device, world)
                wait_share = min(data_wait / max(elapsed, 1e-9), 1.0)
                if metrics is not None:
                    metrics.write({"step": done, "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                                   "images_per_s": ips, "mfu": row_mfu, "data_wait_share": wait_share,
                                   "bad_samples": bad_samples, "time": time.time()})
                log.info("step %d/%d  loss %.4f  %.1f img/s%s  data wait %.1f%%  ETA %s", done, tcfg.steps,
                         mean_loss, ips, f"  MFU {row_mfu:.1%}" if row_mfu is not None else "",
                         100 * wait_share, timedelta(seconds=round(eta)))
                progress.update(progress_task, completed=done,
                                description=f"train  loss {mean_loss:.4f}  {ips:.0f} img/s")
                loss_sum.zero_()
                steps_in_window, window_start, data_wait = 0, time.perf_counter(), 0.0
            else:
                progress.update(progress_task, completed=done)
            if done % tcfg.checkpoint_every == 0 or done == tcfg.steps or done in keep_steps:
                save(done)
        timeouts.steps_over()
        writer.close()
    finally:
        progress.stop()
        if metrics is not None:
            metrics.close()

    final = out / "final"
    if info.is_main:
        _final_from(out, ck.step_dir(out, tcfg.steps))
        plot_loss(out / "metrics.jsonl", out / "loss.png")
        if bad_samples:
            log.warning("skipped %d unreadable shards/samples", bad_samples)
        log.info("trained %d steps; final weights in %s", tcfg.steps, final)
    barrier()
    return final
