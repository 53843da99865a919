"""Initialisation statistics against Apple's l3m AIMv1 recipe, restated here from its code (ml-l3m e6376a3),
on both of our init paths: direct construction and a model built on the meta device.

l3m's recipe, as this test restates it (xavier_std(a, b) = sqrt(2 / (a + b)), the std of
U(-sqrt(6 / (a + b)), +sqrt(6 / (a + b)))):
- trunk attention: separate q, k, v and output projections, nn.Linear(D, D) each, xavier-uniform:
  xavier_std(D, D)
- trunk MLP: fc1 nn.Linear(D, 4D), fc2 nn.Linear(4D, D), xavier-uniform; linear biases (where present) zero
- patch projection: nn.Conv2d(C, D, p, stride p); its weight re-initialised xavier-uniform as the linear map
  of a flattened patch, xavier_std(C*p*p, D); its bias left at PyTorch's Conv2d default,
  U(-1/sqrt(C*p*p), 1/sqrt(C*p*p)), std 1/sqrt(3*C*p*p)
- position embedding: fixed MAE 2-D sin-cos table (half the channels the column, half the row; each half
  sin(pos * w_k), cos(pos * w_k) with w_k = 10000^(-k / (D/4)))
- pixel head: in_proj nn.Linear(D, H), blocks' fc1 nn.Linear(H, 4H) / fc2 nn.Linear(4H, H), out_proj
  nn.Linear(H, p*p*C), all xavier-uniform, biases zero; LayerNorms at weight 1, bias 0
"""

import math

import numpy as np
import torch
import torch.distributed as dist

from shared.config.training import ModelConfig
from training.distributed import materialize_from_rank0
from training.model.aim import build_aim
from training.model.pos_embed import sincos_pos_embed_2d

torch.set_num_threads(2)

# aim-600m's trunk width and its pixel head's width, on 2 trunk blocks and 1 head block: every weight
# matrix has >= 0.9M draws (std known to ~0.1%); the patch bias has only D = 1536 (std to ~1.1%).
CFG = ModelConfig(arch="aim-600m", depth=2, head_depth=1, norm_eps=1e-5)
TOL = 0.02


def xavier_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


def mae_sincos_table(grid: int, dim: int) -> np.ndarray:
    """MAE's 2-D sin-cos table for a grid x grid raster, restated in numpy: [grid*grid, dim]."""

    def one_axis(pos: np.ndarray, d: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))  # raster order: row-major
    return np.concatenate([one_axis(cols, dim // 2), one_axis(rows, dim // 2)], axis=1)


def l3m_expected_std(cfg: ModelConfig) -> dict[str, float]:
    D, H, C, p = cfg.width, cfg.head_width, cfg.in_chans, cfg.patch_size
    hidden, head_hidden = int(cfg.mlp_ratio * D), int(cfg.mlp_ratio * H)
    expected = {"patch.weight": xavier_std(C * p * p, D), "patch.bias": 1 / math.sqrt(3 * C * p * p),
                "pos_embed": float(mae_sincos_table(cfg.img_size // p, D).std()),
                "head.in_proj": xavier_std(D, H), "head.out_proj": xavier_std(H, p * p * C)}
    for b in range(cfg.depth):
        expected |= {f"blocks.{b}.{name}": xavier_std(D, D) for name in ("q", "k", "v", "proj")}
        expected |= {f"blocks.{b}.fc1": xavier_std(D, hidden), f"blocks.{b}.fc2": xavier_std(hidden, D)}
    for b in range(cfg.head_depth):
        expected |= {f"head.blocks.{b}.fc1": xavier_std(H, head_hidden),
                     f"head.blocks.{b}.fc2": xavier_std(head_hidden, H)}
    return expected


def our_groups(model) -> dict[str, torch.Tensor]:
    """Our parameters under the recipe's group names (the fused qkv split into its q, k, v rows)."""
    grid = model.cfg.img_size // model.patch_size
    groups = {"patch.weight": model.patch_embed.proj.weight, "patch.bias": model.patch_embed.proj.bias,
              "pos_embed": sincos_pos_embed_2d(grid, grid, model.cfg.width),
              "head.in_proj": model.head.in_proj.weight, "head.out_proj": model.head.out_proj.weight}
    for b, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.chunk(3, dim=0)
        groups |= {f"blocks.{b}.q": q, f"blocks.{b}.k": k, f"blocks.{b}.v": v,
                   f"blocks.{b}.proj": block.attn.proj.weight,
                   f"blocks.{b}.fc1": block.mlp.fc1.weight, f"blocks.{b}.fc2": block.mlp.fc2.weight}
    for b, block in enumerate(model.head.blocks):
        groups |= {f"head.blocks.{b}.fc1": block.mlp.fc1.weight, f"head.blocks.{b}.fc2": block.mlp.fc2.weight}
    return {name: t.detach() for name, t in groups.items()}


def check_against_l3m(model) -> dict[str, float]:
    """Every group's std within TOL of the recipe's; zero biases and unit/zero norms exactly. Returns the
    ratios (ours / recipe)."""
    expected, ours = l3m_expected_std(model.cfg), our_groups(model)
    assert set(ours) == set(expected)
    ratios = {name: ours[name].std().item() / expected[name] for name in expected}
    off = {name: round(r, 4) for name, r in ratios.items() if abs(r - 1) > TOL}
    assert not off, f"std / l3m's recipe off by more than {TOL:.0%}: {off}"
    bound = 1 / math.sqrt(model.patch_embed.proj.weight[0].numel())
    assert ours["patch.bias"].abs().max().item() <= bound  # uniform within Conv2d's bound, not a normal
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            assert torch.all(module.bias == 0), name
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    return ratios


def test_pos_embed_is_the_restated_mae_table():
    grid, dim = 16, CFG.width
    np.testing.assert_allclose(sincos_pos_embed_2d(grid, grid, dim, dtype=torch.float64).numpy(),
                               mae_sincos_table(grid, dim), atol=1e-12)


def test_direct_construction_matches_l3m_init():
    torch.manual_seed(0)
    model = build_aim(CFG)
    ratios = check_against_l3m(model)
    # the patch bias was zero before (std ratio 0): Conv2d's default now, as l3m's
    assert abs(ratios["patch.bias"] - 1) < TOL and ratios["patch.bias"] > 0.5


def test_meta_device_paths_match_l3m_init():
    # (1) as l3m's runner: built on meta, storage allocated, then initialised in place
    torch.manual_seed(1)
    model = build_aim(CFG, device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    check_against_l3m(model)
    del model
    # (2) as our training loop under FSDP/HSDP: rank 0's CPU-built weights scattered into a meta-built model
    # (a one-rank gloo group; an in-process store, no network)
    torch.manual_seed(2)
    full_state = build_aim(CFG, device="cpu").state_dict()
    meta_model = build_aim(CFG, device="meta")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        materialize_from_rank0(meta_model, full_state, torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    assert meta_model.patch_embed.proj.bias.device.type == "cpu"
    torch.testing.assert_close(meta_model.patch_embed.proj.bias, full_state["patch_embed.proj.bias"])
    check_against_l3m(meta_model)


def test_patch_bias_is_conv2d_default_over_many_draws():
    # One model holds only D = 1536 bias draws (std known to ~1.1%); pooled over 8 inits, to ~0.4%.
    torch.manual_seed(3)
    model = build_aim(ModelConfig(arch=None, width=CFG.width, depth=1, heads=12, img_size=28, patch_size=14,
                                  head_width=32, head_depth=1))
    draws = [model.patch_embed.proj.bias.detach().clone()]
    for _ in range(7):
        model.init_weights()
        draws.append(model.patch_embed.proj.bias.detach().clone())
    ours = torch.cat(draws).double()
    assert abs(ours.std().item() * math.sqrt(3 * 3 * 14 * 14) - 1) < TOL
    assert abs(ours.mean().item()) < 0.05 * ours.std().item()  # centred: 5% of a std is ~5 standard errors
    # the restated bound is PyTorch's own Conv2d default: its bias never leaves it either, and fills it
    conv_bias = torch.cat([torch.nn.Conv2d(3, CFG.width, 14, stride=14).bias.detach() for _ in range(8)])
    bound = 1 / math.sqrt(3 * 14 * 14)
    assert conv_bias.abs().max() <= bound and conv_bias.abs().max() > 0.99 * bound
    assert abs(conv_bias.double().std().item() / ours.std().item() - 1) < TOL


def test_random_baseline_cache_key_follows_the_init_recipe(monkeypatch):
    # features of the random-weights baseline are cached under a hash of arch + seed: a changed init must
    # change it, or an old cache (zero patch bias) would be read back
    from evaluation import checkpoints

    cfg = ModelConfig(arch="aim-tiny", depth=1, head_depth=1)
    entry = checkpoints.CheckpointEntry("random-init", None, 0)
    before = checkpoints.load_trunk(entry, cfg, seed=0)[2]
    assert checkpoints.load_trunk(entry, cfg, seed=0)[2] == before
    monkeypatch.setattr(checkpoints, "INIT_VERSION", checkpoints.INIT_VERSION + 1)
    assert checkpoints.load_trunk(entry, cfg, seed=0)[2] != before
