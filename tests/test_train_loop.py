"""`openaim train` end to end on tiny real models and real webdataset shards: kill -9 + resume is exact,
a 2-process torchrun (DDP, FSDP2) matches a 1-process run, bad input fails in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.config.loading import load_config
from training.metrics import read_metrics
from training.synthetic import write_image_folder, write_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]
# A model small enough that a step takes milliseconds on one core: 16 patches of 8 px.
TINY = ["training.model.width=32", "training.model.depth=2", "training.model.heads=2",
        "training.model.img_size=32", "training.model.patch_size=8", "training.model.head_width=32",
        "training.model.head_depth=1", "training.data.shuffle_buffer=8", "training.log_every=1"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _train_cmd(workdir: Path, sets: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "shared.cli", "train", "--set", f"workdir={workdir}"]
    for s in TINY + sets:
        cmd += ["--set", s]
    return cmd + list(extra)


def _run(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "training" / "metrics.jsonl")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("train_shards")
    write_synthetic_shards(root, n_shards=4, per_shard=24, size=40, seed=0)
    return str(root / "*.tar")


def test_paper_configs_load():
    expected = {"600m": (1536, 24, 12), "1b": (2048, 24, 16), "3b": (3072, 24, 24), "7b": (4096, 32, 32)}
    for name, (width, depth, heads) in expected.items():
        cfg = load_config(ROOT / "configs" / f"aim-{name}.yaml")
        t = cfg.training
        assert (t.model.width, t.model.depth, t.model.heads) == (width, depth, heads)
        shape = (t.model.img_size, t.model.patch_size, t.model.head_width, t.model.head_depth)
        assert shape == (224, 14, 2048, 12)
        assert (t.global_batch_size, t.steps, t.precision) == (4096, 500_000, "bf16")
        assert t.compile and tuple(t.data.mix) == (0.8, 0.2)
    assert load_config(ROOT / "configs" / "aim-7b.yaml").training.parallel == "hsdp"
    assert load_config(ROOT / "configs" / "aim-600m.yaml").training.activation_checkpointing == "none"


def test_kill9_then_resume_repeats_the_uninterrupted_losses(tmp_path, shards):
    # log_every 5 vs checkpoint_every 6: a resume lands inside an open log window, which must carry over.
    sets = [f"training.data.shards=['{shards}']", "training.steps=60", "training.checkpoint_every=6",
            "training.global_batch_size=8", "training.data.num_workers=1", "training.log_every=5"]
    ref = _run(_train_cmd(tmp_path / "ref", sets))
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_losses = _losses(tmp_path / "ref")
    logged = list(range(5, 61, 5))
    assert sorted(ref_losses) == logged

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, sets), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = run / "training" / "checkpoints" / "step_0000006" / "COMPLETE"
    deadline = time.time() + 90
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote its first checkpoint"
    assert not (run / "training" / "final").exists(), "the run finished before it could be killed"

    resumed = _run(_train_cmd(run, sets))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    got = _losses(run)
    assert sorted(got) == logged
    for step in logged:
        assert got[step] == pytest.approx(ref_losses[step], abs=1e-6, rel=0), step
    # A falling loss, and the artifacts of a finished run.
    assert sum(list(ref_losses.values())[-3:]) < sum(list(ref_losses.values())[:3])
    final = run / "training" / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert (run / "training" / "loss.png").stat().st_size > 1000
    row = read_metrics(run / "training" / "metrics.jsonl")[-1]
    assert {"step", "loss", "lr", "grad_norm", "images_per_s", "mfu"} <= set(row)

    # The weights load for evaluation from the run dir, the checkpoint dir and the .safetensors file.
    import torch

    from training.checkpoint import load_model_for_eval

    for path in (run / "training", final, final / "model.safetensors", run):
        model, mcfg = load_model_for_eval(path)
        assert mcfg.width == 32 and not model.training
    a = load_model_for_eval(run / "training")[0].state_dict()
    b = load_model_for_eval(tmp_path / "ref" / "training")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Resuming with a differently shaped model stops in one line.
    other = _run(_train_cmd(run, sets + ["training.steps=80", "training.model.width=64"]))
    assert other.returncode != 0
    lines = [line for line in other.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "another model" in lines[0] and "width 32 vs 64" in lines[0]


def test_impossible_shapes_and_missing_shards_fail_in_one_line(tmp_path):
    bad = _run(_train_cmd(tmp_path, ["training.model.heads=5"]))
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "heads 5 do not divide width 32" in lines[0]
    none = _run(_train_cmd(tmp_path, []))
    assert none.returncode == 1
    lines = [line for line in none.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "no training shards found" in lines[0]
    assert not (tmp_path / "training" / "checkpoints").exists()


def _torchrun(workdir: Path, sets: list[str], nproc: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "shared.cli", "train", "--set", f"workdir={workdir}"]
    for s in TINY + sets:
        cmd += ["--set", s]
    return _run(cmd, timeout=150)


def _parity_sets(folder: Path, parallel: str) -> list[str]:
    return [f"training.data.imagenet=['{folder}']", "training.data.mix=[0.0, 1.0]", "training.steps=6",
            "training.checkpoint_every=3", "training.global_batch_size=8", "training.data.num_workers=0",
            f"training.parallel={parallel}"]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """The 1-process reference for the torchrun tests (the ImageNet-style folder and its losses)."""
    root = tmp_path_factory.mktemp("parity")
    folder = write_image_folder(root / "imnet", n_classes=4, per_class=8, size=40)
    one = _run(_train_cmd(root / "one", _parity_sets(folder, "none")))
    assert one.returncode == 0, one.stderr[-2000:]
    return folder, _losses(root / "one")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_torchrun_matches_one_process(tmp_path, parallel, one_process_run):
    folder, a = one_process_run
    sets = _parity_sets(folder, parallel)
    two = _torchrun(tmp_path / "two", sets, 2)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    b = _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    # Same images, same prefixes, same init, and each rank's loss weighted by its share of counted
    # patches: only fp32 summation order differs (matmuls over half the batch, gloo's gradient sum).
    # Measured: at most ~1e-7 relative over 6 steps; 1e-5 leaves room for AdamW amplifying it.
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), (step, a, b)
    # Resume under the same parallelism: drop the last checkpoint, rerun, get the same last steps.
    run = tmp_path / "two" / "training"
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    shutil.rmtree(run / "final")
    again = _torchrun(tmp_path / "two", sets, 2)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "resuming from" in again.stderr + again.stdout
    c = _losses(tmp_path / "two")
    assert sorted(c) == list(range(1, 7))
    for step in a:
        assert c[step] == pytest.approx(b[step], abs=1e-6), (step, b, c)
    state = json.loads((tmp_path / "two" / "training" / "final" / "config.json").read_text())
    assert state["width"] == 32


def test_activation_checkpointing_same_losses_and_no_resume_keeps_the_old_run(tmp_path, shards):
    sets = [f"training.data.shards=['{shards}']", "training.steps=4", "training.checkpoint_every=2",
            "training.global_batch_size=8", "training.data.num_workers=0"]
    plain = _run(_train_cmd(tmp_path, sets))
    assert plain.returncode == 0, plain.stderr[-2000:]
    before = _losses(tmp_path)
    ac = _run(_train_cmd(tmp_path, sets + ["training.activation_checkpointing=full"], ("--no-resume",)))
    assert ac.returncode == 0, ac.stderr[-2000:]
    # Recomputing activations changes memory, not numbers; --no-resume trained from scratch.
    assert _losses(tmp_path) == before
    kept = list((tmp_path / "training").glob("previous-*"))
    assert len(kept) == 1 and (kept[0] / "final" / "model.safetensors").is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "training" / "final" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    with safe_open(str(kept[0] / "final" / "model.safetensors"), "pt") as f:
        assert names == set(f.keys())  # the checkpoint wrapper leaves no trace in the weight names
    # A finished run asked again does nothing and says so.
    again = _run(_train_cmd(tmp_path, sets))
    assert again.returncode == 0 and "already trained" in again.stderr + again.stdout
