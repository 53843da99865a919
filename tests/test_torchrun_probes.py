"""`openaim eval` under real torchrun (2 CPU processes, gloo): the probe jobs (checkpoint x benchmark x
probe kind) are split across the ranks and rank 0 writes the same result files, stage records and
chosen settings as a 1-process run; a torchrun rerun trains nothing; a checkpoint in a bucket is downloaded
once per host, not once per rank."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.test_eval_run import write_shape_benchmark
from tests.test_eval_run_features import tiny_aim

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
JOBS = 2 * 2 * 2  # checkpoints x benchmarks x probe kinds


def _overrides(work: Path, ckpt: Path, bench: Path) -> list[str]:
    sets = [f"workdir={work}", "name=tp", f"evaluation.checkpoints=['{ckpt}']",
            "evaluation.random_baseline=true",
            f"evaluation.benchmarks=[digits, 'imagefolder:{bench}']", f"evaluation.data_root={work / 'none'}",
            "evaluation.n_blocks=2", "evaluation.batch_size=64", "evaluation.max_train_per_benchmark=120",
            "evaluation.probe.epochs=4", "evaluation.probe.batch_size=32",
            "evaluation.probe.lrs=[1e-3, 1e-2]", "evaluation.probe.weight_decays=[1e-4, 1e-2]"]
    return [a for s in sets for a in ("--set", s)]


def _eval(launcher: list[str], work: Path, ckpt: Path, bench: Path) -> str:
    return run_eval(launcher, work, _overrides(work, ckpt, bench))


def run_eval(launcher: list[str], work: Path, overrides: list[str], env: dict[str, str] | None = None) -> str:
    """Run `openaim eval` (its output goes to a file: a pipe could fill up); on timeout kill the group."""
    log = work.parent / f"{work.name}.log"
    cmd = [*launcher, "-m", "openaim", "eval", *overrides]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                                env={**ENV, **(env or {})}, cwd=work.parent)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-process eval, then a 2-process torchrun eval on the same feature files (copied: the features'
    own sharding is tested in test_eval_run_features), then a torchrun rerun."""
    from training.checkpoint import write_checkpoint

    root = tmp_path_factory.mktemp("tprobes")
    bench = root / "shapes"
    write_shape_benchmark(bench, {"train": 12, "test": 6})
    model, model_cfg = tiny_aim(seed=1)
    ckpt = root / "ckpts" / "tinyckpt"
    write_checkpoint(ckpt, model.state_dict(), model_cfg, None)
    one, two = root / "one", root / "two"
    one.mkdir()
    log_one = _eval([sys.executable], one, ckpt, bench)
    shutil.copytree(one / "eval" / "features", two / "eval" / "features")
    log_two = _eval(TORCHRUN, two, ckpt, bench)
    stamps = {p: p.stat().st_mtime_ns for p in [*(two / "eval" / "results").rglob("*.json"),
                                                  *(two / "eval" / "features").rglob("*.safetensors"),
                                                  *(two / ".steps").glob("*.json")]}
    log_rerun = _eval(TORCHRUN, two, ckpt, bench)
    return {"one": one, "two": two, "logs": (log_one, log_two, log_rerun), "stamps": stamps, "ckpt": ckpt,
            "bench": bench}


def _results(work: Path) -> dict[str, dict]:
    root = work / "eval" / "results"
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def _same_results(one: dict[str, dict], two: dict[str, dict], differ: tuple[str, ...] = ()) -> None:
    """Two runs' result records agree: every key but wall times (and ``differ``), probes to 1e-6."""
    assert len(one) == 4 and sorted(one) == sorted(two)
    for name, a in one.items():
        b = two[name]
        assert set(a) == set(b)
        for key in a:
            if key not in ("probes", "seconds", *differ):
                assert a[key] == b[key], (name, key)
        assert list(a["probes"]) == list(b["probes"]) == ["attentive", "linear"]
        for kind, pa in a["probes"].items():
            pb = b["probes"][kind]
            assert (pa["lr"], pa["weight_decay"]) == (pb["lr"], pb["weight_decay"]), (name, kind)
            for metric in ("top1", "top5", "mean_per_class_recall", "val_top1"):
                assert pb[metric] == pytest.approx(pa[metric], abs=1e-6), (name, kind, metric)
            assert pb["grid_val_top1"] == pytest.approx(pa["grid_val_top1"], abs=1e-6)


def test_two_ranks_write_what_one_process_writes(runs):
    _same_results(_results(runs["one"]), _results(runs["two"]))

    def rows(work):
        with open(work / "eval" / "results.csv") as f:
            return list(csv.DictReader(f))

    rows_one, rows_two = rows(runs["one"]), rows(runs["two"])
    assert len(rows_one) == JOBS and [r["probe"] for r in rows_one] == [r["probe"] for r in rows_two]
    for ra, rb in zip(rows_one, rows_two, strict=True):
        for key, value in ra.items():
            if key in ("top1", "top5", "mean_per_class_recall"):
                assert float(rb[key]) == pytest.approx(float(value), abs=1e-6)
            else:
                assert rb[key] == value, key
    missing = [(runs[name] / "eval" / "missing.json").read_text() for name in ("one", "two")]
    assert missing[0] == missing[1]

    # The stage records: one per checkpoint x benchmark, with the same fingerprints as the 1-process run.
    def records(work):
        return {p.name: json.loads(p.read_text())["fingerprint"]
                for p in (work / ".steps").glob("eval-probe-*.json")}

    assert len(records(runs["one"])) == 4 and records(runs["one"]) == records(runs["two"])


def test_jobs_are_split_across_ranks_and_a_rerun_trains_nothing(runs):
    log_one, log_two, log_rerun = runs["logs"]
    assert "trains" not in log_one  # one process: no rank lines
    assert log_two.count("rank 0 of 2 trains") == JOBS // 2
    assert log_two.count("rank 1 of 2 trains") == JOBS // 2
    assert "trains" not in log_rerun and "top-1" not in log_rerun
    assert runs["stamps"] == {p: p.stat().st_mtime_ns for p in runs["stamps"]}


def test_two_ranks_download_a_bucket_checkpoint_once_per_host(runs, s3_server, tmp_path):
    """The same checkpoint in a bucket (moto's S3 server on loopback), evaluated by 2 ranks on one host:
    moto's request log holds one GET of its weights (local rank 0 fetched them, rank 1 read that copy),
    the host copy is gone afterwards, and the results are the 1-process local-disk run's."""
    from shared import fsio
    from tests.s3_server import BUCKET
    from training.checkpoint import CONFIG_FILE, MODEL_FILE

    prefix = f"{uuid.uuid4().hex[:8]}/tinyckpt"  # the same name as the local checkpoint: the same records
    url = f"s3://{BUCKET}/{prefix}"
    for name in (MODEL_FILE, CONFIG_FILE):
        fsio.write_bytes(fsio.join(url, name), (runs["ckpt"] / name).read_bytes())
    work = tmp_path / "bucket"
    # the features of the same weights (keyed by their hash): this run's trunk work is the download
    shutil.copytree(runs["one"] / "eval" / "features", work / "eval" / "features")
    temp = tmp_path / "temp"
    temp.mkdir()

    def gets() -> int:
        """GETs of the weights in moto's request log, whole or ranged (its colour codes removed)."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", s3_server.log_path.read_text())
        return text.count(f'"GET /{BUCKET}/{prefix}/{MODEL_FILE} HTTP/')

    assert gets() == 0
    log = run_eval(TORCHRUN, work, _overrides(work, url, runs["bench"]),
                   env={**s3_server.aws_env, "TMPDIR": str(temp)})
    assert log.count("rank 0 of 2 trains") == log.count("rank 1 of 2 trains") == JOBS // 2
    assert gets() == 1
    assert not list(temp.glob("openaim-weights-*")) and not list(temp.glob(".openaim-weights-*"))
    got = _results(work)
    assert {r["checkpoint_path"] for r in got.values()} == {url, None}
    _same_results(_results(runs["one"]), got, differ=("checkpoint_path",))
