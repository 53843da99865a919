"""The training loop of `openaim train`: resumable, exact on CPU, DDP/FSDP2 under torchrun.

What makes a resumed run repeat an uninterrupted one step for step:
- the lr is a function of the step (training.optim.lr_at);
- prefix lengths of step k are drawn for the whole *global* batch from a generator seeded by
  (seed, k) and each rank takes its slice, so they depend neither on history nor on the world size;
- the data stream is positioned by the checkpoint (see training.data);
- optimizer moments and RNG states are restored from state.pt.
Each rank's loss is weighted by its share of the counted (post-prefix) patches, so that DDP's gradient
mean equals the gradient of the global batch's loss (the loss is a mean over counted patches).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from shared.errors import ConfigError, InputError

log = logging.getLogger("openaim.training")


def prefix_generator_seed(seed: int, step: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, 3, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def global_prefix_lengths(seed: int, step: int, global_batch: int, num_patches: int):
    """Prefix lengths [global_batch] of step `step`, the same on every rank and world size."""
    import torch

    from training.model.prefix import sample_prefix_lengths

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
    from shared.atomic import atomic_dir
    from training.checkpoint import COMPLETE, CONFIG_FILE, MODEL_FILE

    final = out / "final"
    with atomic_dir(final) as tmp:
        shutil.copy2(ckpt_dir / MODEL_FILE, tmp / MODEL_FILE)
        shutil.copy2(ckpt_dir / CONFIG_FILE, tmp / CONFIG_FILE)
        (tmp / COMPLETE).write_text("ok\n")
    return final


def train_from_config(cfg, resume: bool = True) -> Path:
    """Train `cfg.training` under `cfg.training_dir`; returns the final checkpoint dir.

    Resumes from the latest complete checkpoint there unless `resume` is False.
    """
    from training.distributed import init_distributed, shutdown

    info = init_distributed()
    try:
        return _train(cfg, info, resume)
    finally:
        shutdown()


def _train(cfg, info, resume: bool) -> Path:
    import torch

    from training import checkpoint as ck
    from training import distributed as dd
    from training.data import build_loader, curated_shard_list, mix_counts
    from training.metrics import MetricsLog, Progress, mfu, peak_flops, plot_loss
    from training.model.aim import build_aim
    from training.optim import build_optimizer, lr_at, peak_lr, set_lr

    tcfg, mcfg = cfg.training, cfg.training.model
    out = Path(cfg.training_dir)
    world, rank = info.world_size, info.rank
    if tcfg.global_batch_size % world:
        raise ConfigError(f"training.global_batch_size {tcfg.global_batch_size} is not divisible by "
                          f"{world} processes")
    local_batch = tcfg.global_batch_size // world
    n_cur, _ = mix_counts(local_batch, tuple(tcfg.data.mix), bool(tcfg.data.imagenet))
    if n_cur:
        curated_shard_list(cfg)  # fail now, in one line, when there is nothing to read

    # Which checkpoint to resume from; a checkpoint of a differently shaped model stops the run.
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ck.remove_partial(out)
    dd.barrier()
    latest = ck.latest_checkpoint(out)
    resume_dir = None
    if latest is not None and resume:
        diff = ck.shape_difference(ck.read_model_config(latest), mcfg)
        if diff:
            raise InputError(f"{latest} is a checkpoint of another model ({diff}); use --no-resume or "
                             "another workdir")
        resume_dir = latest
    elif latest is not None or (out / "final").exists():
        dd.barrier()
        if info.is_main:
            _set_aside_previous_run(out)
        dd.barrier()
    state = ck.read_state(resume_dir) if resume_dir else None
    start_step = int(state["step"]) if state else 0
    if start_step >= tcfg.steps:
        final = out / "final"
        if info.is_main and not (final / ck.COMPLETE).is_file():
            _final_from(out, resume_dir)
        dd.barrier()
        log.info("already trained: %s is at step %d of %d", resume_dir, start_step, tcfg.steps)
        return final
    if resume_dir is not None:
        log.info("resuming from %s (step %d of %d)", resume_dir, start_step, tcfg.steps)

    # Model: the same seeded init as a single process, weights from the checkpoint, then activation
    # checkpointing, compile, sharding. Under FSDP the model is built on the meta device and only
    # rank 0 materialises the full weights (host memory), which are then scattered shard by shard.
    mode = dd.resolve_parallel(tcfg.parallel, info)
    dtype = dd.resolve_precision(tcfg.precision, info.device)
    full_state = None
    if mode != "fsdp" or info.is_main:
        torch.manual_seed(tcfg.seed)
        build_device = "cpu" if mode == "fsdp" else info.device
        aim = build_aim(mcfg, device=build_device)
        if resume_dir is not None:
            aim.load_state_dict(ck.read_weights(resume_dir / ck.MODEL_FILE))
        full_state = aim.state_dict() if mode == "fsdp" else None
    if mode == "fsdp":
        aim = build_aim(mcfg, device="meta")
    if tcfg.activation_checkpointing:
        dd.apply_activation_checkpointing(aim)
    if tcfg.compile:
        dd.apply_compile(aim)
    loss_fn = dd.wrap_model(aim, mode, info, dtype)
    if mode == "fsdp":
        dd.materialize_from_rank0(aim, full_state, info.device)
        del full_state
    aim.train()
    optimizer = build_optimizer(aim, tcfg.optim, tcfg.global_batch_size)
    peak = peak_lr(tcfg.optim, tcfg.global_batch_size)

    positions = None
    num_streams = max(1, tcfg.data.num_workers)
    if state is not None:
        dd.load_optimizer_state(aim, optimizer, mode, state["optimizer"])
        ck.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        data_state = state["data"]
        if (data_state["world_size"], data_state["num_streams"], data_state["global_batch_size"]) == (
                world, num_streams, tcfg.global_batch_size):
            positions = data_state["positions"][rank]
        else:
            log.warning("world size, workers or batch changed since the checkpoint: the data stream restarts "
                        "at fresh positions (the run goes on, but not bit-identically)")

    loader, num_streams = build_loader(cfg, rank, world, local_batch, start_step, positions,
                                       pin_memory=info.device.type == "cuda")
    positions = [dict(p) for p in positions] if positions else [{} for _ in range(num_streams)]
    bad_samples = int(state["data"].get("bad_samples", 0)) if state else 0

    metrics = MetricsLog(out / "metrics.jsonl", resume_step=start_step) if info.is_main else None
    progress = Progress(tcfg.steps, start_step, enabled=info.is_main)
    try:
        from training.model.flops import flops_per_image

        flops = float(flops_per_image(mcfg))
    except Exception:  # noqa: BLE001 - MFU is a nicety
        flops = None
    peak_device = peak_flops(info.device)
    num_patches = mcfg.num_patches

    def save(step_done: int) -> None:
        # The open log window (steps since the last metrics line), so a resumed run logs the same means.
        window = {"loss_sum": float(dd.all_reduce_mean(loss_sum)), "steps": steps_in_window}
        model_state = dd.full_model_state(aim, mode)
        optim_state = dd.full_optimizer_state(aim, optimizer, mode)
        rngs = dd.all_gather_object(ck.rng_state())
        all_positions = dd.all_gather_object(positions)
        if info.is_main:
            ck.write_checkpoint(ck.step_dir(out, step_done), model_state, mcfg, {
                "step": step_done,
                "optimizer": optim_state,
                "scheduler": {"kind": "warmup_cosine", "step": step_done, "peak_lr": peak,
                              "total_steps": tcfg.steps},
                "rng": rngs,
                # Prefix lengths are drawn per step from a generator seeded by (seed, step); the model's
                # own generator (used only when no lengths are given) is kept for completeness.
                "prefix_generator": {"kind": "seeded per step", "seed": tcfg.seed,
                                     "model_generator": aim.prefix_generator.get_state()},
                "metrics_window": window,
                "data": {"world_size": world, "num_streams": num_streams, "positions": all_positions,
                         "global_batch_size": tcfg.global_batch_size, "bad_samples": bad_samples},
            })
            ck.prune_checkpoints(out, keep_last=2, keep_steps=list(tcfg.keep_checkpoints))
        dd.barrier()

    data_iter = iter(loader)
    loss_sum = torch.zeros((), device=info.device)
    steps_in_window, window_start = 0, time.perf_counter()
    if state is not None:
        loss_sum += state["metrics_window"]["loss_sum"]
        steps_in_window = int(state["metrics_window"]["steps"])
        aim.prefix_generator.set_state(state["prefix_generator"]["model_generator"])
    try:
        for step in range(start_step, tcfg.steps):
            batch = next(data_iter)
            if batch["step"] != step:
                raise RuntimeError(f"data stream out of order: got step {batch['step']}, expected {step}")
            positions[batch["stream"]] = batch["position"]
            bad_samples += int(batch["bad"])
            images = batch["images"].to(info.device, non_blocking=True)  # [B, 3, S, S]

            prefix_all = global_prefix_lengths(tcfg.seed, step, tcfg.global_batch_size, num_patches)  # [GB]
            prefix = prefix_all[rank * local_batch:(rank + 1) * local_batch]  # [B]
            # Targets at index >= prefix count: N - prefix of them per image.
            share = (num_patches - prefix).sum().double() * world / (num_patches - prefix_all).sum().double()

            lr = lr_at(step, tcfg.steps, peak, tcfg.optim)
            set_lr(optimizer, lr)
            with dd.autocast_context(mode, info.device, dtype):
                loss = loss_fn(images, prefix.to(info.device))
            weighted = loss.float() * float(share)
            weighted.backward()
            grad_norm = dd.clip_grad_norm(aim, tcfg.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += weighted.detach()
            steps_in_window += 1
            done = step + 1

            if done % tcfg.log_every == 0 or done == tcfg.steps:
                mean_loss = float(dd.all_reduce_mean(loss_sum)) / steps_in_window
                elapsed = time.perf_counter() - window_start
                ips = steps_in_window * tcfg.global_batch_size / max(elapsed, 1e-9)
                if metrics is not None:
                    metrics.write({"step": done, "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                                   "images_per_s": ips, "mfu": mfu(flops, ips, peak_device, world),
                                   "bad_samples": bad_samples, "time": time.time()})
                progress.update(done, f"loss {mean_loss:.4f}  {ips:.0f} img/s")
                loss_sum.zero_()
                steps_in_window, window_start = 0, time.perf_counter()
            else:
                progress.update(done)
            if done % tcfg.checkpoint_every == 0 or done == tcfg.steps:
                save(done)
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()

    final = out / "final"
    if info.is_main:
        _final_from(out, ck.step_dir(out, tcfg.steps))
        plot_loss(out / "metrics.jsonl", out / "loss.png")
        if bad_samples:
            log.warning("skipped %d unreadable shards/samples", bad_samples)
        log.info("trained %d steps; final weights in %s", tcfg.steps, final)
    dd.barrier()
    return final
