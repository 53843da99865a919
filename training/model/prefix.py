"""Prefix lengths and the prefix-causal mask of AIM's pre-training.

Each image gets a prefix length S uniform in [1, N-1]: the first S patches attend to each other
bidirectionally, every later patch attends causally (to itself and everything before it). The loss
only counts predictions of patches at index >= S, so the model learns to predict from a prefix as
it will see at feature-extraction time (where attention is fully bidirectional).
"""

from __future__ import annotations

import torch


def sample_prefix_lengths(batch: int, num_patches: int, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """LongTensor[batch] uniform in [1, num_patches - 1].

    Drawn on the CPU from `generator` (seed it per rank and worker, or per global step: the l3m
    recipe seeds a fresh generator with 0, so every worker draws the same sequence) and then moved.
    """
    if num_patches < 2:
        raise ValueError(f"prefix-causal training needs at least 2 patches, got {num_patches}")
    lengths = torch.randint(1, num_patches, (batch,), generator=generator, dtype=torch.long)
    return lengths if device is None else lengths.to(device)


def prefix_causal_mask(prefix_len: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """BoolTensor[B, N, N]: entry [b, i, j] is True when query i may attend to key j.

    Allowed: j <= i (causal) or j < prefix_len[b] (the prefix is visible to every query, which makes
    attention inside the prefix bidirectional).
    """
    idx = torch.arange(num_tokens, device=prefix_len.device)
    # One comparison instead of (causal | prefix): query i sees keys up to max(i, S - 1).
    last_visible = torch.maximum(idx[None, :, None], prefix_len[:, None, None] - 1)  # [B, N, 1]
    return idx[None, None, :] <= last_visible  # [B, N, N]
