"""AdamW with the AIM recipe's parameter groups and its warm-up + cosine learning rate (shared.schedule).

The schedule is a pure function of the step (no hidden state), so a resumed run sets exactly the
learning rate an uninterrupted run would have used.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config.training import OptimConfig
from shared.schedule import warmup_cosine


def peak_lr(optim_cfg: OptimConfig, global_batch_size: int) -> float:
    """The configured lr, scaled linearly with the batch when `lr_reference_batch` is set."""
    if optim_cfg.lr_reference_batch:
        return optim_cfg.lr * global_batch_size / optim_cfg.lr_reference_batch
    return optim_cfg.lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices decay; biases, norm weights and position embeddings do not.

    A parameter is exempt when it has at most one dimension (biases, LayerNorm weights) or when the
    model names it in `no_weight_decay_names()` (e.g. a learnt position embedding).
    """
    exempt_names = set(model.no_weight_decay_names()) if hasattr(model, "no_weight_decay_names") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in exempt_names:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig, global_batch_size: int,
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW over `param_groups`; `fused` (one kernel for all parameters) is what CUDA runs use."""
    lr = peak_lr(optim_cfg, global_batch_size)
    return torch.optim.AdamW(param_groups(model, optim_cfg.weight_decay), lr=lr,
                             betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, fused=fused or None)


def warmup_steps(optim_cfg: OptimConfig, total_steps: int) -> int:
    return round(optim_cfg.warmup_fraction * total_steps)


def lr_at(step: int, total_steps: int, peak: float, optim_cfg: OptimConfig) -> float:
    """The recipe's lr at `step`: warm-up from `warmup_start_lr` over `warmup_fraction`, then cosine."""
    warmup = warmup_steps(optim_cfg, total_steps)
    return warmup_cosine(step, total_steps, warmup, peak, optim_cfg.warmup_start_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
