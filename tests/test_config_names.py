"""Config values that name something (benchmarks, heads, dedup eval sets, checkpoints, blocks, arch, choices)
are checked once at load: an unknown name stops with one line naming the key, the value and the closest
known names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config.loading import load_config
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def load_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("override, key, value, closest", [
    ("evaluation.benchmarks=[digits, imagenet-1kk]", "evaluation.benchmarks", "'imagenet-1kk'",
     "imagenet-1k"),
    ("evaluation.benchmarks=[cifar10]", "evaluation.benchmarks", "'cifar10'", "cifar-10"),
    ("evaluation.benchmarks=['imagefolde:/data/x']", "evaluation.benchmarks", "'imagefolde:/data/x'",
     "imagefolder:<path>"),
    ("evaluation.benchmarks=[al]", "evaluation.benchmarks", "'al'", "all"),
    ("curation.dedup.eval_sets=[miniweb-colour]", "curation.dedup.eval_sets", "'miniweb-colour'",
     "miniweb-color"),
    ("evaluation.blocks=bset", "evaluation.blocks", "'bset'", "best"),
    ("evaluation.blocks=last", "evaluation.blocks", "'last'", "last6"),
    ("training.model.arch=aim-600", "training.model", "'aim-600'", "aim-600m"),
    ("training.model.attention_backend=xformer", "training.model.attention_backend", "'xformer'", "xformers"),
    ("evaluation.probe.kind=atentive", "evaluation.probe.kind", "'atentive'", "attentive"),
])
def test_unknown_names_stop_with_key_value_and_closest(override, key, value, closest):
    message = load_error([override])
    assert key in message and value in message and closest in message, message
    assert message.index(value) < message.index(closest)


def test_names_that_are_known_pass(tmp_path):
    cfg = load_config(None, ["evaluation.benchmarks=[all, paper, demo, digits, 'imagefolder:/x', 'wds:/y']",
                             "curation.dedup.eval_sets=[cifar-10, demo]", "evaluation.blocks=[1, 3]"])
    assert cfg.evaluation.blocks == [1, 3] and cfg.curation.dedup.eval_sets == ["cifar-10", "demo"]


def _head_overrides(tmp_path: Path, head: str, benchmarks: str = "[imagenet-1k]") -> list[str]:
    backbone = tmp_path / "aim_600m_2bimgs_attnprobe_backbone.pth"
    backbone.touch()
    return [f"evaluation.checkpoints=['{backbone}']", f"evaluation.benchmarks={benchmarks}",
            f"evaluation.heads=[{head.replace('BACKBONE', str(backbone))}]"]


def test_a_head_naming_an_unknown_benchmark_stops_the_run(tmp_path):
    head = "{checkpoint: 'BACKBONE', benchmark: imagenet1k, path: h_best_layers.pth}"
    message = load_error(_head_overrides(tmp_path, head))
    assert "evaluation.heads.0.benchmark" in message and "'imagenet1k'" in message
    assert "imagenet-1k" in message


def test_a_head_for_a_benchmark_not_evaluated_or_twice_stops_the_run(tmp_path):
    head = "{checkpoint: 'BACKBONE', benchmark: cifar-10, path: h.pth}"
    message = load_error(_head_overrides(tmp_path, head, "[digits]"))
    assert "heads[0].benchmark" in message and "'cifar-10'" in message and "digits" in message
    cfg = load_config(None, _head_overrides(tmp_path, head, "[paper]"))
    assert cfg.evaluation.heads[0].benchmark == "cifar-10"
    message = load_error(_head_overrides(tmp_path, f"{head}, {head}", "[all]"))
    assert "heads[1]" in message and "second head" in message


def test_a_head_naming_an_unlisted_checkpoint_names_the_listed_ones(tmp_path):
    backbone = tmp_path / "aim_600m_2bimgs_attnprobe_backbone.pth"
    head = "{checkpoint: 'BACKBONE', benchmark: imagenet-1k, path: h.pth}"
    overrides = _head_overrides(tmp_path, head)
    overrides[-1] = overrides[-1].replace("backbone.pth'", "backbon.pth'")
    message = load_error(overrides)
    assert "heads[0].checkpoint" in message and "backbon.pth'" in message and str(backbone) in message


def test_a_missing_checkpoint_names_the_closest_files_beside_it(tmp_path):
    (tmp_path / "aim_600m_2bimgs_attnprobe_backbone.pth").touch()
    (tmp_path / "unrelated.txt").touch()
    message = load_error([f"evaluation.checkpoints=['{tmp_path / 'aim_600m_2bimgs_attnprobe_backbon.pth'}']"])
    assert "evaluation.checkpoints" in message and "backbon.pth' does not exist" in message
    assert str(tmp_path / "aim_600m_2bimgs_attnprobe_backbone.pth") in message and "unrelated" not in message
    message = load_error([f"evaluation.checkpoints=['{tmp_path / 'nope' / 'x.pth'}']"])
    assert "no folder" in message and str(tmp_path / "nope") in message


@pytest.mark.parametrize("path, blocks, ok", [
    ("aim_600m_2bimgs_attnprobe_head_best_layers.pth", "best", True),
    ("aim_600m_2bimgs_attnprobe_head_best_layers.pth", "last6", False),
    ("aim_600m_2bimgs_attnprobe_head_last_layers.pth", "best", False),
    ("aim_600m_2bimgs_attnprobe_head_last_layers.pth", None, True),
    ("my_head.pth", "best", True),
])
def test_explicit_head_blocks_must_agree_with_a_released_file_name(tmp_path, path, blocks, ok):
    extra = f", blocks: {blocks}" if blocks else ""
    head = f"{{checkpoint: 'BACKBONE', benchmark: imagenet-1k, path: {path}{extra}}}"
    overrides = _head_overrides(tmp_path, head)
    if ok:
        assert load_config(None, overrides).evaluation.heads[0].blocks == blocks
        return
    message = load_error(overrides)
    assert "evaluation.heads.0" in message and repr(blocks) in message and path in message
    assert ("best_layers" if "best_layers" in path else "last_layers") in message


def test_names_are_checked_without_importing_any_loader():
    # the CLI's one-line exit 2 on an unknown benchmark: tests/test_eval_run.py; here, that the check stays
    # light (no torch, no registry of loaders) so a bad name stops before anything heavy runs
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = ("import sys; from shared.config.loading import load_config; load_config(None, []); "
             "print(sorted(m for m in ('torch', 'torchvision', 'evaluation.benchmarks.registry') "
             "if m in sys.modules))")
    got = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, env=env,
                         timeout=300)
    assert got.stdout.strip() == "[]", got.stdout + got.stderr
