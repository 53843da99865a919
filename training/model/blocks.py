"""The trunk's pre-norm transformer block. Module names (norm_1, attn.qkv, attn.proj, norm_2,
mlp.fc1, mlp.fc2) follow ml-aim's torch backend so its checkpoints map one-to-one."""

from __future__ import annotations

import torch
from torch import nn

from training.model.attention import PrefixMask, attention


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        # AIM drops the biases of qkv and the output projection (ml-aim: qkv_bias=False, use_bias=False).
        # One fused [3D, D] matrix as in ml-aim's checkpoints; AIM.init_weights initialises its q, k and v
        # rows separately, as l3m's separate projections are.
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, mask: PrefixMask | None, backend: str) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, N, Dh]
        q, k, v = qkv.unbind(0)
        out = attention(q, k, v, mask, backend)  # [B, H, N, Dh]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, norm_eps: float):
        super().__init__()
        self.norm_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = SelfAttention(width, heads)
        self.norm_2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(mlp_ratio * width))

    def forward(self, x: torch.Tensor, mask: PrefixMask | None, backend: str) -> torch.Tensor:
        # x [B, N, D]
        x = x + self.attn(self.norm_1(x), mask, backend)
        return x + self.mlp(self.norm_2(x))
