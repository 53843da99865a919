"""Optimizer recipe: parameter groups without decay on biases/norms/pos-embed, warm-up + cosine."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from shared.config.training import OptimConfig
from training.optim import build_optimizer, lr_at, peak_lr, warmup_steps


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 8))

    def no_weight_decay_names(self):
        return {"pos_embed"}


def test_param_groups_exclude_biases_norms_and_pos_embed():
    model = _Toy()
    opt = build_optimizer(model, OptimConfig(), global_batch_size=64)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.proj.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.proj.bias), id(model.norm.weight),
                                                   id(model.norm.bias), id(model.pos_embed)}
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_warmup_then_cosine_to_zero():
    cfg = OptimConfig()
    total = 1000
    warm = warmup_steps(cfg, total)
    assert warm == 25
    assert lr_at(0, total, 1e-3, cfg) == pytest.approx(1e-6)
    assert lr_at(warm // 2, total, 1e-3, cfg) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 12 / 25)
    assert lr_at(warm, total, 1e-3, cfg) == pytest.approx(1e-3)
    mid = warm + (total - warm) // 2
    assert lr_at(mid, total, 1e-3, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 487 / 975)))
    assert lr_at(total, total, 1e-3, cfg) == pytest.approx(0.0, abs=1e-12)
    lrs = [lr_at(s, total, 1e-3, cfg) for s in range(total)]
    assert all(a <= b for a, b in itertools.pairwise(lrs[:warm + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[warm:]))


def test_linear_lr_scaling_when_configured():
    assert peak_lr(OptimConfig(), 64) == 1e-3
    assert peak_lr(OptimConfig(lr_reference_batch=4096), 1024) == pytest.approx(2.5e-4)
