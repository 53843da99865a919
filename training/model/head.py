"""AIM's pixel-prediction head: a stack of MLP-only residual blocks applied to every patch
independently (no attention, so the head cannot leak information between patches)."""

from __future__ import annotations

import torch
from torch import nn

from training.model.blocks import MLP
from training.model.pos_embed import sincos_pos_embed_2d


class HeadBlock(nn.Module):
    """x + LN1(x), then x + MLP(LN2(x)) when `identity_attn` (the default), else only the MLP step.

    We reproduce a quirk of Apple's l3m AIMv1 config on purpose: its head blocks are ordinary
    transformer blocks whose attention is an identity, so the "attention" residual adds the
    normalised input itself (x + LN(x)). It is what the released recipe trained; set
    `ModelConfig.head_identity_attn=False` for the plain MLP block the paper describes.
    """

    def __init__(self, width: int, mlp_ratio: float, norm_eps: float, identity_attn: bool):
        super().__init__()
        self.identity_attn = identity_attn
        self.norm_1 = nn.LayerNorm(width, eps=norm_eps) if identity_attn else None
        self.norm_2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(mlp_ratio * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_1 is not None:
            x = x + self.norm_1(x)
        return x + self.mlp(self.norm_2(x))


class AIMHead(nn.Module):
    def __init__(self, width: int, head_width: int, depth: int, out_dim: int, mlp_ratio: float,
                 norm_eps: float, identity_attn: bool):
        super().__init__()
        self.head_width = head_width
        self.in_proj = nn.Linear(width, head_width, bias=True)
        self.blocks = nn.ModuleList(HeadBlock(head_width, mlp_ratio, norm_eps, identity_attn)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(head_width, eps=norm_eps)
        self.out_proj = nn.Linear(head_width, out_dim, bias=True)

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        # x [B, N, D] (normalised trunk output) -> [B, N, p*p*C] predicted pixels of the next patch
        x = self.in_proj(x)
        x = x + sincos_pos_embed_2d(*grid_hw, self.head_width, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.out_proj(self.norm(x))
