"""The AIM model: shapes, parameter counts, loss masking, feature extraction, training, ml-aim names."""

import json

import pytest
import torch
from pydantic import ValidationError

from shared.config.training import ModelConfig
from shared.errors import InputError
from training.eval_weights import load_model_for_eval
from training.model.aim import build_aim
from training.model.flops import flops_per_image, head_params, trunk_params
from training.model.loss import next_patch_loss
from training.model.mlaim_compat import (
    export_mlaim_state_dict,
    infer_model_config,
    load_mlaim_checkpoint,
    load_mlaim_trunk,
    save_mlaim_checkpoint,
)

torch.set_num_threads(2)

# Small enough for 2 cores: 16 patches of 8x8, 3 blocks.
SMALL = {"arch": None, "img_size": 32, "patch_size": 8, "width": 64, "depth": 3, "heads": 4, "head_width": 32,
         "head_depth": 2}


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_aim(ModelConfig(**{**SMALL, **overrides}))


def images(batch=2, size=32, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# Paper sizes (Table 1: 0.6B, 1.2B, 2.7B, 6.5B). The 600M preset is ml-aim's released aim_600M
# (1536 wide, 24 blocks), whose trunk holds 0.68B parameters: "0.6B" is a rounded name, so it is
# checked against ml-aim's shapes (exact count) and only loosely against the paper's label.
@pytest.mark.parametrize("arch,paper,tol", [("aim-600m", 0.6e9, 0.15), ("aim-1b", 1.2e9, 0.02),
                                            ("aim-3b", 2.7e9, 0.02), ("aim-7b", 6.5e9, 0.02)])
def test_trunk_param_counts_on_meta(arch, paper, tol):
    cfg = ModelConfig(arch=arch)
    model = build_aim(cfg, device="meta")
    assert next(model.parameters()).device.type == "meta"
    trunk = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    assert trunk == trunk_params(cfg) and head == head_params(cfg)
    assert abs(trunk - paper) / paper < tol, trunk
    if arch == "aim-600m":
        assert abs(trunk - 679.5e6) / 679.5e6 < 0.005
        # head of the public config: 2048 wide, 12 blocks, 588 outputs
        assert model.head.out_proj.out_features == 14 * 14 * 3 and len(model.head.blocks) == 12


def test_flops_match_published_estimates():
    for arch, tflops in [("aim-600m", 1.07), ("aim-1b", 1.9), ("aim-3b", 4.2), ("aim-7b", 10.0)]:
        cfg = ModelConfig(arch=arch)
        assert abs(flops_per_image(cfg) / 1e12 - tflops) / tflops < 0.05, arch
        assert flops_per_image(cfg, include_head=True) > flops_per_image(cfg)
        assert flops_per_image(cfg, train=False) == pytest.approx(flops_per_image(cfg) / 3)


def test_impossible_shapes_fail_at_config_validation():
    with pytest.raises(ValidationError):
        ModelConfig(**{**SMALL, "img_size": 30})
    with pytest.raises(ValidationError):
        ModelConfig(**{**SMALL, "heads": 5})


def test_patchify_order_and_round_trip():
    model = small_model()
    x = images(2)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    # patch 1 is row 0, column 1; its values are ordered (row, col, channel)
    torch.testing.assert_close(patches[:, 1], x[:, :, 0:8, 8:16].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(patches[:, 4], x[:, :, 8:16, 0:8].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(model.unpatchify(patches), x)
    wide = torch.randn(1, 3, 16, 32)
    torch.testing.assert_close(model.unpatchify(model.patchify(wide), grid_hw=(2, 4)), wide)


def test_init_weights():
    model = small_model()
    qkv = model.blocks[0].attn.qkv
    assert qkv.bias is None and model.blocks[0].mlp.fc1.bias is None
    assert model.blocks[0].attn.proj.bias is None
    bound = (6 / (qkv.in_features + qkv.in_features)) ** 0.5  # per q/k/v matrix: fan_in = fan_out = D
    for part in qkv.weight.chunk(3):
        assert part.abs().max() <= bound and part.abs().max() > 0.9 * bound
    assert torch.all(model.head.in_proj.bias == 0)
    # the patch Conv2d bias keeps PyTorch's default (as l3m): U(+-1/sqrt(C*p*p)), not zero
    bias, bias_bound = model.patch_embed.proj.bias, (3 * 8 * 8) ** -0.5
    assert bias.abs().max() <= bias_bound and bias.abs().max() > 0.5 * bias_bound
    assert torch.all(model.post_trunk_norm.weight == 1) and model.patch_embed.norm.eps == 1e-6
    names = model.no_weight_decay_names()
    assert "patch_embed.proj.bias" in names and "blocks.0.norm_1.weight" in names
    assert "head.norm.weight" in names and "blocks.0.attn.qkv.weight" not in names
    assert "patch_embed.proj.weight" not in names


@pytest.mark.parametrize("width", [192, 384, 1536])
def test_qkv_init_matches_l3m_separate_projections(width):
    # l3m's AIMv1 trunk (configs/aimv1: GenericAttention, weight_init_style xavier_uniform) has three
    # nn.Linear(D, D) q/k/v projections, each xavier-uniform: std sqrt(2 / (D + D)) = 1/sqrt(D).
    torch.manual_seed(0)
    model = build_aim(ModelConfig(arch=None, width=width, depth=1, heads=width // 64, img_size=32,
                                  patch_size=8, head_width=32, head_depth=1))
    reference = [torch.nn.init.xavier_uniform_(torch.nn.Linear(width, width, bias=False).weight)
                 for _ in "qkv"]
    for ours, theirs in zip(model.blocks[0].attn.qkv.weight.detach().chunk(3), reference, strict=True):
        assert abs(ours.std().item() / theirs.std().item() - 1) < 0.02
        assert abs(ours.std().item() * width**0.5 - 1) < 0.02
    # the fused matrix's own xavier std would be 1/sqrt(2D): 0.71x, the gap this init closes
    assert model.blocks[0].attn.qkv.weight.std().item() * width**0.5 > 0.98


def test_loss_is_the_documented_reduction():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    prefix = torch.tensor([1, 3])
    total, count = 0.0, 0
    for b in range(2):
        for j in range(int(prefix[b]), 5):  # counted targets j >= S, predicted at j - 1
            t = target[b, j]
            t = (t - t.mean()) / (t.var(unbiased=True) + 1e-6).sqrt()
            total += ((pred[b, j - 1] - t) ** 2).mean().item()
            count += 1
    assert next_patch_loss(pred, target, prefix).item() == pytest.approx(total / count, rel=1e-5)
    raw = next_patch_loss(pred, target, prefix, norm_pix=False)
    assert raw.item() != pytest.approx(total / count, rel=1e-3)


def test_loss_ignores_prefix_targets():
    model = small_model()
    x = images(2)
    prefix = torch.tensor([6, 10])
    base = model.forward_loss(x, prefix, targets=x)
    # target patches 1..S-1 lie inside the prefix: changing them does not change the loss
    changed = x.clone()
    changed[0, :, 0:8, 8:16] += 3.0  # patch 1 of image 0 (S=6)
    changed[1, :, 8:16, 16:24] -= 2.0  # patch 6 of image 1 (S=10)
    torch.testing.assert_close(model.forward_loss(x, prefix, targets=changed), base)
    # patch 6 of image 0 (S=6) is counted
    counted = x.clone()
    counted[0, :, 8:16, 16:24] = torch.randn(3, 8, 8)
    assert (model.forward_loss(x, prefix, targets=counted) - base).abs() > 1e-4


def test_trunk_is_bidirectional_in_prefix_and_causal_after():
    model = small_model().eval()
    x = images(1)
    prefix = torch.tensor([5])
    later = x.clone()
    later[:, :, 8:16, 24:32] += 1.0  # patch 7
    in_prefix = x.clone()
    in_prefix[:, :, 8:16, 0:8] += 1.0  # patch 4, the last prefix patch
    with torch.no_grad():
        base = model.forward_trunk(x, prefix)
        moved_later = model.forward_trunk(later, prefix)
        moved_prefix = model.forward_trunk(in_prefix, prefix)
    torch.testing.assert_close(moved_later[:, :7], base[:, :7])  # nothing before patch 7 sees it
    assert (moved_later[:, 7:] - base[:, 7:]).abs().max() > 1e-4
    assert (moved_prefix[:, 0] - base[:, 0]).abs().max() > 1e-4  # patch 0 sees the whole prefix


def test_extract_features_mean_of_blocks_and_prefix_independent():
    model = small_model().eval()
    x = images(2)
    feats = model.extract_features(x, [0, 2])
    with torch.no_grad():
        h, _ = model._embed(x)
        outs = []
        for block in model.blocks:
            h = block(h, None, "naive")
            outs.append(h)
    torch.testing.assert_close(feats, (outs[0] + outs[2]) / 2, atol=1e-5, rtol=1e-5)
    # no hidden prefix state: a training forward in between changes nothing
    model.forward_loss(x, torch.tensor([1, 15]))
    torch.testing.assert_close(model.extract_features(x, [0, 2]), feats)
    # bidirectional: the first patch's feature depends on the last patch
    changed = x.clone()
    changed[:, :, 24:32, 24:32] += 1.0
    moved = model.extract_features(changed, [0])[:, 0] - model.extract_features(x, [0])[:, 0]
    assert moved.abs().max() > 1e-4
    with pytest.raises(ValueError):
        model.extract_features(x, [3])


def test_other_resolution_and_best_blocks():
    model = small_model()
    assert model.extract_features(images(1, size=48), [1]).shape == (1, 36, 64)
    assert model.best_blocks() == [0, 1, 2]
    assert build_aim(ModelConfig(arch="aim-600m"), device="meta").best_blocks() == list(range(14, 20))
    assert build_aim(ModelConfig(arch="aim-1b"), device="meta").best_blocks() == list(range(12, 18))


def test_prefix_generator_is_seedable():
    model = small_model()
    x = images(4)
    model.seed_prefix_rng(5)
    a = model.forward_loss(x)
    model.seed_prefix_rng(5)
    torch.testing.assert_close(model.forward_loss(x), a)


def test_head_quirk_flag_changes_the_head():
    quirk, plain = small_model(), small_model(head_identity_attn=False)
    assert quirk.head.blocks[0].norm_1 is not None and plain.head.blocks[0].norm_1 is None
    extra = sum(p.numel() for p in quirk.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 2 * 32


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_a_few_adamw_steps_reduce_the_loss(backend):
    model = small_model(attention_backend=backend)
    x = images(4, seed=3)
    prefix = torch.tensor([2, 5, 9, 13])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    losses = []
    for _ in range(12):
        loss = model.forward_loss(x, prefix)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_backends_give_the_same_model_loss_and_grads():
    ref = small_model(attention_backend="naive")
    other = small_model(attention_backend="sdpa")
    x, prefix = images(2), torch.tensor([3, 12])
    la, lb = ref.forward_loss(x, prefix), other.forward_loss(x, prefix)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)
    for (n, pa), (_, pb) in zip(ref.named_parameters(), other.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_mlaim_export_and_load_round_trip(tmp_path):
    model = small_model().eval()
    sd = export_mlaim_state_dict(model)
    assert "preprocessor.patchifier.proj.weight" in sd and "preprocessor.patchifier.norm.bias" in sd
    assert "trunk.blocks.2.attn.qkv.weight" in sd and "trunk.post_trunk_norm.weight" in sd
    assert not any(k.startswith("head.") for k in sd)
    probe = {"head.cls_token": torch.zeros(1, 1, 64), "head.k.weight": torch.zeros(64, 64)}
    torch.save({**sd, **probe}, tmp_path / "aim.pth")
    loaded = load_mlaim_checkpoint(tmp_path / "aim.pth", model_cfg=model.cfg)
    x = images(2)
    torch.testing.assert_close(loaded.extract_features(x, [1, 2]), model.extract_features(x, [1, 2]))
    assert not loaded.training and not hasattr(loaded, "mlaim_probe_head")  # their head: mlaim_head.py
    # a width that is no released size, and no config.json beside it: the head count is unknown
    with pytest.raises(InputError, match="cannot tell the head count"):
        load_mlaim_checkpoint(tmp_path / "aim.pth")


def test_custom_width_mlaim_checkpoint_loads_exactly(tmp_path):
    # 256 wide with 2 heads (head dim 128, as every ml-aim size): a head-dim-64 guess would say 4 heads
    model = small_model(width=256, heads=2).eval()
    save_mlaim_checkpoint(model, tmp_path / "custom_backbone.pth")
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["embed_dim"], config["num_blocks"], config["num_heads"]) == (256, 3, 2)
    loaded, cfg = load_model_for_eval(tmp_path / "custom_backbone.pth")
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.img_size) == (256, 3, 2, 8, 32)
    x = images(2)
    assert torch.equal(loaded.extract_features(x, [0, 1, 2]), model.extract_features(x, [0, 1, 2]))
    four_heads = small_model(width=256, heads=4).eval()
    load_mlaim_trunk(four_heads, export_mlaim_state_dict(model))  # the same weights, the guessed head count
    assert not torch.allclose(four_heads.extract_features(x, [2]), model.extract_features(x, [2]), atol=1e-3)
    # a config.json that does not describe the weights is refused, naming the file
    (tmp_path / "config.json").write_text('{"embed_dim": 512, "num_blocks": 3, "num_heads": 4}')
    with pytest.raises(InputError, match="custom_backbone.pth: its config.json .*embed_dim 512 vs 256"):
        load_model_for_eval(tmp_path / "custom_backbone.pth")
    (tmp_path / "config.json").write_text('{"embed_dim": 256, "num_heads": 3}')
    with pytest.raises(InputError, match="num_heads 3 does not divide"):
        load_model_for_eval(tmp_path / "custom_backbone.pth")


def test_released_mlaim_sizes_take_their_preset_head_count():
    for arch, heads in [("aim-600m", 12), ("aim-1b", 16), ("aim-3b", 24), ("aim-7b", 32)]:
        sd = export_mlaim_state_dict(build_aim(ModelConfig(arch=arch), device="meta"))
        cfg = infer_model_config(sd)
        assert (cfg.arch, cfg.heads, cfg.width // cfg.heads) == (arch, heads, 128)


def test_mlaim_bad_inputs_are_input_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        load_mlaim_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(InputError):
        load_mlaim_checkpoint(tmp_path / "missing.pth")
    sd = export_mlaim_state_dict(small_model())
    del sd["trunk.blocks.1.mlp.fc2.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="missing 1"):
        load_mlaim_checkpoint(tmp_path / "partial.pth", model_cfg=ModelConfig(**SMALL))
    wrong = export_mlaim_state_dict(small_model(width=128, heads=4))
    with pytest.raises(InputError):
        load_mlaim_trunk(small_model(), wrong)


def test_pos_embed_formula():
    from training.model.pos_embed import sincos_pos_embed_2d

    emb = sincos_pos_embed_2d(2, 3, 8)  # 6 patches, 8 channels: 4 for the column, 4 for the row
    assert emb.shape == (6, 8)
    omega = torch.tensor([1.0, 10000 ** -0.5])  # w_k = 10000^(-k / (D/4)), D/4 = 2
    row, col = 1, 2  # patch 5 in raster order
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega),
                          torch.sin(row * omega), torch.cos(row * omega)])
    torch.testing.assert_close(emb[5], expected)


def test_xformers_request_falls_back_on_cpu():
    model = small_model(attention_backend="xformers")
    assert model.attention_backend(torch.device("cpu")) == "sdpa"
    assert torch.isfinite(model.forward_loss(images(2), torch.tensor([2, 7])))
