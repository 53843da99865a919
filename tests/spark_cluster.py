"""A real Spark standalone cluster on loopback for the tests: one master and N workers, each its own JVM.

Started with pyspark's ``spark-class`` and the deploy Master/Worker classes, bound to 127.0.0.1 on ports
chosen at run time, 1 core and a small memory per worker. ``StandaloneCluster`` waits until the master's
JSON (its web UI's ``/json``) lists every worker ALIVE, and on exit stops them and kills anything left
whose working folder is under the cluster's folder (executor JVMs and their Python workers: a worker
killed with -9 cannot stop its own executors).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_class() -> str:
    """pyspark's launcher script, beside this interpreter (the venv's bin/) or on PATH."""
    beside = Path(sys.executable).parent / "spark-class"
    found = str(beside) if beside.is_file() else shutil.which("spark-class")
    if not found:
        raise RuntimeError("spark-class not found: pyspark is not installed in this environment")
    return found


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only: the cluster's own UIs
        return json.loads(r.read())


def _pids_under(folder: Path) -> list[int]:
    """Processes whose working folder is under ``folder`` (this cluster's executors and Python workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(int(entry.name))
    return found


class StandaloneCluster:
    """``with StandaloneCluster(root, workers=2) as c:`` a master at ``c.master_url`` with its workers."""

    def __init__(self, root: Path, workers: int = 2, worker_memory: str = "1g", env: dict | None = None,
                 start_timeout: float = 120.0) -> None:
        self.root = Path(root).resolve()
        self.n_workers, self.worker_memory, self.start_timeout = workers, worker_memory, start_timeout
        self.env = {**(env or os.environ), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
                    "PYSPARK_PYTHON": sys.executable}
        self.port, self.ui_port = free_port(), free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.master_ui = f"http://127.0.0.1:{self.ui_port}"
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.worker_uis: list[str] = []

    def _start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process for its life
        # spark-class execs the JVM, so the pid is the JVM's; its own session keeps signals apart.
        return subprocess.Popen([spark_class(), *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=self.root, start_new_session=True)

    def start_worker(self) -> int:
        """Start one more worker (1 core); returns its index."""
        i = len(self.workers)
        work = self.root / f"worker{i}"
        (work / "local").mkdir(parents=True, exist_ok=True)
        ui_port = free_port()
        env = {**self.env, "SPARK_LOCAL_DIRS": str(work / "local")}
        self.workers.append(self._start(f"worker{i}", [
            "org.apache.spark.deploy.worker.Worker", self.master_url, "--host", "127.0.0.1",
            "--webui-port", str(ui_port), "--cores", "1", "--memory", self.worker_memory,
            "--work-dir", str(work)], env))
        self.worker_uis.append(f"http://127.0.0.1:{ui_port}")
        return i

    def state(self) -> dict:
        return get_json(f"{self.master_ui}/json")

    def alive_workers(self) -> list[dict]:
        try:
            return [w for w in self.state()["workers"] if w["state"] == "ALIVE"]
        except OSError:
            return []

    def wait_for_workers(self, n: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while len(self.alive_workers()) < n:
            for proc in [self.master, *self.workers]:
                if proc.poll() is not None:
                    raise RuntimeError(f"a Spark daemon exited with {proc.returncode}: see {self.root}/*.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} Spark workers not registered in {self.start_timeout:.0f} s")
            time.sleep(0.5)

    def worker_json(self, i: int) -> dict:
        return get_json(f"{self.worker_uis[i]}/json")

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.master = self._start("master", [
                "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port),
                "--webui-port", str(self.ui_port)], self.env)
            for _ in range(self.n_workers):
                self.start_worker()
            self.wait_for_workers(self.n_workers)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        daemons = [p for p in [*self.workers, self.master] if p is not None]
        for proc in daemons:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # a worker stops its executors on SIGTERM
        for proc in daemons:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in _pids_under(self.root):  # what a killed worker left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
