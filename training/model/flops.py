"""Parameter and FLOP counts of AIM, analytic (no model built), for MFU.

Training FLOPs per image ~ 6 * N_params * T + 12 * L * d * T^2: the matmuls (2 FLOPs per multiply-add,
x3 for forward + backward) plus the attention scores and weighted sum, which carry no parameters.
Attention is counted dense (no saving from the causal part), as is usual for MFU.
By default only the trunk is counted, as in the paper's figures; `include_head=True` adds the head
(its blocks have no attention, so it only adds 6 * N_head * T).
"""

from __future__ import annotations

from shared.config.training import ModelConfig


def trunk_params(cfg: ModelConfig) -> int:
    """Parameters of patch embedding, blocks and post-trunk norm (what ml-aim's checkpoints hold)."""
    d, hidden = cfg.width, int(cfg.mlp_ratio * cfg.width)
    patch = cfg.patch_size**2 * cfg.in_chans * d + d + 2 * d  # conv weight + bias, LayerNorm
    block = 3 * d * d + d * d + 2 * d * hidden + 4 * d  # qkv, proj, fc1, fc2 (no biases), 2 LayerNorms
    return patch + cfg.depth * block + 2 * d


def head_params(cfg: ModelConfig) -> int:
    d, w = cfg.width, cfg.head_width
    hidden = int(cfg.mlp_ratio * w)
    out = cfg.patch_size**2 * cfg.in_chans
    block = 2 * w * hidden + 2 * w + (2 * w if cfg.head_identity_attn else 0)
    return d * w + w + cfg.head_depth * block + 2 * w + w * out + out


def flops_per_image(cfg: ModelConfig, train: bool = True, include_head: bool = False) -> float:
    """FLOPs to process one image at cfg.img_size: x3 for training (forward + backward), else forward."""
    T, L, d = cfg.num_patches, cfg.depth, cfg.width
    factor = 3 if train else 1
    matmul_params = trunk_params(cfg) + (head_params(cfg) if include_head else 0)
    return factor * (2 * matmul_params * T + 4 * L * d * T * T)
