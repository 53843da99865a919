"""Train a grid of probes (learning rate x weight decay) together, pick the best on val, score it on test.

All K probes see the same feature batches in the same order: one forward and one backward over a
stacked module (``evaluation.probes.*Stack``) and one stacked AdamW step with a per-probe lr and
weight-decay vector. Deterministic given ``probe_cfg.seed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from evaluation.probes import build_probe_stack, decay_mask, stacked_cross_entropy
from shared.config.evaluation import ProbeConfig
from shared.schedule import warmup_cosine


@dataclass
class FeatureSet:
    """Frozen features of one split: feats[n, N, D] (float16 on disk, any float here), labels[n]."""

    feats: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def grid_settings(probe_cfg: ProbeConfig) -> list[tuple[float, float]]:
    """The (lr, weight_decay) pairs of the grid, lr-major."""
    return [(lr, wd) for lr in probe_cfg.lrs for wd in probe_cfg.weight_decays]


class StackedAdamW:
    """AdamW over parameters with a leading K dimension, each slice with its own lr and weight decay.

    (torch.optim.AdamW takes one lr per param group; a stacked tensor is one param, so we keep the
    per-probe vectors here and broadcast them.) Decoupled decay as in Loshchilov & Hutter.
    """

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], lrs: torch.Tensor,
                 weight_decays: torch.Tensor, decay: dict[str, bool], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for _, p in named_params]
        self.decay = [decay[n] for n, _ in named_params]
        self.lrs, self.wds = lrs.float(), weight_decays.float()
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, lr_scale: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v, decays in zip(self.params, self.m, self.v, self.decay, strict=True):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)  # broadcast [K] over the rest of the parameter
            lr = (self.lrs * lr_scale).view(shape)
            if decays:
                p.mul_(1 - lr * self.wds.view(shape))
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.sub_(lr * (m / c1) / ((v / c2).sqrt_() + self.eps))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def train_probe_grid(kind: str, train: FeatureSet, num_classes: int, num_heads: int, probe_cfg: ProbeConfig,
                     settings: list[tuple[float, float]] | None = None,
                     on_step: Callable[[int, int], None] | None = None) -> torch.nn.Module:
    """Train K = len(settings) probes of ``kind`` together; returns the stacked module in eval mode."""
    settings = settings if settings is not None else grid_settings(probe_cfg)
    n, _, dim = train.feats.shape
    if n < 2:
        raise ValueError("need at least 2 training examples to train a probe")
    gen = torch.Generator().manual_seed(probe_cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(probe_cfg.seed)
        stack = build_probe_stack(kind, len(settings), dim, num_heads, num_classes)
    opt = StackedAdamW(list(stack.named_parameters()), torch.tensor([s[0] for s in settings]),
                       torch.tensor([s[1] for s in settings]), decay_mask(stack), betas=probe_cfg.betas)
    batch = min(probe_cfg.batch_size, n)
    steps_per_epoch = n // batch  # drop the ragged tail: BatchNorm needs more than one example
    total = steps_per_epoch * probe_cfg.epochs
    warmup = int(probe_cfg.warmup_epochs * steps_per_epoch)
    labels = train.labels.long()
    stack.train()
    step = 0
    for _ in range(probe_cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            x = train.feats[idx].float()  # [b, N, D]
            loss = stacked_cross_entropy(stack(x), labels[idx], probe_cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            # the factor on each probe's base lr: warm-up from 1/warmup of it, then cosine to 0
            opt.step(warmup_cosine(step, total, warmup, peak=1.0, start=1.0 / max(1, warmup)))
            step += 1
            if on_step:
                on_step(step, total)
    return stack.eval()


@torch.no_grad()
def stack_logits(stack: torch.nn.Module, data: FeatureSet, batch_size: int = 256) -> torch.Tensor:
    """Logits of every probe on every example: [K, n, C]."""
    stack.eval()
    parts = [stack(data.feats[i:i + batch_size].float()) for i in range(0, len(data), batch_size)]
    return torch.cat(parts, dim=1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """top-1, top-5 (top-C when C < 5) and mean per-class recall over the classes present."""
    labels = labels.long()
    if len(labels) == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_per_class_recall": float("nan")}
    topk = logits.topk(min(5, logits.shape[-1]), dim=-1).indices  # [n, 5]
    hit1 = topk[:, 0] == labels
    hit5 = (topk == labels[:, None]).any(dim=1)
    recalls = [hit1[labels == c].float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return {"top1": hit1.float().mean().item(), "top5": hit5.float().mean().item(),
            "mean_per_class_recall": sum(recalls) / len(recalls)}


def val_top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-probe top-1 on a split: [K]."""
    return (logits.argmax(dim=-1) == labels.long()[None]).float().mean(dim=1)


def run_probe_grid(kind: str, train: FeatureSet, val: FeatureSet, test: FeatureSet, num_classes: int,
                   num_heads: int, probe_cfg: ProbeConfig,
                   on_step: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Train the grid, choose the setting with the best val top-1 (first on ties), report it on test."""
    settings = grid_settings(probe_cfg)
    start = time.perf_counter()
    stack = train_probe_grid(kind, train, num_classes, num_heads, probe_cfg, settings, on_step)
    selection = val if len(val) else train  # no val split: fall back to train accuracy (logged by caller)
    val_acc = val_top1(stack_logits(stack, selection), selection.labels)
    best = int(torch.argmax(val_acc))  # argmax returns the first maximum: ties go to the earlier setting
    test_logits = stack_logits(stack, test)[best]
    metrics = classification_metrics(test_logits, test.labels, num_classes)
    lr, wd = settings[best]
    return {**metrics, "lr": lr, "weight_decay": wd, "val_top1": float(val_acc[best]),
            "grid_val_top1": [float(a) for a in val_acc], "seconds": time.perf_counter() - start}
