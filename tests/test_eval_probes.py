"""The probe heads and the grid trained together: math, optimizer, determinism, metrics."""

from __future__ import annotations

import itertools

import pytest
import torch

from evaluation.probe_grid import (
    FeatureSet,
    StackedAdamW,
    classification_metrics,
    grid_settings,
    run_probe_grid,
)
from evaluation.probes import (
    AttentiveProbe,
    AttentiveProbeStack,
    LinearProbe,
    LinearProbeStack,
    TokenBatchNorm,
    stacked_cross_entropy,
)
from shared.config.evaluation import ProbeConfig
from shared.schedule import warmup_cosine

torch.set_num_threads(2)


def test_token_batchnorm_uses_batch_times_token_statistics():
    x = torch.randn(4, 7, 6) * 3 + 5
    y = TokenBatchNorm(6).train()(x)
    flat = y.reshape(-1, 6)
    assert torch.allclose(flat.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(flat.var(0, unbiased=False), torch.ones(6), atol=1e-3)
    assert not any(p.requires_grad for p in TokenBatchNorm(6).parameters())


def test_attentive_probe_matches_ml_aim_layout():
    probe = AttentiveProbe(dim=12, num_heads=3, num_classes=5)
    names = {n: tuple(p.shape) for n, p in probe.named_parameters()}
    # no q projection, bias-free k/v, bias-free classifier (ml-aim: linear_bias=False), no output projection
    assert names == {"query": (1, 1, 12), "k.weight": (12, 12), "v.weight": (12, 12),
                     "classifier.weight": (5, 12)}
    assert probe.query.std().item() < 0.1
    assert probe(torch.randn(3, 9, 12)).shape == (3, 5)


@pytest.mark.parametrize("heads", [1, 4])
def test_stack_equals_plain_probes(heads):
    torch.manual_seed(0)
    x = torch.randn(6, 10, 16)
    plain = [AttentiveProbe(16, heads, 7) for _ in range(3)]
    stack = AttentiveProbeStack(3, 16, heads, 7)
    for i, p in enumerate(plain):
        stack.load_from(i, p)
    out = stack.train()(x)
    for i, p in enumerate(plain):
        assert torch.allclose(out[i], p.train()(x), atol=1e-5)
    lin = LinearProbe(16, 7)
    lstack = LinearProbeStack(2, 16, 7)
    lstack.load_from(1, lin)
    assert torch.allclose(lstack.train()(x)[1], lin.train()(x), atol=1e-5)


def test_stacked_loss_gives_each_probe_its_own_gradient():
    torch.manual_seed(1)
    x, y = torch.randn(8, 5, 8), torch.randint(0, 4, (8,))
    a, b = AttentiveProbe(8, 2, 4), AttentiveProbe(8, 2, 4)
    stack = AttentiveProbeStack(2, 8, 2, 4)
    stack.load_from(0, a)
    stack.load_from(1, b)
    stacked_cross_entropy(stack(x), y).backward()
    torch.nn.functional.cross_entropy(b(x), y).backward()
    assert torch.allclose(stack.k_weight.grad[1], b.k.weight.grad.t(), atol=1e-5)
    assert torch.allclose(stack.cls_weight.grad[1], b.classifier.weight.grad.t(), atol=1e-5)


def test_stacked_adamw_matches_torch_adamw_per_slice():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(2, 3, 4))
    refs = [torch.nn.Parameter(w.detach()[i].clone()) for i in range(2)]
    lrs, wds = torch.tensor([1e-2, 1e-1]), torch.tensor([0.0, 0.5])
    opt = StackedAdamW([("w", w)], lrs, wds, {"w": True})
    ref_opts = [torch.optim.AdamW([refs[i]], lr=float(lrs[i]), weight_decay=float(wds[i])) for i in range(2)]
    for _ in range(5):
        g = torch.randn(2, 3, 4)
        w.grad = g.clone()
        opt.step(1.0)
        for i in range(2):
            refs[i].grad = g[i].clone()
            ref_opts[i].step()
    for i in range(2):
        assert torch.allclose(w.detach()[i], refs[i].detach(), atol=1e-6)


def test_cosine_schedule_shape():
    # the probes' factor on their base lr, from training.optim's one warm-up + cosine schedule
    vals = [warmup_cosine(s, 100, 10, peak=1.0, start=0.1) for s in range(100)]
    assert vals[0] == pytest.approx(0.1) and vals[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(vals[10:])) and vals[-1] < 0.01


def test_metrics_top1_top5_recall():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 1, 0, 0, 0],
                           [0, 1, 5.0, 0, 0, 0], [5.0, 0, 0, 0, 0, 1]])
    labels = torch.tensor([0, 2, 2, 5])
    m = classification_metrics(logits, labels, 6)
    assert m["top1"] == pytest.approx(0.5)
    assert m["top5"] == pytest.approx(1.0)
    # class 0: 1/1, class 2: 1/2, class 5: 0/1
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 0) / 3)


def _toy_features(n: int, seed: int, classes: int = 4, tokens: int = 6, dim: int = 16):
    """A class signal hidden in one token among noisy ones: attention pooling should find it."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, tokens, dim, generator=g) * 2
    pos = torch.randint(0, tokens, (n,), generator=g)
    x[torch.arange(n), pos] = centers[labels] * 2 + torch.randn(n, dim, generator=g) * 0.3
    return FeatureSet(x.half(), labels)


def test_grid_trains_k_probes_deterministically_and_picks_best_on_val():
    cfg = ProbeConfig(lrs=[1e-5, 1e-3, 3e-3, 1e-2], weight_decays=[1e-4, 1e-2], epochs=8, batch_size=64)
    assert len(grid_settings(cfg)) == 8
    train, val, test = _toy_features(512, 0), _toy_features(128, 1), _toy_features(256, 2)
    r1 = run_probe_grid("attentive", train, val, test, 4, 2, cfg)
    r2 = run_probe_grid("attentive", train, val, test, 4, 2, cfg)
    assert {k: v for k, v in r1.items() if k != "seconds"} == {k: v for k, v in r2.items() if k != "seconds"}
    assert len(r1["grid_val_top1"]) == 8
    assert r1["val_top1"] == max(r1["grid_val_top1"])
    assert r1["lr"] != 1e-5  # the tiny-lr probes barely move: never the best
    assert r1["top1"] > 0.6  # chance is 0.25
    lin = run_probe_grid("linear", train, val, test, 4, 2, cfg)
    assert 0.0 <= lin["top1"] <= 1.0 and lin["top5"] == 1.0  # 4 classes: top-5 covers all
