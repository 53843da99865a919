"""training.timeouts under real torchrun (2 CPU processes, gloo, DDP): once the first step has run, a rank
that stops answering (SIGSTOP: a hung peer, its sockets still open) ends the run after about step_s, not
after startup_s, with one error line on the rank that waited."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.test_train_loop import ROOT, _env, _torchrun_cmd
from training.synthetic import write_image_folder

STEP_S, STARTUP_S = 5, 600


def _worker_of_rank(agent: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=rank (a child of the agent)."""
    found = subprocess.run(["pgrep", "-P", str(agent)], capture_output=True, text=True, check=False)
    children = found.stdout.split()
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for the agent to read its exit code."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _steps_done(metrics: Path) -> int:
    try:
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return max((r["step"] for r in rows), default=0)


def test_a_hung_peer_after_the_first_step_is_detected_within_step_s(tmp_path):
    folder = write_image_folder(tmp_path / "imnet", n_classes=2, per_class=8, size=40)
    sets = [f"training.data.imagenet=['{folder}']", "training.data.mix=[0.0, 1.0]", "training.steps=100000",
            "training.global_batch_size=4", "training.data.num_workers=0", "training.parallel=ddp",
            "training.checkpoint_every=100000", f"training.timeouts.step_s={STEP_S}",
            f"training.timeouts.startup_s={STARTUP_S}"]
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(_torchrun_cmd(tmp_path / "w", sets, 2), cwd=ROOT, env=_env(), stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    stopped = None
    try:
        metrics = tmp_path / "w" / "training" / "metrics.jsonl"
        deadline = time.monotonic() + 240
        while _steps_done(metrics) < 3:  # steps run: the short timeout is in force
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        waiting, stopped = _worker_of_rank(agent.pid, 0), _worker_of_rank(agent.pid, 1)
        os.kill(stopped, signal.SIGSTOP)
        hung_at = time.monotonic()
        while "error:" not in log.read_text(errors="replace"):
            assert time.monotonic() - hung_at < 120, log.read_text()[-3000:]
            time.sleep(0.1)
        detected_after = time.monotonic() - hung_at
        while not _exited(waiting):  # rank 0 ends on its own, with its own exit code
            assert time.monotonic() - hung_at < 120, log.read_text()[-3000:]
            time.sleep(0.1)
        os.kill(stopped, signal.SIGKILL)  # spares the agent's 30 s wait for a stopped process to take SIGTERM
        agent.wait(timeout=120)
    finally:
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    text = log.read_text(errors="replace")
    assert agent.returncode != 0
    assert "exitcode  : 4" in text  # rank 0's PeerError, as torchrun's failure report shows it
    # step_s plus the time rank 0 needs to reach its next collective on a loaded machine; far below startup_s
    assert detected_after < STEP_S + 40, (detected_after, text[-3000:])
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    assert "timeouts.step_s" in errors[0] and "Traceback" not in text.split(errors[0])[0][-2000:], errors[0]
