"""Curation steps where they belong: `build-dataset --steps`, and the documented spark-submit recipe on a
real Spark standalone cluster on loopback with one worker killed.

`--steps` on a copy of a local run: a step whose input step (not listed) is stale is refused in one line
naming it, with nothing written; listing that step too runs both, reusing the rest.

A master and two 1-core workers, each its own JVM (tests/spark_cluster.py). A small mini web is curated
once with the local engine (the reference). A copy of that run, whose extract, dedup, safety and select
records and outputs are removed, is built by the spark-submit command quoted in docs/scale.md, run
verbatim but for the master URL and the config path. When a dedup task has written shuffle output on an
executor (Spark's REST API: a finished task of a running dedup job with shuffle bytes written), every
executor is stopped (SIGSTOP), the stage is checked to be still running, and that executor's worker JVM
and everything under it are killed with -9 (the host is gone) before the other executor goes on. The
job must finish; the event log must show the lost shuffle output computed again on another executor,
under the recipe's spark.task.maxFailures; every output file must equal the local engine's byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import yaml

from tests.processes import signal_all
from tests.spark_cluster import StandaloneCluster, _pids_under, free_port, get_json

pytest.importorskip("pyspark")

ROOT = Path(__file__).resolve().parents[1]
# The smallest mini web whose pool has exact and near copies and eval leaks; 10 pool shards make 10 tasks
# per dedup stage, so the kill lands while dedup's jobs run.
WEB = {"n_images": 200, "hq_size": 200, "bench_train_per_class": 2, "bench_test_per_class": 2,
       "slow_seconds": 1}
CURATION = {"download": {"samples_per_shard": 20, "timeout": 1, "processes": 1},
            "train_filter": {"epochs": 1}}
RERUN = ("extract", "dedup", "safety", "select")
# What those steps write, compared byte for byte with the local engine's (the rest is reused).
OUTPUTS = ("pairs", "extract_stats.json", "dedup", "safety", "shards", "subset", "subset.npy",
           "select_stats.json")


def documented_command(master_url: str, config: Path) -> str:
    """The fenced block after the spark-submit recipe's marker in docs/scale.md, placeholders filled."""
    text = (ROOT / "docs" / "scale.md").read_text()
    found = re.search(r"<!-- spark-submit recipe:.*?-->\s*```sh\n(.*?)```", text, re.DOTALL)
    assert found, "docs/scale.md has no marked spark-submit recipe"
    command = found.group(1)
    assert "spark://HOST:7077" in command and "my.yaml" in command
    return command.replace("spark://HOST:7077", master_url).replace("my.yaml", str(config))


def write_config(path: Path, workdir: Path, port: int, web: Path, **extra) -> Path:
    """configs/demo.yaml with the small web, this workdir and port (a config file stands alone). Every run
    reads the WARCs of the one web folder ``web`` (local sources are identified by path, size and time,
    so a run folder's own web/ link would make its extract a different input)."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["workdir"] = str(workdir)
    cfg["web"] |= WEB | {"port": port}
    extra = {"extract": {"sources": [str(web / "warc")]}} | extra
    for section, values in (CURATION | extra).items():
        cfg["curation"][section] = cfg["curation"].get(section, {}) | values
    cfg["curation"]["task_bytes"] = 1  # one task per score part, so dedup's stages have many tasks
    path.write_text(yaml.safe_dump(cfg))
    return path


def digests(curation: Path) -> dict[str, str]:
    out = {}
    for name in OUTPUTS:
        top = curation / name
        for path in sorted([top] if top.is_file() else top.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(curation))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _shuffle_writer(ui: str) -> dict | None:
    """A finished task that wrote shuffle output in a map stage of a dedup job that is still running (so
    the stage's output is still needed), as the driver's REST API shows it: {"app", "stage", "partition",
    "executor"}; None while there is none."""
    apps = get_json(f"{ui}/api/v1/applications")
    if not apps:
        return None
    app = apps[0]["id"]
    dedup = {stage for job in get_json(f"{ui}/api/v1/applications/{app}/jobs?status=running")
             if job.get("jobGroup") == "dedup" for stage in job["stageIds"]}
    if not dedup:
        return None
    for stage in get_json(f"{ui}/api/v1/applications/{app}/stages?status=active&details=true"):
        # a stage still to finish (kill_worker_mid_dedup checks it again with every executor stopped)
        if stage["stageId"] not in dedup or stage["numTasks"] == stage["numCompleteTasks"]:
            continue
        for t in (stage.get("tasks") or {}).values():
            written = t.get("taskMetrics", {}).get("shuffleWriteMetrics", {}).get("bytesWritten", 0)
            if t["status"] == "SUCCESS" and written > 0:
                return {"app": app, "stage": stage["stageId"], "partition": t["partitionId"],
                        "executor": t["executorId"]}
    return None


def _unfinished_tasks(ui: str, app: str, stage: int) -> int:
    """Tasks of an active ``stage`` not yet finished, as the driver's REST API shows it (0: not active)."""
    for s in get_json(f"{ui}/api/v1/applications/{app}/stages?status=active"):
        if s["stageId"] == stage:
            return s["numTasks"] - s["numCompleteTasks"]
    return 0


def kill_worker_mid_dedup(cluster: StandaloneCluster, ui: str, driver: subprocess.Popen,
                          workdir: Path, timeout: float) -> dict:
    """Wait for a dedup task's shuffle output, then kill -9 the worker JVM whose executor wrote it and every
    process under that worker's folder (its executor JVM and Python workers). Returns what was killed.

    Tasks of the small pool take milliseconds, so a stage seen running may have ended before a kill lands
    (then its output may have been read whole already, and nothing needs computing again). So every
    executor is first stopped (SIGSTOP: no task can finish), the stage is checked to be still running
    while they are stopped, and only then is the worker killed and the survivor let go on; a stage that
    ended in the meantime lets every executor go on and the search starts again."""
    deadline = time.monotonic() + timeout
    while True:
        assert driver.poll() is None, "the build finished before a dedup task wrote shuffle output"
        assert time.monotonic() < deadline, "no dedup shuffle output seen in time"
        try:
            writer = _shuffle_writer(ui)
        except (URLError, ConnectionError, TimeoutError, ValueError):  # the driver's UI is not up yet
            writer = None
        if writer is None:
            time.sleep(0.1)
            continue
        executors = [_pids_under(cluster.root / f"worker{i}") for i in range(len(cluster.workers))]
        signal_all([pid for pids in executors for pid in pids], signal.SIGSTOP)
        # status updates already on their way reach the driver; then nothing changes while they are stopped
        time.sleep(1.0)
        unfinished = _unfinished_tasks(ui, writer["app"], writer["stage"])
        time.sleep(0.5)
        if unfinished and _unfinished_tasks(ui, writer["app"], writer["stage"]) == unfinished:
            break
        signal_all([pid for pids in executors for pid in pids], signal.SIGCONT)
    worker = next(i for i in range(len(cluster.workers))
                  if any(str(e["id"]) == writer["executor"] for e in cluster.worker_json(i)["executors"]))
    os.kill(cluster.workers[worker].pid, signal.SIGKILL)
    signal_all(executors[worker], signal.SIGKILL)
    signal_all([pid for i, pids in enumerate(executors) if i != worker for pid in pids], signal.SIGCONT)
    dedup = workdir / "curation" / "dedup"
    finished = (workdir / ".steps" / "dedup.json").exists() or (dedup / "stats.json").exists()
    return writer | {"worker": worker, "killed": len(executors[worker]) + 1, "dedup_finished": finished,
                     "unfinished_tasks": unfinished}


def read_events(folder: Path) -> list[dict]:
    (log,) = [p for p in folder.iterdir() if p.name.startswith("app-")]
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, int]:
    """(folder, web port): the small mini web (folder/web) curated by the local engine into folder/ref."""
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    started = time.monotonic()
    root, port = tmp_path_factory.mktemp("cluster"), free_port()
    config = write_config(root / "ref.yaml", root / "ref", port, root / "web")
    generate_web(load_config(config, []).web, root / "web")
    (root / "ref").mkdir()
    (root / "ref" / "web").symlink_to(root / "web", target_is_directory=True)
    with serve_in_background(root / "web", host="127.0.0.1", port=port):
        local = subprocess.run([sys.executable, "-m", "openaim", "build-dataset", "--config", str(config)],
                               check=False, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    print(f"wall: local reference build {time.monotonic() - started:.0f} s")
    return root, port


def test_documented_spark_submit_survives_a_killed_worker(local_run, tmp_path):
    root, port = local_run
    ref, run, env = root / "ref", tmp_path / "run", _env()
    started = time.monotonic()
    run.mkdir()
    (run / "web").symlink_to(root / "web", target_is_directory=True)

    # The Spark run: a copy of the local run without the steps that run as Spark tasks.
    shutil.copytree(ref / "curation", run / "curation")
    shutil.copytree(ref / ".steps", run / ".steps")
    for step in RERUN:
        (run / ".steps" / f"{step}.json").unlink()
    for name in OUTPUTS:
        path = run / "curation" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_config = write_config(tmp_path / "run.yaml", run, port, root / "web")

    conf, events = tmp_path / "spark-conf", tmp_path / "events"
    conf.mkdir()
    events.mkdir()
    ui_port = free_port()
    # Settings of this machine, not of the recipe: the driver UI's port, an event log, small executors.
    (conf / "spark-defaults.conf").write_text(
        f"spark.ui.port {ui_port}\nspark.eventLog.enabled true\nspark.eventLog.dir file://{events}\n"
        "spark.eventLog.rolling.enabled false\nspark.eventLog.compress false\n"
        "spark.executor.memory 512m\nspark.driver.memory 1g\nspark.ui.showConsoleProgress false\n"
        "spark.shuffle.readHostLocalDisk false\n")
    command = documented_command("MASTER", run_config)
    with StandaloneCluster(tmp_path / "cluster", workers=2, env=env) as cluster:
        up_s = time.monotonic() - started
        driver = subprocess.Popen(["bash", "-c", command.replace("MASTER", cluster.master_url)], cwd=ROOT,
                                  env={**env, "SPARK_CONF_DIR": str(conf)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            killed = kill_worker_mid_dedup(cluster, f"http://127.0.0.1:{ui_port}", driver, run, timeout=400)
            out, _ = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
        log = out.decode(errors="replace")
        assert driver.returncode == 0, log[-4000:]
        dead = [w for w in cluster.state()["workers"] if w["state"] == "DEAD"]
        assert len(dead) == 1 and len(cluster.alive_workers()) == 1
    spark_s = time.monotonic() - started - up_s

    # The kill landed in the middle of dedup: before its outputs and record, after its first shuffle output.
    assert not killed["dedup_finished"], killed
    assert killed["killed"] >= 2, f"the worker had no executor process: {killed}"

    records = read_events(events)
    props = next(e["Spark Properties"] for e in records if e["Event"] == "SparkListenerEnvironmentUpdate")
    props = dict(props) if isinstance(props, list) else props
    assert props["spark.task.maxFailures"] == "8"
    assert props["spark.master"] == cluster.master_url
    removed = [e for e in records if e["Event"] == "SparkListenerExecutorRemoved"]
    assert [e["Executor ID"] for e in removed] == [killed["executor"]]
    # The killed executor's shuffle output was computed again, by another executor, before dedup went on.
    done = [(e["Task Info"]["Executor ID"], e["Stage Attempt ID"]) for e in records
            if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] == killed["stage"]
            and e["Task Info"]["Partition ID"] == killed["partition"]
            and e["Task End Reason"]["Reason"] == "Success"]
    assert done[0][0] == killed["executor"] and len(done) >= 2, done
    assert all(executor != killed["executor"] for executor, _ in done[1:]), done

    # Spark ran the steps it should, and every output is the local engine's, byte for byte.
    manifest = json.loads((run / "curation" / "manifest.json").read_text())
    assert manifest["ran"] == list(RERUN) and "download" in manifest["reused"]
    assert digests(run / "curation") == digests(ref / "curation")
    ref_manifest = json.loads((ref / "curation" / "manifest.json").read_text())
    per_run = ("ran", "reused", "config_hash")  # which steps ran, and the config (engine, workdir) differ
    assert {k: v for k, v in manifest.items() if k not in per_run} == \
           {k: v for k, v in ref_manifest.items() if k not in per_run}
    print(f"wall: cluster up {up_s:.0f} s, spark-submit run with the kill {spark_s:.0f} s")


def _build(config: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "openaim", "build-dataset", "--config", str(config), *args]
    return subprocess.run(command, check=False, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)


def test_steps_runs_a_subset_and_refuses_a_stale_input(local_run, tmp_path):
    from tests.cli_output import problem_lines

    root, port = local_run
    run = tmp_path / "run"
    shutil.copytree(root / "ref", run, symlinks=True)
    config = write_config(tmp_path / "run.yaml", run, port, root / "web", dedup={"near_threshold": 0.8})
    records = {p.name: p.read_bytes() for p in (run / ".steps").iterdir()}
    manifest = (run / "curation" / "manifest.json").read_bytes()

    out = _build(config, "--steps", "select")
    assert out.returncode != 0
    assert problem_lines(out.stderr) == [("error: --steps select: its input step dedup is not fresh (config "
                                          "curation.dedup.near_threshold: 0.9 -> 0.8); run `build-dataset "
                                          "--steps dedup` first")]
    assert {p.name: p.read_bytes() for p in (run / ".steps").iterdir()} == records
    assert (run / "curation" / "manifest.json").read_bytes() == manifest

    out = _build(config, "--steps", "select,dedup")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "curation" / "manifest.json").read_text())["ran"] == ["dedup", "select"]
    after = {p.name: p.read_bytes() for p in (run / ".steps").iterdir()}
    assert {name for name in records if after[name] != records[name]} == {"dedup.json", "select.json"}

    # A subset that stops before select (here: the scores, fresh) reuses them and writes no manifest.
    out = _build(config, "--steps", "score")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"ran the steps score in {run / 'curation'}"
    assert {p.name: p.read_bytes() for p in (run / ".steps").iterdir()} == after
