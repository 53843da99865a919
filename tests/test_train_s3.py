"""Training against object storage on moto's S3 server on loopback (the s3_server fixture): shards listed
and read from s3:// through shared.fsio, DCP checkpoints written there (FsspecWriter) and committed by
COMPLETE written last; kill -9 mid-run and rerun resumes from the last committed checkpoint in the
bucket and ends where an uninterrupted run ends: in one process, and under torchrun with 2 ranks (FSDP,
every rank writing its shards to the bucket) where one worker is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from shared import fsio
from shared.config.loading import load_config
from shared.wds_reader import read_samples
from tests.processes import descendants, signal_all, with_env
from tests.s3_server import BUCKET
from tests.spark_cluster import free_port
from tests.test_train_loop import ROOT, _env, _losses, _run, _train_cmd
from training import checkpoint as ck
from training.loop import _decide_resume
from training.shards import expand_shards
from training.synthetic import write_synthetic_shards


@pytest.fixture
def prefix(s3_server) -> str:
    """A fresh s3:// prefix of the test bucket."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3_shards")
    write_synthetic_shards(root, n_shards=4, per_shard=24, size=40, seed=0)
    return root


def _upload(local: Path, url: str) -> None:
    for path in sorted(local.glob("*.tar")):
        fsio.write_bytes(fsio.join(url, path.name), path.read_bytes())


def test_layer_lists_reads_writes_and_commits_on_s3_as_on_disk(prefix, tmp_path):
    for root in (prefix, str(tmp_path / "local")):
        fsio.makedirs(fsio.join(root, "shards"))
        for i in (0, 1, 3):
            fsio.write_bytes(fsio.join(root, "shards", f"s-{i:04d}.tar"), b"x" * i)
        fsio.write_bytes(fsio.join(root, "shards", "notes.txt"), b"")
        found, missing = fsio.expand([fsio.join(root, "shards", "s-{0000..0003}.tar"),
                                      fsio.join(root, "shards", "*.txt")])
        assert [fsio.name_of(f) for f in found] == ["s-0000.tar", "s-0001.tar", "s-0003.tar", "notes.txt"]
        assert all(f.startswith(root) for f in found)  # URLs stay URLs (protocol and bucket kept)
        assert missing == [fsio.join(root, "shards", "s-0002.tar")]
        assert [fsio.name_of(f) for f in fsio.glob(fsio.join(root, "shards", "s-*.tar"))] == \
            ["s-0000.tar", "s-0001.tar", "s-0003.tar"]
        assert fsio.read_bytes(fsio.join(root, "shards", "s-0003.tar")) == b"xxx"

        # A folder counts once its record is written last; a rebuilt one starts empty.
        final = fsio.join(root, "ckpt", "step_0000001")
        building = fsio.build_dir(final)
        fsio.write_bytes(fsio.join(building, "a.bin"), b"a")
        assert not fsio.isfile(fsio.join(final, "COMPLETE"))
        fsio.commit_dir(building, final, "COMPLETE")
        assert fsio.listdir(final) == ["COMPLETE", "a.bin"]
        assert fsio.listdir(fsio.join(root, "ckpt")) == ["step_0000001"]  # no temp folder left
        with fsio.local_dir(fsio.join(root, "ckpt", "step_0000001", "sub")) as folder:
            (folder / "b.bin").write_bytes(b"b")
        assert fsio.read_bytes(fsio.join(final, "sub", "b.bin")) == b"b"
        fsio.remove(final)
        assert not fsio.exists(fsio.join(final, "a.bin")) and fsio.listdir(final) == []


def test_shards_read_from_s3_are_the_local_samples(prefix, local_shards):
    _upload(local_shards, fsio.join(prefix, "shards"))
    urls = expand_shards([fsio.join(prefix, "shards", "shard-{00000..00003}.tar")])
    assert len(urls) == 4 and all(u.startswith("s3://") for u in urls)
    assert expand_shards([fsio.join(prefix, "shards", "*.tar")]) == urls
    for url, path in zip(urls, sorted(local_shards.glob("*.tar")), strict=True):
        remote, local = list(read_samples(url)), list(read_samples(path))
        assert len(remote) == 24
        assert [{k: v for k, v in s.items() if k != "__url__"} for s in remote] == \
            [{k: v for k, v in s.items() if k != "__url__"} for s in local]
        assert remote[0]["__url__"] == url
    # A missing object is the handler's to skip, as a missing local file is.
    errors: list[Exception] = []
    assert list(read_samples(fsio.join(prefix, "shards", "gone.tar"),
                             handler=lambda exc: errors.append(exc) or True)) == []
    assert len(errors) == 1 and isinstance(errors[0], FileNotFoundError)


def _final_weights(url: str | Path) -> dict[str, torch.Tensor]:
    return load_safetensors(fsio.read_bytes(fsio.join(url, ck.MODEL_FILE)))


def test_kill9_mid_run_resumes_from_the_last_committed_checkpoint_in_the_bucket(prefix, local_shards,
                                                                              tmp_path):
    shards = fsio.join(prefix, "shards")
    _upload(local_shards, shards)
    sets = [f"training.data.shards=['{shards}/shard-{{00000..00003}}.tar']", "training.steps=36",
            "training.checkpoint_every=6", "training.global_batch_size=8", "training.data.num_workers=1",
            "training.log_every=4"]
    logged = list(range(4, 37, 4))

    ref_root = fsio.join(prefix, "ref")
    ref = _run(_train_cmd(tmp_path / "ref", [*sets, f"training.checkpoint_root={ref_root}"]))
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_losses = _losses(tmp_path / "ref")
    assert sorted(ref_losses) == logged
    # Everything of the checkpoints is in the bucket, nothing on local disk.
    assert not (tmp_path / "ref" / "training" / "checkpoints").exists()
    assert [s for s, _ in ck.resumable_checkpoints(ref_root)] == [30, 36]  # keep_last 2
    assert fsio.isfile(fsio.join(ck.step_dir(ref_root, 36), ck.DCP_DIR, ".metadata"))

    root = fsio.join(prefix, "killed")
    run = tmp_path / "killed"
    cmd = _train_cmd(run, [*sets, f"training.checkpoint_root={root}"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = fsio.join(ck.step_dir(root, 6), ck.COMPLETE)
    deadline = time.time() + 120
    while not fsio.isfile(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The kill landed mid-run: after the first committed checkpoint, before the last step.
    assert fsio.isfile(first), "the run never committed its first checkpoint"
    committed = [s for s, _ in ck.resumable_checkpoints(root)]
    assert committed and committed[-1] < 36, committed
    assert not (run / "training" / "final").exists(), "the run finished before it could be killed"

    resumed = _run(_train_cmd(run, [*sets, f"training.checkpoint_root={root}"]))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {ck.step_dir(root, committed[-1])}" in resumed.stderr + resumed.stdout
    got = _losses(run)
    assert sorted(got) == logged
    for step in logged:
        assert got[step] == pytest.approx(ref_losses[step], abs=1e-6, rel=0), step
    # The final weights: the consolidated safetensors in the bucket, and final/ made from them.
    a, b = _final_weights(ck.step_dir(root, 36)), _final_weights(ck.step_dir(ref_root, 36))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = load_safetensors((run / "training" / "final" / ck.MODEL_FILE).read_bytes())
    assert all(torch.equal(final[k], a[k]) for k in a)
    assert fsio.isfile(fsio.join(ck.step_dir(root, 36), ck.MLAIM_DIR, "backbone.pth"))

    assert "UserWarning" not in resumed.stderr

    # --no-resume cannot set a bucket's checkpoints aside (no rename there): it refuses, nothing removed.
    tcfg = load_config(None, [f"training.checkpoint_root={root}"]).training
    decision = _decide_resume(tcfg, run / "training", resume=False)
    assert root in decision["error"] and "--no-resume" in decision["error"]
    assert [s for s, _ in ck.resumable_checkpoints(root)] == [30, 36]


# -- 2 ranks under torchrun: FSDP's sharded DCP checkpoint in the bucket, one worker killed -----------------

def _torchrun_cmd(workdir: Path, sets: list[str]) -> list[str]:
    """torchrun with 2 CPU workers (gloo) and a c10d rendezvous on 127.0.0.1; no restarts: a dead worker
    ends the job, and the rerun resumes it."""
    port = free_port()
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"s3-{port}",
            "--max-restarts", "0", "--monitor-interval", "0.2", *_train_cmd(workdir, sets)[1:]]


def test_two_ranks_kill9_one_worker_rerun_resumes_from_the_bucket(prefix, local_shards, tmp_path):
    shards = fsio.join(prefix, "shards")
    _upload(local_shards, shards)
    steps, every = 24, 4
    sets = [f"training.data.shards=['{shards}/shard-{{00000..00003}}.tar']", f"training.steps={steps}",
            f"training.checkpoint_every={every}", "training.global_batch_size=8",
            "training.data.num_workers=0", "training.log_every=2", "training.parallel=fsdp"]
    logged = list(range(2, steps + 1, 2))

    ref_root = fsio.join(prefix, "ref")
    ref = _run(_torchrun_cmd(tmp_path / "ref", [*sets, f"training.checkpoint_root={ref_root}"]), timeout=300)
    assert ref.returncode == 0, (ref.stdout + ref.stderr)[-3000:]
    ref_losses = _losses(tmp_path / "ref")
    assert sorted(ref_losses) == logged
    # Sharded: each rank wrote its own part of model and optimizer through DCP's fsspec writer.
    last = ck.step_dir(ref_root, steps)
    assert len(fsio.glob(fsio.join(last, ck.DCP_DIR, "*.distcp"))) == 2
    assert fsio.isfile(fsio.join(last, ck.DCP_DIR, ".metadata")) and fsio.isfile(fsio.join(last, ck.COMPLETE))

    root = fsio.join(prefix, "killed")
    run = tmp_path / "killed"
    cmd = _torchrun_cmd(run, [*sets, f"training.checkpoint_root={root}"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = fsio.join(ck.step_dir(root, every), ck.COMPLETE)
    deadline = time.time() + 240
    while not fsio.isfile(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    rank1 = with_env(descendants(proc.pid), "RANK", "1")
    signal_all(rank1, signal.SIGKILL)
    try:
        proc.wait(timeout=120)  # torchrun sees the dead worker, stops the other and ends the job
    finally:
        signal_all([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
        proc.wait()
    # The kill landed mid-run: on one worker, after the first committed checkpoint, before the last step.
    assert len(rank1) == 1, "no rank-1 worker found under torchrun"
    assert fsio.isfile(first), "the run never committed its first checkpoint"
    assert proc.returncode != 0
    committed = [s for s, _ in ck.resumable_checkpoints(root)]
    assert committed and committed[-1] < steps, committed
    assert not (run / "training" / "final").exists(), "the run finished before it could be killed"

    resumed = _run(_torchrun_cmd(run, [*sets, f"training.checkpoint_root={root}"]), timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert f"resuming from {ck.step_dir(root, committed[-1])}" in resumed.stderr + resumed.stdout
    got = _losses(run)
    assert sorted(got) == logged
    for step in logged:
        assert got[step] == ref_losses[step], (step, got[step], ref_losses[step])
    a, b = _final_weights(run / "training" / "final"), _final_weights(tmp_path / "ref" / "training" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Nothing uncommitted is left in the bucket: the rerun removed what the killed save had written.
    assert fsio.listdir(fsio.join(root, "checkpoints")) == \
        [fsio.name_of(d) for _, d in ck.resumable_checkpoints(root)]
