"""Attention backends for AIM's prefix-causal self-attention, behind one function.

    attention(q, k, v, mask, backend)   q, k, v: [B, H, N, Dh] -> [B, H, N, Dh]

`mask` is None (bidirectional: feature extraction), a LongTensor[B] of prefix lengths, or a
`PrefixMask` built once per batch by `build_prefix_mask` and shared by all layers (so flex's block
mask and xformers' sequence-length tables are computed once, not once per block).

Backends:
- "xformers": memory_efficient_attention (CUDA only). The exact prefix-LM on flash-friendly biases:
  flatten the batch to one sequence and make two calls, prefix queries over prefix keys with a
  block-diagonal mask (seqlens S_b) and suffix queries over all keys with a block-diagonal causal
  mask aligned bottom-right (q seqlens N - S_b, kv seqlens N). xformers has no prefix-LM bias class.
  The tokens of each call are gathered and scattered with row-index tensors made once per batch (no
  boolean indexing: no per-layer host syncs or graph breaks); the biases need the [B] prefix lengths
  on the host, read once per batch.
- "flex": torch.nn.attention.flex_attention with or_masks(prefix, causal); compiled on CUDA.
  On CPU it runs forward only (no backward), so `select_backend` does not pick it there for training.
- "sdpa": F.scaled_dot_product_attention with an explicit mask (the CPU default), passed as an additive
  bias made once per batch. A mask keeps SDPA off its flash kernel, which is why CUDA prefers
  xformers/flex.
- "naive": explicit softmax(QK^T / sqrt(Dh)) V, the reference every backend is tested against.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.model.prefix import prefix_causal_mask

log = logging.getLogger("openaim.attention")

BACKENDS = ("xformers", "flex", "sdpa", "naive")


@dataclass
class PrefixMask:
    """Per-batch attention mask state for one backend. Build with `build_prefix_mask`."""

    prefix_len: torch.Tensor  # [B] long
    num_tokens: int
    backend: str
    dense: torch.Tensor | None = None  # [B, 1, N, N] bool (sdpa, naive, xformers fallback)
    block_mask: Any = None  # flex BlockMask
    xformers_biases: tuple | None = None  # (prefix BlockDiagonalMask, suffix bottom-right causal mask)
    xformers_index: tuple | None = None  # (prefix rows [sum S], suffix rows [sum N - S]) of the [B*N] tokens
    cache: dict = field(default_factory=dict)

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense mask as an additive bias (0 / -inf) in `dtype`, made once per batch and dtype.
        SDPA would otherwise convert the bool mask in every layer (about 10% of its CPU time)."""
        if dtype not in self.cache:
            bias = torch.zeros(self.dense.shape, dtype=dtype, device=self.dense.device)
            self.cache[dtype] = bias.masked_fill_(~self.dense, float("-inf"))
        return self.cache[dtype]


def build_prefix_mask(prefix_len: torch.Tensor, num_tokens: int, backend: str) -> PrefixMask:
    """Everything the backend needs to apply the prefix-causal mask, computed once per batch."""
    if prefix_len.ndim != 1:
        raise ValueError(f"prefix_len must be [B], got shape {tuple(prefix_len.shape)}")
    mask = PrefixMask(prefix_len=prefix_len, num_tokens=num_tokens, backend=backend)
    if backend in ("sdpa", "naive"):
        mask.dense = prefix_causal_mask(prefix_len, num_tokens)[:, None]  # [B, 1, N, N]
    elif backend == "flex":
        mask.block_mask = _flex_block_mask(prefix_len, num_tokens)
    elif backend == "xformers":
        # xformers' block-diagonal biases take host seqlens: one read of the [B] lengths per batch,
        # shared by every layer; the layers themselves gather with index tensors (no boolean masks).
        lengths = prefix_len.tolist()
        if min(lengths) >= 1 and max(lengths) <= num_tokens - 1:
            mask.xformers_biases = _xformers_prefix_biases(lengths, num_tokens, prefix_len.device)
            mask.xformers_index = _xformers_token_index(lengths, num_tokens, prefix_len.device)
        else:  # an empty prefix or suffix has no block-diagonal form: dense bias instead
            mask.dense = prefix_causal_mask(prefix_len, num_tokens)[:, None]
    else:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: PrefixMask | torch.Tensor | None, backend: str) -> torch.Tensor:
    """Scaled dot-product attention, prefix-causal when `mask` is given. [B, H, N, Dh] in and out."""
    if isinstance(mask, torch.Tensor):
        mask = build_prefix_mask(mask, q.shape[2], backend)
    if mask is not None and mask.backend != backend:
        raise ValueError(f"mask was built for {mask.backend!r}, not {backend!r}")
    if backend == "sdpa":
        bias = None if mask is None else mask.additive(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    if backend == "naive":
        return naive_attention(q, k, v, None if mask is None else mask.dense)
    if backend == "flex":
        return _flex_attention(q, k, v, None if mask is None else mask.block_mask)
    if backend == "xformers":
        return xformers_attention(q, k, v, mask)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    allowed: torch.Tensor | None) -> torch.Tensor:
    """The reference: softmax(q k^T / sqrt(Dh) masked) v. `allowed` is bool, broadcastable to [B, H, N, N]."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, N, N]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v


# ---------------------------------------------------------------------------------------- flex
_compiled_flex: Callable | None = None


def _flex_block_mask(prefix_len: torch.Tensor, num_tokens: int):
    # imported on use: flex_attention pulls in torch._dynamo (1-2 s per process that never uses it)
    from torch.nn.attention.flex_attention import create_block_mask, or_masks

    def in_prefix(b, h, q_idx, kv_idx):
        return kv_idx < prefix_len[b]

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return create_block_mask(or_masks(in_prefix, causal), B=prefix_len.shape[0], H=None,
                             Q_LEN=num_tokens, KV_LEN=num_tokens, device=prefix_len.device)


def _flex_attention(q, k, v, block_mask):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention  # on use: see _flex_block_mask

    if q.device.type != "cuda":  # eager flex is a slow reference path (forward only on CPU)
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:  # uncompiled flex materialises the scores: always compile on GPU
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


# ------------------------------------------------------------------------------------ xformers
def _xformers_prefix_biases(lengths: list[int], num_tokens: int, device):
    # xformers is optional (CUDA only, the `gpu` extra): imported where it is used
    from xformers.ops.fmha.attn_bias import BlockDiagonalCausalFromBottomRightMask, BlockDiagonalMask

    suffix = [num_tokens - s for s in lengths]
    prefix_bias = BlockDiagonalMask.from_seqlens(q_seqlen=lengths, kv_seqlen=lengths, device=device)
    # Suffix query i of image b sits at position S_b + i; bottom-right alignment lets it see keys
    # 0 .. S_b + i of its own image, i.e. the whole prefix plus the causal past.
    suffix_bias = BlockDiagonalCausalFromBottomRightMask.from_seqlens(
        q_seqlen=suffix, kv_seqlen=[num_tokens] * len(lengths), device=device)
    return prefix_bias, suffix_bias


def _xformers_token_index(lengths: list[int], num_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the flattened [B*N] tokens in the prefix (image by image, position order, matching the
    block-diagonal seqlens) and in the suffix; built on the host, copied without waiting."""
    starts = np.arange(len(lengths)) * num_tokens
    prefix = np.concatenate([s + np.arange(n) for s, n in zip(starts, lengths, strict=True)])
    suffix = np.concatenate([s + np.arange(n, num_tokens) for s, n in zip(starts, lengths, strict=True)])
    out = []
    for rows in (prefix, suffix):
        t = torch.from_numpy(rows)
        if torch.device(device).type == "cuda":
            t = t.pin_memory()
        out.append(t.to(device, non_blocking=True))
    return out[0], out[1]


def xformers_attention(q, k, v, mask: PrefixMask | None, attn_fn: Callable | None = None) -> torch.Tensor:
    """The two-call exact prefix-LM. `attn_fn(q, k, v, bias)` on [1, M, H, Dh] defaults to
    xformers.ops.memory_efficient_attention (tests pass a reference that materialises the bias)."""
    if attn_fn is None:
        import xformers.ops as xops  # optional (CUDA only): see _xformers_prefix_biases

        attn_fn = xops.memory_efficient_attention
    B, H, N, Dh = q.shape
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, N, H, Dh], xformers' layout
    if mask is None:
        return attn_fn(qt, kt, vt, None).transpose(1, 2)
    if mask.xformers_biases is None:  # dense per-sample bias (slower cutlass kernel)
        return attn_fn(qt, kt, vt, _dense_bias(mask.dense, H, q.dtype)).transpose(1, 2)
    prefix_bias, suffix_bias = mask.xformers_biases
    prefix_rows, suffix_rows = mask.xformers_index
    qf, kf, vf = (t.reshape(B * N, H, Dh) for t in (qt, kt, vt))  # [B*N, H, Dh]
    out_prefix = attn_fn(qf.index_select(0, prefix_rows)[None], kf.index_select(0, prefix_rows)[None],
                         vf.index_select(0, prefix_rows)[None], prefix_bias)  # [1, sum S, H, Dh]
    out_suffix = attn_fn(qf.index_select(0, suffix_rows)[None], kf[None], vf[None],
                         suffix_bias)  # [1, sum(N - S), H, Dh]
    out = qf.new_empty(B * N, H, Dh).index_copy(0, prefix_rows, out_prefix[0])
    out = out.index_copy(0, suffix_rows, out_suffix[0])  # [B*N, H, Dh]
    return out.view(B, N, H, Dh).transpose(1, 2)  # [B, H, N, Dh]


def _dense_bias(allowed: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive bias [B, H, N, N] from a bool mask; the last dim is allocated padded to a multiple of 8
    because xformers' kernels need aligned bias strides."""
    B, _, N, _ = allowed.shape
    padded = (N + 7) // 8 * 8
    bias = torch.zeros(B, heads, N, padded, dtype=dtype, device=allowed.device)[..., :N]
    return bias.masked_fill_(~allowed, float("-inf"))


# ------------------------------------------------------------------------------------- choice
_probe_results: dict[tuple[str, str], bool] = {}
_probe_errors: dict[tuple[str, str], str] = {}
_logged: set[tuple[str, str, str]] = set()


def canonical_device(device: torch.device | str) -> torch.device:
    """"cuda" and "cuda:0" are one device: give CUDA devices their index so probes and choices
    are cached once per physical device (a model built on "cuda" runs its inputs on "cuda:0")."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def backend_works(backend: str, device: torch.device | str) -> bool:
    """Probe a backend with a tiny prefix-causal forward + backward on `device` (cached)."""
    device = canonical_device(device)
    key = (backend, str(device))
    if key not in _probe_results:
        _probe_results[key] = _probe(backend, device)
    return _probe_results[key]


def probe_error(backend: str, device: torch.device | str) -> str | None:
    """Why `backend` was found unusable on `device` (None if it works or was never probed)."""
    return _probe_errors.get((backend, str(canonical_device(device))))


def _probe(backend: str, device: torch.device) -> bool:
    if backend in ("sdpa", "naive"):
        return True
    if device.type == "meta":
        return False
    try:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        q = torch.randn(2, 2, 16, 64, device=device, dtype=dtype, requires_grad=True)
        prefix = torch.tensor([3, 9], device=device)
        out = attention(q, q, q, build_prefix_mask(prefix, 16, backend), backend)
        ref = naive_attention(q.float(), q.float(), q.float(), prefix_causal_mask(prefix, 16)[:, None])
        out.float().sum().backward()
        if not torch.allclose(out.float(), ref, atol=5e-2, rtol=5e-2):
            _probe_errors[(backend, str(device))] = "wrong results against the reference"
            log.warning("attention backend %s gives wrong results on %s", backend, device)
            return False
        return True
    except Exception as err:
        lines = str(err).strip().splitlines()
        _probe_errors[(backend, str(device))] = f"{type(err).__name__}: {lines[0][:200] if lines else ''}"
        log.debug("attention backend %s unusable on %s", backend, device, exc_info=True)
        return False


def select_backend(requested: str, device: torch.device | str) -> str:
    """The backend to use on `device`: "auto" picks xformers if it really runs there, else flex on
    CUDA, else sdpa. An explicit request that does not run on the device falls back the same way,
    with a warning. The choice is logged once per (request, device)."""
    device = canonical_device(device)
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"unknown attention backend {requested!r}; choose auto or one of "
                         f"{', '.join(BACKENDS)}")
    if device.type == "meta":
        chosen, why = ("sdpa" if requested == "auto" else requested), "meta device, no probe"
    elif requested != "auto" and backend_works(requested, device):
        chosen, why = requested, "requested"
    else:
        candidates = ("xformers", "flex") if device.type == "cuda" else ()
        chosen = next((b for b in candidates if backend_works(b, device)), "sdpa")
        why = "auto" if requested == "auto" else (
            f"fallback: {requested} does not run on {device.type}: "
            f"{probe_error(requested, device) or 'unknown'}")
    key = (requested, str(device), chosen)
    if key not in _logged:
        _logged.add(key)
        level = logging.WARNING if why.startswith("fallback") else logging.INFO
        log.log(level, "attention backend %s on %s (%s)", chosen, device, why)
    return chosen
