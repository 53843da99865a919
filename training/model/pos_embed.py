"""Fixed 2-D sine-cosine position embeddings (the MAE formula), recomputed for any grid size."""

from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[M] positions -> [M, dim]: concat(sin(p*w), cos(p*w)) with w_k = 10000^(-k / (dim/2))."""
    assert dim % 2 == 0, dim
    omega = torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(grid_h: int, grid_w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[grid_h * grid_w, dim] embeddings for patches in raster order (row by row).

    The first half of the channels encodes the column index, the second half the row index, as in
    MAE and in ml-aim (whose released weights were trained with exactly this layout).
    Computed in float64 then cast, so it does not depend on the autocast dtype.
    """
    assert dim % 4 == 0, f"2-D sin-cos embeddings need dim divisible by 4, got {dim}"
    if device is not None and torch.device(device).type == "meta":
        return torch.empty(grid_h * grid_w, dim, device="meta", dtype=dtype)
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)  # [N] row of each patch
    cols = torch.arange(grid_w, device=device).repeat(grid_h)  # [N] column of each patch
    emb = torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)  # [N, dim]
    return emb.to(dtype)
