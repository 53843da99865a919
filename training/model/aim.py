"""AIM: autoregressive image model (El-Nouby et al., 2024, arXiv 2401.08541).

A ViT trunk without CLS token reads the patches in raster order under prefix-causal attention;
an MLP head predicts, at every position i, the pixels of patch i + 1.

    images [B, C, H, W]
      -> PatchEmbed (Conv2d + LayerNorm) + 2-D sin-cos pos  [B, N, D]
      -> depth x Block (pre-norm, prefix-causal attention)  [B, N, D]
      -> post_trunk_norm                                     [B, N, D]
      -> AIMHead (Linear + pos, MLP-only blocks, LN, Linear) [B, N, p*p*C]
      -> next_patch_loss vs standardised target patches

Feature extraction runs the trunk with bidirectional attention and averages raw block outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.config.training import ModelConfig
from training.model.attention import PrefixMask, build_prefix_mask, canonical_device, select_backend
from training.model.blocks import Block
from training.model.head import AIMHead
from training.model.loss import next_patch_loss
from training.model.patch_embed import PatchEmbed
from training.model.pos_embed import sincos_pos_embed_2d
from training.model.prefix import sample_prefix_lengths

# Bump when init_weights draws different weights for the same seed: a random-weights baseline's feature
# cache is keyed by it (evaluation.checkpoints.load_trunk). 2: patch bias at Conv2d's default (was zero).
INIT_VERSION = 2

# The paper's best 6 blocks for the attentive probe (0-based, inclusive ranges).
_BEST_BLOCKS = {"aim-600m": range(14, 20), "aim-1b": range(12, 18), "aim-3b": range(12, 18),
                "aim-7b": range(14, 20)}


class AIM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.in_chans = cfg.in_chans
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.width, cfg.patch_size, cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.norm_eps)
                                    for _ in range(cfg.depth))
        self.post_trunk_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head = AIMHead(cfg.width, cfg.head_width, cfg.head_depth, cfg.patch_size**2 * cfg.in_chans,
                            cfg.mlp_ratio, cfg.norm_eps, cfg.head_identity_attn)
        # Draws prefix lengths when forward_loss gets none; the loop reseeds it per rank/worker/step.
        self.prefix_generator = torch.Generator(device="cpu").manual_seed(0)
        self._backend_by_device: dict[str, str] = {}
        self.init_weights()

    # ------------------------------------------------------------------------------ setup
    def init_weights(self) -> None:
        """Xavier-uniform linears with zero bias (as l3m), the patch Conv2d weight initialised like a
        linear on the flattened patch (as MAE and l3m), LayerNorms at ones/zeros.

        The fused qkv [3D, D] is initialised as three D x D matrices: l3m's trunk (GenericAttention)
        has separate q_proj/k_proj/v_proj linears, each xavier-uniform with fan_in = fan_out = D
        (std 1/sqrt(D)); xavier on the fused matrix would see fan_out 3D and start 1/sqrt(2) smaller.

        The patch Conv2d bias keeps PyTorch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        with fan_in = C*p*p (std ~0.024 at patch 14): l3m's preprocessor re-initialises only the weight,
        on direct construction and in its runner's meta-device init_parameters. It is drawn here
        explicitly, so a model built on meta and materialised with `to_empty` + `init_weights` gets it too.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for part in block.attn.qkv.weight.chunk(3, dim=0):  # q, k, v rows: [D, D] views
                nn.init.xavier_uniform_(part)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        bound = 1 / math.sqrt(w[0].numel())  # nn.Conv2d.reset_parameters' bias bound
        nn.init.uniform_(self.patch_embed.proj.bias, -bound, bound)

    def seed_prefix_rng(self, seed: int) -> None:
        self.prefix_generator.manual_seed(seed)

    def attention_backend(self, device: torch.device) -> str:
        """The backend for inputs on `device` (resolved once per device: the model may be built on
        meta or CPU and moved afterwards)."""
        key = str(canonical_device(device))
        if key not in self._backend_by_device:
            self._backend_by_device[key] = select_backend(self.cfg.attention_backend, device)
        return self._backend_by_device[key]

    def no_weight_decay_names(self) -> set[str]:
        """Biases and LayerNorm parameters (the sin-cos position embeddings are computed, not learnt)."""
        norms = {name for name, m in self.named_modules() if isinstance(m, nn.LayerNorm)}
        return {name for name, p in self.named_parameters()
                if name.endswith(".bias") or name.rsplit(".", 1)[0] in norms}

    def best_blocks(self) -> list[int]:
        """The paper's best 6 probe blocks for the released sizes; otherwise the last 6."""
        if self.cfg.arch in _BEST_BLOCKS and self.cfg.depth == ModelConfig(arch=self.cfg.arch).depth:
            return list(_BEST_BLOCKS[self.cfg.arch])
        return list(range(max(0, self.cfg.depth - 6), self.cfg.depth))

    # --------------------------------------------------------------------------- patches
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, p*p*C], patches in raster order, values ordered (row, col, channel)."""
        B, C, H, W = images.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not divisible by patch size {p}")
        x = images.reshape(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, patches: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """[B, N, p*p*C] -> [B, C, H, W]; a square grid unless `grid_hw` is given."""
        B, N, _ = patches.shape
        p, C = self.patch_size, self.in_chans
        gh, gw = grid_hw if grid_hw is not None else (math.isqrt(N), math.isqrt(N))
        if gh * gw != N:
            raise ValueError(f"{N} patches do not fill a {gh}x{gw} grid")
        x = patches.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, gh * p, gw * p)

    # --------------------------------------------------------------------------- forward
    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        grid_hw = (images.shape[2] // self.patch_size, images.shape[3] // self.patch_size)
        x = self.patch_embed(images)  # [B, N, D]
        pos = sincos_pos_embed_2d(*grid_hw, x.shape[-1], device=x.device, dtype=x.dtype)
        return x + pos, grid_hw

    def _run_blocks(self, x: torch.Tensor, mask: PrefixMask | None, backend: str,
                    last_block: int | None = None):
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, mask, backend)
            outputs.append(x)
            if last_block is not None and i == last_block:
                break
        return x, outputs

    def forward_trunk(self, images: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] -> normalised trunk output [B, N, D]; prefix-causal if `prefix_len` [B] is
        given, bidirectional otherwise."""
        backend = self.attention_backend(images.device)
        x, _ = self._embed(images)
        mask = (None if prefix_len is None
                else build_prefix_mask(prefix_len.to(images.device), x.shape[1], backend))
        x, _ = self._run_blocks(x, mask, backend)
        return self.post_trunk_norm(x)

    def forward_head(self, trunk_out: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """[B, N, D] -> [B, N, p*p*C]: at position i, the predicted pixels of patch i + 1."""
        return self.head(trunk_out, grid_hw)

    def forward_loss(self, images: torch.Tensor, prefix_len: torch.Tensor | None = None,
                     targets: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar next-patch loss. `prefix_len` [B] defaults to a draw from `prefix_generator`;
        `targets` (default: the images themselves) are the images whose patches are regressed."""
        B, _, H, W = images.shape
        grid_hw = (H // self.patch_size, W // self.patch_size)
        if prefix_len is None:
            prefix_len = sample_prefix_lengths(B, grid_hw[0] * grid_hw[1], self.prefix_generator)
        prefix_len = prefix_len.to(images.device)
        pred = self.forward_head(self.forward_trunk(images, prefix_len), grid_hw)
        target = self.patchify(images if targets is None else targets)
        return next_patch_loss(pred, target, prefix_len, norm_pix=self.cfg.norm_pix_loss)

    def forward(self, images: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_loss(images, prefix_len)

    @torch.no_grad()
    def extract_features(self, images: torch.Tensor, blocks: list[int]) -> torch.Tensor:
        """[B, N, D]: mean of the raw outputs of `blocks` (0-based, before the final norm), with
        bidirectional attention. Blocks after the last requested one are not run."""
        if not blocks:
            raise ValueError("extract_features needs at least one block")
        bad = [b for b in blocks if not 0 <= b < len(self.blocks)]
        if bad:
            raise ValueError(f"blocks {bad} out of range for a trunk of {len(self.blocks)} blocks")
        backend = self.attention_backend(images.device)
        x, _ = self._embed(images)
        _, outputs = self._run_blocks(x, None, backend, last_block=max(blocks))
        return torch.stack([outputs[b] for b in blocks], dim=0).mean(dim=0)


def build_aim(model_cfg: ModelConfig, device: torch.device | str | None = None) -> AIM:
    """An initialised AIM on `device` ("meta" builds shapes only, e.g. to count parameters or to
    materialise shard by shard under FSDP)."""
    if device is None:
        return AIM(model_cfg)
    with torch.device(device):
        return AIM(model_cfg)
