"""Probe heads on frozen trunk features: the attentive probe (as in ml-aim) and a linear baseline.

Two forms of each:
  - ``AttentiveProbe`` / ``LinearProbe``: one probe, plain modules, the readable reference;
  - ``AttentiveProbeStack`` / ``LinearProbeStack``: K probes with stacked parameters (a leading K
    dimension), so a whole grid of settings trains in one forward/backward on the same batch.
A stack with K=1 computes exactly what the plain module computes (tests check it).

Features come in as x[B, N, D]: the mean of several trunk blocks' raw outputs (before the final norm).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TokenBatchNorm(nn.Module):
    """BatchNorm1d(affine=False, eps 1e-6) per channel, statistics over batch x tokens.

    The raw block outputs of a pre-norm trunk are not normalised (the final norm is skipped), and their
    scale varies a lot between blocks and checkpoints; a parameter-free BN makes one lr grid fit all.
    It has no parameters, so K stacked probes can share one instance (same input, same statistics).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, N, D] -> BatchNorm1d wants channels second: [B, D, N]
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class AttentiveProbe(nn.Module):
    """One learnable query attends over the tokens; the pooled vector goes to a linear classifier.

    ml-aim's AttentionPoolingClassifier (aim-v1, torch backend), parameter for parameter: a BatchNorm
    without affine over batch x tokens, the query a parameter used directly (no q projection), bias-free
    k and v linears, heads = trunk heads, softmax(q k^T / sqrt(head dim)) v, no output projection, and a
    bias-free classifier (their linear_bias=False), so Apple's released heads load exactly
    (evaluation/mlaim_head.py).
    """

    def __init__(self, dim: int, num_heads: int, num_classes: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide width {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = TokenBatchNorm(dim)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        H, hd = self.num_heads, self.head_dim
        x = self.norm(x)
        q = self.query.expand(B, -1, -1).reshape(B, 1, H, hd).transpose(1, 2)  # [B, H, 1, hd]
        k = self.k(x).reshape(B, N, H, hd).transpose(1, 2)  # [B, H, N, hd]
        v = self.v(x).reshape(B, N, H, hd).transpose(1, 2)  # [B, H, N, hd]
        attn = (q @ k.transpose(-2, -1)) * hd**-0.5  # [B, H, 1, N]
        pooled = attn.softmax(dim=-1) @ v  # [B, H, 1, hd]
        pooled = pooled.transpose(1, 2).reshape(B, D)  # [B, D]
        return self.classifier(pooled)  # [B, C]


class LinearProbe(nn.Module):
    """The paper's baseline: average-pool the tokens, BatchNorm (no affine), one linear layer."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(x.mean(dim=1)))  # [B, N, D] -> [B, D] -> [B, C]


def _linear_init(K: int, fan_in: int, fan_out: int) -> torch.Tensor:
    # nn.Linear's default init (kaiming-uniform with a=sqrt(5) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
    # stored as [K, in, out] so that x @ W needs no transpose.
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(K, fan_in, fan_out).uniform_(-bound, bound)


class AttentiveProbeStack(nn.Module):
    """K attentive probes with independent parameters, evaluated together: logits[K, B, C].

    Nothing of size K x B x N x D is built. The k/v projections are linear, so they are moved to the
    other side of the token sums (why: it turns the K*B*N*D*D projections into K*B*H*N*D products):
      score[k,b,h,n] = sum_e q[k,h,e] * (x[b,n] @ Wk[k])[h,e] = x[b,n] . (Wk[k][:, h] @ q[k,h])
      out[k,b,h]     = sum_n a[k,b,h,n] * (x[b,n] @ Wv[k])[h] = (sum_n a[k,b,h,n] x[b,n]) @ Wv[k][:, h]
    """

    def __init__(self, K: int, dim: int, num_heads: int, num_classes: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{num_heads} heads do not divide width {dim}")
        self.K, self.num_heads, self.head_dim = K, num_heads, dim // num_heads
        self.norm = TokenBatchNorm(dim)  # shared: parameter-free
        self.query = nn.Parameter(torch.randn(K, dim) * 0.02)
        self.k_weight = nn.Parameter(_linear_init(K, dim, dim))  # [K, D_in, D_out]
        self.v_weight = nn.Parameter(_linear_init(K, dim, dim))
        self.cls_weight = nn.Parameter(_linear_init(K, dim, num_classes))  # [K, D, C], no bias (as ml-aim)

    @torch.no_grad()
    def load_from(self, index: int, probe: AttentiveProbe) -> None:
        """Copy one plain probe's weights into slot ``index`` (used by tests and to export a winner)."""
        self.query[index] = probe.query.reshape(-1)
        self.k_weight[index] = probe.k.weight.t()
        self.v_weight[index] = probe.v.weight.t()
        self.cls_weight[index] = probe.classifier.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _N, D = x.shape
        K, H, hd = self.K, self.num_heads, self.head_dim
        x = self.norm(x)  # [B, N, D]
        q = self.query.reshape(K, H, hd)
        wk = self.k_weight.reshape(K, D, H, hd)
        wv = self.v_weight.reshape(K, D, H, hd)
        q_in = torch.einsum("kdhe,khe->khd", wk, q)  # the query pulled back to input space: [K, H, D]
        scores = torch.einsum("bnd,khd->kbhn", x, q_in) * hd**-0.5  # [K, B, H, N]
        attn = scores.softmax(dim=-1)
        pooled_in = torch.einsum("kbhn,bnd->kbhd", attn, x)  # [K, B, H, D]
        pooled = torch.einsum("kbhd,kdhe->kbhe", pooled_in, wv).reshape(K, B, D)  # [K, B, D]
        return torch.bmm(pooled, self.cls_weight)  # [K, B, C]


class LinearProbeStack(nn.Module):
    """K linear probes on the same pooled, normalised features: logits[K, B, C]."""

    def __init__(self, K: int, dim: int, num_classes: int):
        super().__init__()
        self.K = K
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)  # shared: parameter-free
        self.cls_weight = nn.Parameter(_linear_init(K, dim, num_classes))
        bound = 1.0 / math.sqrt(dim)
        self.cls_bias = nn.Parameter(torch.empty(K, num_classes).uniform_(-bound, bound))

    @torch.no_grad()
    def load_from(self, index: int, probe: LinearProbe) -> None:
        self.cls_weight[index] = probe.classifier.weight.t()
        self.cls_bias[index] = probe.classifier.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(x.mean(dim=1))  # [B, D]
        return torch.einsum("bd,kdc->kbc", pooled, self.cls_weight) + self.cls_bias.unsqueeze(1)  # [K, B, C]


def build_probe_stack(kind: str, K: int, dim: int, num_heads: int, num_classes: int) -> nn.Module:
    if kind == "attentive":
        return AttentiveProbeStack(K, dim, num_heads, num_classes)
    if kind == "linear":
        return LinearProbeStack(K, dim, num_classes)
    raise ValueError(f"unknown probe kind {kind!r}")


def decay_mask(stack: nn.Module) -> dict[str, bool]:
    """Which stacked parameters get weight decay: weights and the query, not biases."""
    return {name: not name.endswith("bias") for name, _ in stack.named_parameters()}


def stacked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over the K probes of each probe's mean cross-entropy.

    A sum (not a mean) so that each probe's gradient is exactly what it would get trained alone.
    """
    K, B, C = logits.shape
    per_probe = F.cross_entropy(logits.reshape(K * B, C), labels.repeat(K), reduction="none",
                                label_smoothing=label_smoothing)
    return per_probe.reshape(K, B).mean(dim=1).sum()
