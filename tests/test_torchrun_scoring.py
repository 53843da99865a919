"""Scoring under real torchrun (2 CPU processes, gloo) and with DataLoader decode workers: the same score
parts (parts/<shard>.parquet), byte for byte, as one process decoding in-process; the build-dataset score
step (stage cache on rank 0 only) across 2 ranks, rerun reused by every rank; and `build-dataset --steps
score` on two torchrun nodes, one killed -9 mid-shard beside a busy loop, the other finishing the queue."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from curation.parts import read_part
from curation.train_filter import train_filter_network
from shared.miniweb.datasets import write_hq
from tests.test_curation_score import TINY, _make_pool
from tests.test_eval_run_features import run_killing_group

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = tuple(f"parts/{s:05d}.parquet" for s in range(5))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A tiny trained own filter network and a 5-shard pool (uneven over 2 ranks); in shard 2 a whole batch
    of 3 (samples 3-5) does not decode."""
    root = tmp_path_factory.mktemp("tscore")
    write_hq(root, seed=5, side=48, size=48, shard_size=48)
    net_dir = train_filter_network(TINY, root / "hq", root / "net", seed=0)
    _make_pool(root / "pool", root / "hq" / "hq-00000.tar", shards=5, per_shard=11)
    _break_jpgs(root / "pool" / "00002.tar", indices=(3, 4, 5))
    return root, net_dir


@pytest.fixture(scope="module")
def reference(pool, tmp_path_factory):
    """One process, batches of 3 decoded in-process: the outputs every other run must equal."""
    root, net_dir = pool
    ref = tmp_path_factory.mktemp("tscore_ref")
    subprocess.run([sys.executable, "-c", SCRIPT, str(net_dir), str(root / "pool"), str(ref), "0"],
                   check=True, env=ENV, cwd=ref, timeout=300)
    return ref


def _break_jpgs(tar_path: Path, indices: tuple[int, ...]) -> None:
    import webdataset as wds

    samples = list(wds.WebDataset(str(tar_path), shardshuffle=False))
    for i in indices:
        samples[i]["jpg"] = b"\xff\xd8 not a jpeg"
    with wds.TarWriter(str(tar_path)) as sink:
        for s in samples:
            sink.write({k: v for k, v in s.items() if k in ("__key__", "jpg", "txt", "json")})


SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import curation.score as score
    from shared.torchrun import torchrun_stage
    from curation.filter_network import load_filter_network
    from shared.config.curation import FilterNetworkConfig

    scored = []
    real_score_shard = score.score_shard
    def recording_score_shard(shard, *args):  # the real function, noting which rank scored which shard
        scored.append(Path(shard).name)
        return real_score_shard(shard, *args)
    score.score_shard = recording_score_shard

    net = load_filter_network(FilterNetworkConfig(model="own"), Path(sys.argv[1]))
    out = Path(sys.argv[3])
    with torchrun_stage(score.BACKEND, score.WAIT_FOR_RANK0) as (rank, world):  # as build-dataset runs it
        score.score_pool(Path(sys.argv[2]), net, out, batch_size=3, num_workers=int(sys.argv[4]))
    assert len(list((out / "parts").glob("*.parquet"))) == 5
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "scored": scored}))
""")


def test_two_ranks_with_decode_workers_equal_one_in_process_run(pool, reference, tmp_path):
    root, net_dir = pool
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    one, two = reference, tmp_path / "two"
    run_killing_group([*TORCHRUN, str(script), str(net_dir), str(root / "pool"), str(two), "2"], env=ENV,
                      cwd=tmp_path, timeout=300)
    for name in OUTPUTS:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    copies = np.concatenate([read_part(two / name, ("copy",))["copy"] for name in OUTPUTS])
    assert copies.ndim == 3 and copies.shape[0] == 5 * 11 - 3  # the broken jpgs are skipped
    scored = [f"{s:05d}.tar" for s in range(5)]
    assert json.loads((one / "rank0.json").read_text()) == {"world": 1, "scored": scored}
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # The ranks took the shards from the queue: each shard scored once, by one of them.
    assert sorted(ranks[0]["scored"] + ranks[1]["scored"]) == scored

    # A rerun resumes from the parts: no rank scores anything again, the outputs are unchanged.
    run_killing_group([*TORCHRUN, str(script), str(net_dir), str(root / "pool"), str(two), "2"], env=ENV,
                      cwd=tmp_path, timeout=300)
    assert [json.loads((two / f"rank{r}.json").read_text())["scored"] for r in (0, 1)] == [[], []]
    for name in OUTPUTS:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


STEP_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from shared.config.loading import load_config
    from shared.stage_cache import StepSpec
    from openaim.pipeline import run_steps, step_named
    from openaim.steps.base import RunContext
    from curation.score import BACKEND, WAIT_FOR_RANK0
    from shared.torchrun import torchrun_stage

    workdir = Path(sys.argv[1])
    ctx = RunContext(load_config(None, [f"workdir={workdir}", "curation.filter.batch_size=3"]))
    score = step_named("score")
    with torchrun_stage(BACKEND, WAIT_FOR_RANK0) as (rank, world):  # joins the group as build-dataset does
        if rank == 0 and not ctx.cache.load("download"):  # the pool is ready: stand in for earlier steps
            for name in ("download", "train-filter"):
                ctx.cache.record(StepSpec(name, config={"fixture": True}), outputs_hash=name + "-fixture")
        if rank == 0:  # as build-dataset runs it: rank 0 runs the steps, the others join
            run_steps(ctx, [score])
        else:
            score.join(ctx)
    (workdir / f"rank{rank}.json").write_text(json.dumps({"world": world, "ran": ctx.ran,
                                                          "reused": ctx.reused}))
""")


def test_build_dataset_score_step_under_torchrun(pool, reference, tmp_path):
    """The score step as build-dataset runs it: rank 0 owns the stage cache, both ranks score, a rerun is
    reused on every rank (none waits forever), and the outputs equal a 1-process score_pool run."""
    import shutil

    root, net_dir = pool
    work = tmp_path / "run"
    shutil.copytree(root / "pool", work / "curation" / "pool")
    shutil.copytree(net_dir, work / "curation" / "filter")
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    run_killing_group([*TORCHRUN, str(script), str(work)], env=ENV, cwd=tmp_path, timeout=300)
    assert json.loads((work / "rank0.json").read_text()) == {"world": 2, "ran": ["score"], "reused": []}
    assert json.loads((work / "rank1.json").read_text()) == {"world": 2, "ran": [], "reused": []}
    assert json.loads((work / ".steps" / "score.json").read_text())["step"] == "score"
    scores = work / "curation" / "scores"
    assert sorted(p.name for p in (scores / "parts").glob("*")) == [f"{s:05d}.parquet" for s in range(5)]

    for name in OUTPUTS:
        assert (scores / name).read_bytes() == (reference / name).read_bytes(), name

    record = (work / ".steps" / "score.json").read_text()
    run_killing_group([*TORCHRUN, str(script), str(work)], env=ENV, cwd=tmp_path, timeout=300)
    assert json.loads((work / "rank0.json").read_text())["reused"] == ["score"]
    assert (work / ".steps" / "score.json").read_text() == record


# The step script with the workdir a URL: named as text, its rank records written through shared.fsio.
S3_STEP_SCRIPT = STEP_SCRIPT.replace("from pathlib import Path", "from shared import fsio").replace(
    "workdir = Path(sys.argv[1])", "workdir = sys.argv[1]").replace(
    '(workdir / f"rank{rank}.json").write_text(json.dumps(',
    'fsio.write_text(fsio.join(workdir, f"rank{rank}.json"), json.dumps(')


def test_score_step_under_torchrun_with_the_workdir_in_a_bucket(pool, reference, s3_server, tmp_path):
    """The same score step with ``workdir: s3://...`` (moto's S3 server on loopback): both ranks read the
    pool's tars and our filter network from the bucket, take shards through claims created by conditional
    PUTs, and write the parts there; they equal the 1-process local run's, byte for byte."""
    import uuid

    from shared import fsio
    from tests.s3_server import BUCKET

    root, net_dir = pool
    url = f"s3://{BUCKET}/tscore-{uuid.uuid4().hex[:8]}"
    for local, name in ((root / "pool", "pool"), (net_dir, "filter")):
        for path in sorted(p for p in local.iterdir() if p.is_file()):
            fsio.write_bytes(fsio.join(url, "curation", name, path.name), path.read_bytes())
    script = tmp_path / "step.py"
    script.write_text(S3_STEP_SCRIPT)
    run_killing_group([*TORCHRUN, str(script), url], env={**ENV, **s3_server.aws_env}, cwd=tmp_path,
                      timeout=300)
    ranks = [json.loads(fsio.read_bytes(fsio.join(url, f"rank{r}.json"))) for r in (0, 1)]
    assert ranks == [{"world": 2, "ran": ["score"], "reused": []}, {"world": 2, "ran": [], "reused": []}]
    scores = fsio.join(url, "curation", "scores")
    assert fsio.listdir(fsio.join(scores, "parts")) == [f"{s:05d}.parquet" for s in range(5)]
    for name in OUTPUTS:
        assert fsio.read_bytes(fsio.join(scores, name)) == (reference / name).read_bytes(), name
    claims = fsio.listdir(fsio.join(scores, ".claims"))
    assert sorted(c.split(".")[0] for c in claims) == [f"{s:05d}" for s in range(5)]  # one claim each
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()


def _stand_in_for_earlier_steps(work: Path, overrides: list[str]) -> None:
    """Records for download and train-filter matching this config now (their outputs are the fixture's
    pool and network), so `--steps score` finds its input steps fresh."""
    from openaim.pipeline import step_named
    from openaim.steps.base import RunContext
    from shared.config import load_config

    ctx = RunContext(load_config(None, overrides))
    ctx.store.write_json("curation/download_stats.json", {})
    for name in ("download", "train-filter"):
        ctx.cache.record(step_named(name).identity(ctx))


def _claims(scores: Path) -> dict[str, dict]:
    """The claim records written so far (not the temporary sibling of one being written, which its rename
    may take away between the listing and the read)."""
    found = {}
    for p in sorted((scores / ".claims").glob("[!.]*.*")):
        try:
            text = p.read_text()
        except FileNotFoundError:
            continue
        if text:
            found[p.name] = json.loads(text)
    return found


def _stop_mid_shard(node: subprocess.Popen, scores: Path, rank: int, timeout: float) -> tuple[str, int]:
    """Wait until ``rank`` holds a claim whose part is not written, freeze the rank (SIGSTOP, so it cannot
    finish the part in between), and return (claim name, rank pid) once that still holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert node.poll() is None, "the node finished before it was killed"
        for name, record in _claims(scores).items():
            _host, pid, who = record["owner"].split(":")
            if who != f"rank{rank}" or (scores / "parts" / f"{name.split('.')[0]}.parquet").exists():
                continue
            os.kill(int(pid), signal.SIGSTOP)
            if not (scores / "parts" / f"{name.split('.')[0]}.parquet").exists():
                return name, int(pid)
            os.kill(int(pid), signal.SIGCONT)  # it finished the part in between: wait for its next claim
        time.sleep(0.02)
    raise AssertionError(f"rank {rank} never held a claim mid-shard")


def _wait_for_rank_exit(node: subprocess.Popen, scores: Path, rank: int, timeout: float) -> bool:
    """Wait until the process of ``rank`` (its pid from its claims) has exited; False if its node's agent
    exited first."""
    deadline = time.monotonic() + timeout
    pids = set()
    while time.monotonic() < deadline:
        pids |= {int(r["owner"].split(":")[1]) for r in _claims(scores).values()
                 if r["owner"].endswith(f":rank{rank}")}
        if pids and not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        if node.poll() is not None:
            return False
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} still running after {timeout} s")


def test_steps_score_on_two_nodes_one_killed_mid_shard(pool, reference, tmp_path):
    """`build-dataset --steps score` on two torchrun nodes (static rendezvous on 127.0.0.1, one rank each)
    beside a busy loop. Node 1 is killed -9 (agent and rank) while its rank holds a shard it has not
    written: node 0's rank goes on taking shards, takes the dead rank's once its lease has expired, and
    exits when every part exists; the parts equal a one-process run, and the step is recorded."""
    import shutil

    root, net_dir = pool
    work = tmp_path / "run"
    shutil.copytree(root / "pool", work / "curation" / "pool")
    shutil.copytree(net_dir, work / "curation" / "filter")
    lease = 4.0
    overrides = [f"workdir={work}", "curation.filter.batch_size=3", f"curation.filter.lease_s={lease}"]
    _stand_in_for_earlier_steps(work, overrides)
    scores = work / "curation" / "scores"
    port = _free_port()
    nodes = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", str(port),
              "--max-restarts", "0", "-m", "openaim", "build-dataset", "--steps", "score",
              *[a for o in overrides for a in ("--set", o)]] for r in (0, 1)]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, start_new_session=True, stdout=log.open("wb"),
                              stderr=subprocess.STDOUT) for cmd, log in zip(nodes, logs, strict=True)]
    try:
        claim, pid = _stop_mid_shard(procs[1], scores, rank=1, timeout=240)
        os.killpg(procs[1].pid, signal.SIGKILL)  # node 1 is gone: its agent and its rank
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        assert not (work / ".steps" / "score.json").exists(), "the step finished before the kill"
        rank0 = _wait_for_rank_exit(procs[0], scores, rank=0, timeout=240)
    finally:
        busy.kill()
        for proc in procs:  # node 0's agent waits in torchrun's exit barrier for the lost node: stop it
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        busy.wait()
    out = logs[0].read_text(errors="replace")
    # Rank 0 exited on its own, after the score step's success line (the CLI prints it last) and record.
    assert rank0 and f"ran the steps score in {work / 'curation'}" in out, out[-3000:]
    assert procs[1].returncode != 0

    shard, gen = claim.rsplit(".", 1)
    claims = _claims(scores)
    dead = claims[claim]
    taken = claims[f"{shard}.{int(gen) + 1}"]  # the next generation: node 0's rank took it ...
    assert taken["owner"].endswith(":rank0") and taken["taken_from"]["owner"] == dead["owner"]
    assert taken["claimed_at"] >= dead["expires"] >= killed_at - lease  # ... once the lease had expired
    assert json.loads((work / ".steps" / "score.json").read_text())["step"] == "score"
    for name in OUTPUTS:
        assert (scores / name).read_bytes() == (reference / name).read_bytes(), name
