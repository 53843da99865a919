"""Faults across the whole pipeline, on real processes and real HTTP.

1. kill -9 of `openaim run` (its whole process group) at a random point inside download, scoring,
   training and probe training, each followed by a rerun: the final shards, the training losses and the
   probe results equal those of an uninterrupted run, and no step that had finished is redone.
2. The mini web's server faults (resets mid-body, stalls past the timeout, 5xx storms, decompression
   bombs, wrong content types, redirect loops) are each counted under a reason in the manifest, none is
   fatal, and no broken or unsafe link ends up in the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.faults.conftest import ROOT, make_workdir, openaim, sets, tiny_overrides


def shard_contents(shards: Path) -> list[tuple[str, str]]:
    """(member name, sha256) of every tar member, in order: equal content whatever the tar headers say."""
    out = []
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read() if member.isfile() else b""
                out.append((f"{tar_path.name}/{member.name}", hashlib.sha256(data).hexdigest()))
    return out


def losses(workdir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (workdir / "training" / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    return [(r["step"], r["loss"]) for r in rows]


def results(workdir: Path) -> pd.DataFrame:
    df = pd.read_csv(workdir / "eval" / "results.csv")
    return df[["checkpoint", "benchmark", "probe", "top1", "top5", "lr", "weight_decay"]] \
        .sort_values(["checkpoint", "benchmark", "probe"]).reset_index(drop=True)


def step_records(workdir: Path) -> dict[str, str]:
    steps = workdir / ".steps"
    return {p.stem: json.loads(p.read_text())["finished_at"] + json.loads(p.read_text())["fingerprint"]
            for p in steps.glob("*.json")} if steps.is_dir() else {}


@pytest.fixture(scope="module")
def reference_run(served_web, tmp_path_factory):
    web_dir, port, _ = served_web
    workdir = make_workdir(tmp_path_factory.mktemp("reference") / "run", web_dir)
    openaim("run", *sets(tiny_overrides(workdir, port)))
    return workdir


# Each kill point: a file that shows the stage is under way.
KILL_POINTS = [
    ("download", lambda w: any((w / "curation" / "pool.partial").glob("*_stats.json"))),
    ("scoring", lambda w: (w / "curation" / "scores").exists()),
    ("training", lambda w: (w / "training" / "metrics.jsonl").exists()
     and len((w / "training" / "metrics.jsonl").read_text().splitlines()) >= 2),
    ("probe training", lambda w: (w / "eval").exists() and any((w / "eval").rglob("*.safetensors"))),
]


def run_and_kill(args: list[str], reached, rng: random.Random, limit: float = 300) -> bool:
    """Start `openaim run`; once `reached()` holds, wait a random moment and kill -9 its process group.
    Returns False if the run finished before the kill point was reached."""
    proc = subprocess.Popen([sys.executable, "-m", "openaim", "run", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if reached():
                time.sleep(rng.uniform(0.0, 0.8))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.05)
        raise AssertionError("kill point never reached")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_kill9_at_each_stage_then_rerun_equals_uninterrupted(served_web, reference_run, tmp_path):
    web_dir, port, _ = served_web
    workdir = make_workdir(tmp_path / "run", web_dir)
    args = sets(tiny_overrides(workdir, port))
    rng = random.Random(1234)
    killed = []
    for stage, reached in KILL_POINTS:
        before = step_records(workdir)
        if run_and_kill(args, lambda reached=reached: reached(workdir), rng):
            killed.append(stage)
        after = step_records(workdir)
        # A step that had finished before this attempt was not redone by it.
        assert {k: v for k, v in after.items() if k in before} == before, stage
    assert {"download", "training"} <= set(killed), f"only killed during {killed}"

    before = step_records(workdir)
    out = openaim("run", *args)
    assert "Traceback" not in out.stderr
    after = step_records(workdir)
    assert {k: v for k, v in after.items() if k in before} == before

    shards = shard_contents(workdir / "curation" / "shards")
    assert shards == shard_contents(reference_run / "curation" / "shards")
    ours, theirs = losses(workdir), losses(reference_run)
    assert [step for step, _ in ours] == [step for step, _ in theirs]
    assert [loss for _, loss in ours] == pytest.approx([loss for _, loss in theirs], abs=1e-6)
    pd.testing.assert_frame_equal(results(workdir), results(reference_run))


def test_server_faults_are_counted_and_never_kept(served_web, reference_run):
    web_dir, _, _ = served_web
    manifest = json.loads((reference_run / "curation" / "manifest.json").read_text())
    failures = manifest["download_failures"]
    assert sum(failures.values()) > 0
    truth = pd.read_parquet(web_dir / "truth.parquet")
    broken = truth[truth.kind == "broken"]
    # Every broken link that reached the downloader is counted as a failure under some reason.
    pool_status = pd.concat([pd.read_parquet(p) for p in sorted((reference_run / "curation" / "pool")
                                                                 .glob("[0-9]*.parquet"))])
    status_by_url = dict(zip(pool_status.url, pool_status.status, strict=True))
    for _, row in broken.iterrows():
        status = status_by_url.get(row.url)
        if status is None:
            continue  # dropped before download (e.g. junk caption)
        if row.reason in ("slow",) and status == "success":
            continue  # a slow answer inside the timeout is a success, not a fault
        assert status != "success", (row.reason, row.url)
    # No broken or unsafe URL is in the shards, and no local file content either.
    kept_urls = set()
    for tar_path in sorted((reference_run / "curation" / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                assert b"root:x:0:0" not in data
                if member.name.endswith(".json"):
                    kept_urls.add(json.loads(data)["url"])
    bad = set(truth[truth.kind.isin(["broken", "unsafe_url"])].url)
    slow = set(truth[(truth.kind == "broken") & (truth.reason == "slow")].url)
    assert not (kept_urls & (bad - slow))
    assert manifest["quality"]["unsafe_urls_requested"] == 0
