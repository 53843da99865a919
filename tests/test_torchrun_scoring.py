"""Scoring under real torchrun (2 CPU processes, gloo) and with DataLoader decode workers: the same score
parts (parts/<shard>.parquet), byte for byte, as one process decoding in-process; and the
build-dataset score step (stage cache on rank 0 only) across 2 ranks, rerun reused by every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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
        scored.append(shard.name)
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
    assert ranks[0]["scored"] == ["00000.tar", "00002.tar", "00004.tar"]
    assert ranks[1]["scored"] == ["00001.tar", "00003.tar"]

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
    from curation.pipeline import _Steps
    from curation.score import BACKEND, WAIT_FOR_RANK0
    from shared.torchrun import torchrun_stage

    workdir = Path(sys.argv[1])
    cfg = load_config(None, [f"workdir={workdir}", "curation.filter.batch_size=3"])
    steps = _Steps(cfg, False, None)
    with torchrun_stage(BACKEND, WAIT_FOR_RANK0) as (rank, world):  # joins the group as build-dataset does
        if rank == 0 and not steps.cache.load("download"):  # the pool is ready: stand in for earlier steps
            for name in ("download", "train-filter"):
                steps.cache.record(StepSpec(name, config={"fixture": True}), outputs_hash=name + "-fixture")
        steps.score()
    (workdir / f"rank{rank}.json").write_text(json.dumps({"world": world, "ran": steps.ran,
                                                          "reused": steps.reused}))
""")


def test_build_dataset_score_step_under_torchrun(pool, reference, tmp_path):
    """`_Steps.score` as build-dataset runs it: rank 0 owns the stage cache, both ranks score, a rerun is
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
