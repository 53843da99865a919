"""Apple's attentive-probe heads (ml-aim layout) through `load_mlaim_head` and `openaim eval`'s
`evaluation.heads`: the logits are the ones ml-aim's AttentionPoolingClassifier computes."""

import csv
import logging

import pytest
import torch
import torch.nn.functional as F

from evaluation.benchmarks.demo_sets import digits
from evaluation.features import eval_transform
from evaluation.mlaim_head import head_blocks, head_logits, load_mlaim_head, save_mlaim_head
from shared.config.evaluation import EvaluationConfig, ProbeHeadConfig
from shared.config.loading import load_config
from shared.config.training import ModelConfig
from shared.errors import ConfigError, InputError
from training.model.aim import build_aim
from training.model.mlaim_compat import save_mlaim_checkpoint

torch.set_num_threads(2)


def random_mlaim_head(dim: int, classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A head state dict as ml-aim's AttentionPoolingClassifier(dim, classes, num_queries=1) saves it."""
    g = torch.Generator().manual_seed(seed)
    return {"head.k.weight": torch.randn(dim, dim, generator=g) / dim**0.5,
            "head.v.weight": torch.randn(dim, dim, generator=g) / dim**0.5,
            "head.cls_token": torch.randn(1, 1, dim, generator=g),
            "head.linear.weight": torch.randn(classes, dim, generator=g) / dim**0.5,
            "head.bn.running_mean": torch.randn(dim, generator=g),
            "head.bn.running_var": torch.rand(dim, generator=g) * 3 + 0.1,
            "head.bn.num_batches_tracked": torch.tensor(1000)}


def mlaim_logits(head: dict[str, torch.Tensor], x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """ml-aim's AttentionPoolingClassifier.forward (eval mode), written from its definition."""
    B, N, C = x.shape
    x = F.batch_norm(x.transpose(-2, -1), head["head.bn.running_mean"], head["head.bn.running_var"],
                     training=False, eps=1e-6).transpose(-2, -1)
    q = head["head.cls_token"].expand(B, -1, -1).reshape(B, 1, num_heads, C // num_heads).permute(0, 2, 1, 3)
    k = (x @ head["head.k.weight"].T).reshape(B, N, num_heads, C // num_heads).permute(0, 2, 1, 3)
    v = (x @ head["head.v.weight"].T).reshape(B, N, num_heads, C // num_heads).permute(0, 2, 1, 3)
    pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C).mean(dim=1)
    return pooled @ head["head.linear.weight"].T


@pytest.mark.parametrize("num_heads", [1, 2, 4])
def test_released_head_layout_gives_ml_aims_logits(tmp_path, num_heads):
    head = random_mlaim_head(64, 7)
    torch.save(head, tmp_path / "head.pth")
    probe = load_mlaim_head(tmp_path / "head.pth", dim=64, num_heads=num_heads)
    x = torch.randn(5, 9, 64) * 4 + 1
    torch.testing.assert_close(head_logits(probe, x), mlaim_logits(head, x, num_heads), atol=1e-5, rtol=1e-5)
    # a merged backbone + head checkpoint (their load_pretrained's merge) reads the same
    torch.save({"trunk.post_trunk_norm.weight": torch.ones(64), **head}, tmp_path / "merged.pth")
    torch.testing.assert_close(head_logits(load_mlaim_head(tmp_path / "merged.pth", 64, num_heads), x),
                               head_logits(probe, x))
    # our writer produces their names exactly, and reads back to the same logits
    save_mlaim_head(probe, tmp_path / "ours.pth")
    written = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert written.keys() == head.keys()
    torch.testing.assert_close(head_logits(load_mlaim_head(tmp_path / "ours.pth", 64, num_heads), x),
                               head_logits(probe, x))


def test_heads_that_do_not_fit_are_refused(tmp_path):
    head = random_mlaim_head(64, 7)
    cases = {"biased": {**head, "head.linear.bias": torch.zeros(7)},
             "two_queries": {**head, "head.cls_token": torch.zeros(1, 2, 64)},
             "no_bn": {k: v for k, v in head.items() if not k.startswith("head.bn.running_var")},
             "trunk_only": {"trunk.post_trunk_norm.weight": torch.ones(64)}}
    for name, state in cases.items():
        torch.save(state, tmp_path / f"{name}.pth")
    with pytest.raises(InputError, match=r"unexpected head.linear.bias"):
        load_mlaim_head(tmp_path / "biased.pth", 64, 2)
    with pytest.raises(InputError, match="2 queries"):
        load_mlaim_head(tmp_path / "two_queries.pth", 64, 2)
    with pytest.raises(InputError, match="missing head.bn.running_var"):
        load_mlaim_head(tmp_path / "no_bn.pth", 64, 2)
    with pytest.raises(InputError, match="no head"):
        load_mlaim_head(tmp_path / "trunk_only.pth", 64, 2)
    torch.save(head, tmp_path / "head.pth")
    with pytest.raises(InputError, match="64-wide trunk, the checkpoint is 128 wide"):
        load_mlaim_head(tmp_path / "head.pth", 128, 2)
    with pytest.raises(InputError, match="not found"):
        load_mlaim_head(tmp_path / "absent.pth", 64, 2)


def test_openaim_eval_applies_a_released_head(tmp_path, caplog):
    """A custom-width ml-aim backbone + a random head for digits: eval's top-1 is the top-1 of ml-aim's
    head on the trunk's features, and no probe is trained."""
    caplog.set_level(logging.INFO, logger="openaim.eval")
    torch.manual_seed(0)
    trunk = build_aim(ModelConfig(arch=None, width=64, depth=3, heads=2, img_size=32, patch_size=8,
                                  head_width=32, head_depth=1)).eval()
    save_mlaim_checkpoint(trunk, tmp_path / "ckpt" / "backbone.pth")
    head = random_mlaim_head(64, 10, seed=1)
    torch.save(head, tmp_path / "head.pth")
    backbone, head_file = tmp_path / "ckpt" / "backbone.pth", tmp_path / "head.pth"
    overrides = [f"workdir={tmp_path / 'run'}", "evaluation.benchmarks=[digits]",
                 f"evaluation.checkpoints=['{backbone}']", "evaluation.random_baseline=false",
                 (f"evaluation.heads=[{{checkpoint: '{backbone}', benchmark: digits, path: '{head_file}', "
                  "blocks: [1, 2]}]")]
    cfg = load_config(None, overrides)
    from evaluation.run import evaluate_from_config

    rows = list(csv.DictReader(evaluate_from_config(cfg).open()))
    got = [(r["benchmark"], r["probe"], r["lr"], r["n_train"]) for r in rows]
    assert got == [("digits", "attentive", "", "0")]
    assert f"head {head_file} reads blocks [1, 2]: the head's blocks" in caplog.text

    test = digits(None, "test")
    transform = eval_transform(32)
    images = torch.stack([transform(test.read_image(i).convert("RGB")) for i in range(len(test))])
    feats = trunk.extract_features(images, [1, 2])  # fp32 here; eval caches features as fp16
    top1 = (mlaim_logits(head, feats, 2).argmax(-1) == torch.as_tensor(test.labels)).float().mean().item()
    assert abs(float(rows[0]["top1"]) - top1) <= 2 / len(test)
    assert 0.05 < top1 < 0.5  # random weights: near chance, but not a constant prediction

    with pytest.raises(ConfigError, match="heads.0..checkpoint"):
        load_config(None, overrides[:2] + [(f"evaluation.heads=[{{checkpoint: other.pth, benchmark: digits, "
                                            f"path: '{head_file}'}}]")])


def test_head_blocks_come_from_a_released_file_name_and_are_stated():
    # Apple's heads: *_last_layers.pth reads the last 6 blocks (whatever evaluation.n_blocks is),
    # *_best_layers.pth the paper's best 6 (aim-600m: 14-19); another file reads its blocks, else
    # evaluation.blocks
    ev = EvaluationConfig(n_blocks=2, blocks="last6")
    released = build_aim(ModelConfig(arch="aim-600m"), device="meta")
    tiny = build_aim(ModelConfig(arch=None, width=32, depth=8, heads=2, img_size=16, patch_size=8,
                                 head_width=32, head_depth=1), device="meta")

    def head(path, blocks=None):
        return ProbeHeadConfig(checkpoint="c.pth", benchmark="digits", path=path, blocks=blocks)

    blocks, source = head_blocks(ev, head("aim_600m_2bimgs_attnprobe_head_best_layers.pth"), released, 24)
    assert blocks == [14, 15, 16, 17, 18, 19] and "file name (best_layers)" in source
    blocks, source = head_blocks(ev, head("/h/aim_600m_2bimgs_attnprobe_head_last_layers.pth"), released, 24)
    assert blocks == [18, 19, 20, 21, 22, 23] and "file name (last_layers)" in source
    agreeing = head("x_best_layers.pth", [14, 19, 15, 16, 17, 18])
    assert head_blocks(ev, agreeing, released, 24)[0] == list(range(14, 20))
    with pytest.raises(ConfigError, match=r"blocks \[18, 19, 20, 21, 22, 23\].*best_layers head reads"):
        head_blocks(ev, head("x_best_layers.pth", [18, 19, 20, 21, 22, 23]), released, 24)
    assert head_blocks(ev, head("mine.pth", [1, 2]), tiny, 8) == ([1, 2], "the head's blocks")
    blocks, source = head_blocks(ev, head("mine.pth"), tiny, 8)
    assert blocks == [6, 7] and source.startswith("evaluation.blocks")
