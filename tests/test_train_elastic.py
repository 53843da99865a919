"""Two "nodes" on one host: two torchrun agents (`--nnodes 1:2 --nproc_per_node 2`, c10d rendezvous on
127.0.0.1, `--max-restarts`), HSDP replicating across them (tiny model, gloo, CPU).

- One agent and its workers are killed with kill -9 after the first DCP checkpoint: the other agent
  re-forms the job alone (world 4 -> 2), resumes from the last checkpoint and finishes, with the losses
  of an uninterrupted 4-process run (accumulation keeps the global batch: 2 micro-batches per rank at
  world 4, 4 at world 2).
- A second agent joining a running 1-node job is taken in at the next restart point (world 2 -> 4),
  with the same losses.

The rendezvous settings shorten torchrun's defaults (a dead node is dropped after 3 missed 1 s
heartbeats instead of 3 x 5 s; a round closes 1 s after its minimum of nodes instead of 30 s) so the
file stays quick; they change when, not whether, the job re-forms."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import descendants, signal_all
from training.metrics import read_metrics
from training.synthetic import write_image_folder

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 15, 5
# 16 patches of 8 px; lr 1e-4 keeps rounding-level differences between world sizes below 1e-5
# (see tests/test_train_loop.py::_parity_sets).
TINY = ["training.model.width=32", "training.model.depth=2", "training.model.heads=2",
        "training.model.img_size=32", "training.model.patch_size=8", "training.model.head_width=32",
        "training.model.head_depth=1", "training.log_every=1"]
RDZV_CONF = "last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=3"


def _sets(folder: Path) -> list[str]:
    # The ImageNet-style folder only: a step's images are global slots, the same at any world size.
    return TINY + [f"training.data.imagenet=['{folder}']", "training.data.mix=[0.0, 1.0]",
                   f"training.steps={STEPS}", f"training.checkpoint_every={EVERY}", "training.optim.lr=1e-4",
                   "training.global_batch_size=8", "training.micro_batch_size=1",
                   "training.data.num_workers=0", "training.parallel=hsdp", "training.fsdp.shard_size=2"]


def _env(share_store: bool = True) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), LOGLEVEL="INFO")
    if not share_store:
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(workdir: Path, folder: Path) -> list[str]:
    args = ["-m", "openaim", "train", "--set", f"workdir={workdir}"]
    for s in _sets(folder):
        args += ["--set", s]
    return args


def _agent(workdir: Path, folder: Path, port: int, log: Path, is_host: bool,
           share_store: bool = True) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc_per_node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "openaim-elastic",
           "--rdzv-conf", f"is_host={int(is_host)},{RDZV_CONF}", "--max-restarts", "3",
           "--monitor-interval", "0.2", *_train_args(workdir, folder)]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(share_store), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "training" / "metrics.jsonl")}


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert all(p.poll() is None for p in procs), "an agent exited before " + path.name
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


def _finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> str:
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_all([proc.pid, *descendants(proc.pid)], signal.SIGKILL)
            proc.wait()
    text = "\n".join(log.read_text() for log in logs)
    for proc in procs:
        assert proc.returncode == 0, text[-4000:]
    return text


def _resumed_step(log_text: str) -> int:
    found = re.findall(r"resuming from \S+step_(\d{7}) \(step", log_text)
    assert found, "no restart resumed from a checkpoint"
    return int(found[-1])


def _assert_losses_equal(got: dict[int, float], ref: dict[int, float]) -> None:
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1)), (got, ref)
    for step, want in ref.items():
        assert got[step] == pytest.approx(want, abs=1e-5, rel=0), (step, got[step], want)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """The image folder and the losses of an uninterrupted 4-process HSDP run (2 x 2 mesh)."""
    root = tmp_path_factory.mktemp("elastic")
    folder = write_image_folder(root / "imnet", n_classes=4, per_class=8, size=40)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
           *_train_args(root / "ref", folder)]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return folder, _losses(root / "ref")


def test_a_killed_node_leaves_and_the_survivor_finishes_with_the_same_losses(tmp_path, reference):
    folder, ref = reference
    port, run = _free_port(), tmp_path / "run"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = _agent(run, folder, port, logs[0], is_host=True)  # hosts the rendezvous store: it must survive
    b = _agent(run, folder, port, logs[1], is_host=False)
    ckpts = run / "training" / "checkpoints"
    _wait_for(ckpts / f"step_{EVERY:07d}", [a, b])

    # Kill -9 agent B and its workers (torchrun starts them in sessions of their own: by pid), frozen
    # first so the snapshot of where the run was holds.
    victims = [b.pid, *descendants(b.pid)]
    assert len(victims) >= 3, victims  # the agent and its 2 workers
    signal_all(victims, signal.SIGSTOP)
    at_kill = max(_losses(run), default=0)
    signal_all(victims, signal.SIGKILL)
    b.wait()
    deadline = time.time() + 30
    while not all(_gone(p) for p in victims) and time.time() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in victims), [p for p in victims if not _gone(p)]
    # Mid-run: after the first checkpoint, before the last step.
    assert EVERY <= at_kill < STEPS and not (run / "training" / "final").exists(), at_kill

    text = _finish([a], logs[:1])
    assert "(4 x 1 -> 2 x 1)" in text  # the re-formed job runs on A's 2 processes
    assert re.search(r"rank 1 of 2 joining the process group .* torchrun restart 1", text)
    resumed = _resumed_step(text)
    assert EVERY <= resumed <= at_kill
    assert (run / "training" / "final" / "COMPLETE").is_file()
    _assert_losses_equal(_losses(run), ref)


def test_a_node_joining_a_running_job_is_taken_in_at_the_next_restart(tmp_path, reference):
    """Joining needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on the agents (docs/scale.md): with the shared
    store, the agent that stays node rank 0 does not publish the new round's store address and the
    newcomer's agent fails after 60 s waiting for it (torch 2.14, dynamic_rendezvous.next_rendezvous)."""
    folder, ref = reference
    port, run = _free_port(), tmp_path / "run"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = _agent(run, folder, port, logs[0], is_host=True, share_store=False)
    _wait_for(run / "training" / "checkpoints" / f"step_{EVERY:07d}", [a])
    # Hold A's workers still so that B's arrival lands mid-run on this tiny, fast job; A's agent keeps
    # watching the rendezvous meanwhile and restarts its workers when it sees B waiting.
    workers = descendants(a.pid)
    signal_all(workers, signal.SIGSTOP)
    at_join = max(_losses(run), default=0)
    assert EVERY <= at_join < STEPS, at_join
    b = _agent(run, folder, port, logs[1], is_host=False, share_store=False)
    deadline = time.time() + 120
    while "will restart worker group" not in logs[0].read_text():
        assert b.poll() is None and time.time() < deadline, logs[1].read_text()[-3000:]
        time.sleep(0.05)
    signal_all(workers, signal.SIGCONT)  # they take the agent's SIGTERM now

    text = _finish([a, b], logs)
    assert "(2 x 1 -> 4 x 1)" in text  # the new round runs on both agents' processes
    resumed = _resumed_step(text)
    assert EVERY <= resumed <= at_join
    _assert_losses_equal(_losses(run), ref)
