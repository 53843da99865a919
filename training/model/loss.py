"""AIM's pre-training loss: regress the (per-patch standardised) pixels of the next patch."""

from __future__ import annotations

import torch


def standardize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(t - mean) / sqrt(var + eps) per patch over its p*p*C values, unbiased variance as in AIM/MAE."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def next_patch_loss(pred: torch.Tensor, target_patches: torch.Tensor, prefix_len: torch.Tensor | None,
                    norm_pix: bool = True) -> torch.Tensor:
    """Scalar MSE between the prediction at position i and the target patch i + 1.

    pred, target_patches: [B, N, P]. Only targets at index >= prefix_len[b] count (prefix patches
    are visible bidirectionally, predicting them would be trivial). The per-patch MSE is averaged
    over its P values, summed over counted patches and divided by their number across the batch.
    """
    target = target_patches.float()
    if norm_pix:
        target = standardize_patches(target)
    err = (pred[:, :-1].float() - target[:, 1:]).pow(2).mean(dim=-1)  # [B, N-1]: error of target j = i + 1
    N = target.shape[1]
    if prefix_len is None:
        return err.mean()
    target_index = torch.arange(1, N, device=err.device)  # [N-1]
    counted = (target_index[None, :] >= prefix_len[:, None]).to(err.dtype)  # [B, N-1]
    return (err * counted).sum() / counted.sum().clamp_min(1.0)
