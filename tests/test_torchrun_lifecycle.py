"""Every torchrun stage exits cleanly (shared.torchrun.torchrun_stage): the group is destroyed and its
threads gone after the stage, success or not; a failed rank exits with its own code and its peer with a
PeerError instead of hanging; and a 2-rank `openaim eval` (features sharded across the ranks, the probe
jobs split across them, rank 0 gathering the records) run 10 times beside a busy loop exits 0 every
time, with no abort at interpreter exit (seen in CI: "terminate called without an active exception",
exit -6, after the results were written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_eval_run import write_shape_benchmark
from tests.test_eval_run_features import tiny_aim
from tests.test_torchrun_probes import ENV, ROOT, TORCHRUN, run_eval

RUNS = 10

# One rank's view of the life cycle: its threads (gloo's are native: counted in /proc) before joining,
# inside the stage and after it; whether a group is left; how the stage ended. FAIL_RANK's body raises.
STAGE_SCRIPT = """
import json, os, sys, time
import torch, torch.distributed as dist
from shared.errors import OpenAIMError
from shared.torchrun import torchrun_stage

def threads():
    return len(os.listdir("/proc/self/task"))

out, fail_rank = sys.argv[1], int(sys.argv[2])
rank = int(os.environ["RANK"])
seen = {"before": threads()}
try:
    with torchrun_stage():
        dist.all_reduce(torch.ones(2))
        seen["inside"] = threads()
        if rank == fail_rank:
            raise ValueError("this rank's work failed")
    seen["ended"] = "ok"
except (ValueError, OpenAIMError) as exc:
    seen["ended"] = type(exc).__name__
seen["after"], seen["group_left"] = threads(), dist.is_initialized()
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(seen, f)
if rank == fail_rank:
    time.sleep(10)  # the agent stops the other ranks once one exits: let the peer record its own outcome
sys.exit(0 if seen["ended"] == "ok" else 3)
"""


def _stage(tmp_path: Path, fail_rank: int) -> tuple[int, dict[int, dict]]:
    script, out = tmp_path / "stage.py", tmp_path / f"out{fail_rank}"
    script.write_text(STAGE_SCRIPT)
    out.mkdir()
    done = subprocess.run([*TORCHRUN, str(script), str(out), str(fail_rank)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=180, check=False)
    return done.returncode, {r: json.loads((out / f"rank{r}.json").read_text())
                             for r in range(2) if (out / f"rank{r}.json").is_file()}


def test_the_stage_leaves_no_group_and_no_thread_behind(tmp_path):
    code, ranks = _stage(tmp_path, fail_rank=-1)
    assert code == 0 and sorted(ranks) == [0, 1]
    for seen in ranks.values():
        assert seen["ended"] == "ok" and not seen["group_left"]
        # gloo's threads come with the group and go with it
        assert seen["inside"] > seen["before"] and seen["after"] == seen["before"], seen


def test_a_failed_rank_exits_with_its_own_code_and_its_peer_does_not_hang(tmp_path):
    code, ranks = _stage(tmp_path, fail_rank=1)
    assert code != 0 and sorted(ranks) == [0, 1], ranks
    assert ranks[1]["ended"] == "ValueError"  # the body's own error, not a barrier's
    assert ranks[0]["ended"] == "PeerError"  # its barrier met a peer that had left
    for seen in ranks.values():
        assert not seen["group_left"] and seen["after"] == seen["before"], seen


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One tiny checkpoint and one small benchmark, shared by every run."""
    from training.checkpoint import write_checkpoint

    root = tmp_path_factory.mktemp("lifecycle")
    bench = root / "shapes"
    write_shape_benchmark(bench, {"train": 4, "test": 2})
    model, model_cfg = tiny_aim(seed=1)
    ckpt = root / "ckpts" / "tinyckpt"
    write_checkpoint(ckpt, model.state_dict(), model_cfg, None)
    return ckpt, bench


def _minimal_eval(work: Path, ckpt: Path, bench: Path) -> list[str]:
    """The least work that still crosses ranks: one trunk, one benchmark, two probe jobs (one per rank),
    one setting, one epoch."""
    sets = [f"workdir={work}", "name=lc", f"evaluation.checkpoints=['{ckpt}']",
            "evaluation.random_baseline=false", f"evaluation.benchmarks=['imagefolder:{bench}']",
            f"evaluation.data_root={work / 'none'}",
            "evaluation.n_blocks=1", "evaluation.batch_size=16", "evaluation.threads=1",
            "evaluation.probe.epochs=1", "evaluation.probe.batch_size=16", "evaluation.probe.lrs=[1e-3]",
            "evaluation.probe.weight_decays=[1e-4]"]
    return [a for s in sets for a in ("--set", s)]


def test_two_rank_eval_exits_cleanly_every_time_under_load(inputs, tmp_path):
    ckpt, bench = inputs
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for i in range(RUNS):
            work = tmp_path / f"run{i}"
            work.mkdir()
            log = run_eval(TORCHRUN, work, _minimal_eval(work, ckpt, bench))
            assert "terminate called" not in log, log[-3000:]
            assert log.count("rank 0 of 2 trains") == 1 and log.count("rank 1 of 2 trains") == 1, log[-3000:]
            results = [json.loads(p.read_text()) for p in (work / "eval" / "results").rglob("*.json")]
            assert len(results) == 1 and list(results[0]["probes"]) == ["attentive", "linear"]
        assert busy.poll() is None  # the load ran beside every run
    finally:
        busy.kill()
        busy.wait()
