"""Prefix-causal masks and the attention backends against the explicit-softmax reference."""

import logging
import math

import pytest
import torch

from training.model import attention as attn_mod
from training.model.attention import (
    attention,
    backend_works,
    build_prefix_mask,
    naive_attention,
    select_backend,
    xformers_attention,
)
from training.model.prefix import prefix_causal_mask, sample_prefix_lengths

torch.set_num_threads(2)
SHAPES = [(3, 2, 16, 8), (2, 4, 49, 16), (4, 1, 64, 32)]  # B, H, N, Dh


def test_prefix_mask_bidirectional_in_prefix_causal_after():
    prefix = torch.tensor([1, 4, 7])
    N = 8
    mask = prefix_causal_mask(prefix, N)
    assert mask.shape == (3, N, N) and mask.dtype == torch.bool
    for b, S in enumerate(prefix.tolist()):
        for i in range(N):
            for j in range(N):
                expected = j < S or j <= i
                assert mask[b, i, j].item() == expected, (b, i, j)
        # inside the prefix every query sees every prefix key (also later ones)
        assert mask[b, :S, :S].all()
        # after the prefix, nothing sees the future
        assert not mask[b, S:, S:].triu(1).any()


def test_sample_prefix_lengths_range_and_generator():
    lengths = sample_prefix_lengths(4000, 16, torch.Generator().manual_seed(3))
    assert lengths.dtype == torch.long and lengths.min() == 1 and lengths.max() == 15
    assert torch.equal(lengths, sample_prefix_lengths(4000, 16, torch.Generator().manual_seed(3)))
    assert not torch.equal(lengths, sample_prefix_lengths(4000, 16, torch.Generator().manual_seed(4)))
    # uniform: each value ~ 4000/15 = 267 times
    counts = torch.bincount(lengths, minlength=16)[1:]
    assert counts.min() > 180 and counts.max() < 360
    with pytest.raises(ValueError):
        sample_prefix_lengths(2, 1)


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    B, H, N, Dh = shape
    q, k, v = (torch.randn(B, H, N, Dh, generator=g, dtype=torch.float64).float().requires_grad_()
               for _ in range(3))
    prefix = torch.randint(1, N, (B,), generator=g)
    prefix[0] = 1  # the extremes: a one-patch prefix and a one-patch suffix
    prefix[-1] = N - 1
    return q, k, v, prefix


def _grads(out, tensors, seed):
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=g)
    return torch.autograd.grad((out * upstream).sum(), tensors)


def _reference(q, k, v, prefix):
    allowed = None if prefix is None else prefix_causal_mask(prefix, q.shape[2])[:, None]
    return naive_attention(q, k, v, allowed)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_prefix", [True, False])
def test_sdpa_matches_naive_forward_and_backward(shape, use_prefix):
    q, k, v, prefix = _inputs(shape, seed=sum(shape))
    prefix = prefix if use_prefix else None
    ref = _reference(q, k, v, prefix)
    out = attention(q, k, v, prefix, "sdpa")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for a, b in zip(_grads(out, (q, k, v), 1), _grads(ref, (q, k, v), 1), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_prebuilt_mask_reused_across_layers_equals_per_call_mask(shape):
    q, k, v, prefix = _inputs(shape, seed=7)
    mask = build_prefix_mask(prefix, shape[2], "sdpa")
    first = attention(q, k, v, mask, "sdpa")
    second = attention(q, k, v, mask, "sdpa")
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, attention(q, k, v, prefix, "sdpa"))
    with pytest.raises(ValueError):
        attention(q, k, v, mask, "naive")  # a mask built for another backend is refused


def _flex_forward_runs_here() -> bool:
    try:
        q = torch.randn(1, 1, 16, 8)
        attention(q, q, q, torch.tensor([3]), "flex")
        return True
    except Exception:  # noqa: BLE001 - whatever stops flex here means "not on this machine"
        return False


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("shape", SHAPES)
def test_flex_matches_naive(shape):
    if not _flex_forward_runs_here():
        pytest.skip("flex_attention does not run on this machine")
    q, k, v, prefix = _inputs(shape, seed=11)
    ref = _reference(q, k, v, prefix)
    # CPU flex refuses inputs that require grad even under no_grad: compare the forward on detached ones
    out = attention(q.detach(), k.detach(), v.detach(), prefix, "flex")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    if backend_works("flex", "cpu"):  # backward exists (not on CPU in torch 2.x): compare gradients too
        out = attention(q, k, v, prefix, "flex")
        for a, b in zip(_grads(out, (q, k, v), 2), _grads(ref, (q, k, v), 2), strict=True):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def _materialising_attention(q, k, v, bias):
    """memory_efficient_attention's maths on [1, M, H, Dh], with the xformers bias materialised."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [1, H, M, Dh]
    scores = qh @ kh.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if isinstance(bias, torch.Tensor):
        scores = scores + bias
    elif bias is not None:
        scores = scores + bias.materialize(scores.shape, dtype=scores.dtype, device=scores.device)
    return (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2)


@pytest.mark.parametrize("shape", SHAPES)
def test_xformers_two_call_prefix_lm_is_exact(shape):
    """The block-diagonal + bottom-right causal decomposition, run through xformers' own bias classes
    (materialised, since its kernels are CUDA-only), equals the dense prefix-causal reference."""
    pytest.importorskip("xformers.ops.fmha.attn_bias")
    q, k, v, prefix = _inputs(shape, seed=13)
    mask = build_prefix_mask(prefix, shape[2], "xformers")
    assert mask.xformers_biases is not None
    out = xformers_attention(q, k, v, mask, attn_fn=_materialising_attention)
    ref = _reference(q, k, v, prefix)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for a, b in zip(_grads(out, (q, k, v), 3), _grads(ref, (q, k, v), 3), strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_xformers_dense_fallback_for_empty_suffix():
    pytest.importorskip("xformers.ops.fmha.attn_bias")
    q, k, v, _ = _inputs((2, 2, 16, 8), seed=5)
    prefix = torch.tensor([16, 0])  # all-prefix and no-prefix images have no block-diagonal form
    mask = build_prefix_mask(prefix, 16, "xformers")
    assert mask.xformers_biases is None and mask.dense is not None
    out = xformers_attention(q, k, v, mask, attn_fn=_materialising_attention)
    torch.testing.assert_close(out, _reference(q, k, v, prefix), atol=2e-5, rtol=1e-4)


def test_select_backend_on_cpu_logs_fallbacks(caplog):
    attn_mod._logged.clear()
    with caplog.at_level(logging.INFO, logger="openaim.attention"):
        assert select_backend("auto", "cpu") == "sdpa"
        assert select_backend("naive", "cpu") == "naive"
        assert select_backend("sdpa", "cpu") == "sdpa"
        # xformers has no CPU kernels: probed, found unusable, replaced with a warning
        assert backend_works("xformers", "cpu") is False
        assert select_backend("xformers", "cpu") == "sdpa"
        select_backend("xformers", "cpu")  # logged once only
    fallbacks = [r for r in caplog.records if "fallback: xformers" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING
    assert any("sdpa" in r.getMessage() and "auto" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        select_backend("cudnn", "cpu")


def test_flex_is_only_selected_where_it_trains():
    chosen = select_backend("flex", "cpu")
    assert chosen == ("flex" if backend_works("flex", "cpu") else "sdpa")
