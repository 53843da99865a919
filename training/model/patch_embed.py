"""Patch embedding: a strided Conv2d (one linear map per patch) followed by a LayerNorm."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, width: int, patch_size: int, norm_eps: float):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size, bias=True)
        # AIM normalises the patch tokens right after the projection (ml-aim's patchifier.norm).
        self.norm = nn.LayerNorm(width, eps=norm_eps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images [B, C, H, W] -> tokens [B, N, D], N = (H/p)(W/p) in raster order
        tokens = self.proj(images).flatten(2).transpose(1, 2)
        return self.norm(tokens)
