"""Running img2dataset for the download step: every fetch guarded, in a process session of its own.

Safety: img2dataset fetches whatever it is given, ``file://`` included, and follows redirects on its own.
Its workers therefore fetch through ``curation.netsafety.guarded_opener`` (installed in each worker by
``GuardedDownloader``): every connection, redirect hops included, goes only to a checked, pinned address.

Processes: with the multiprocessing distributor the download runs in a child process in its own session
(process group) with a watchdog: if build-dataset dies, even by kill -9, the child kills its whole group
(img2dataset's workers, its logger, the resource tracker). build-dataset kills the group on any exit too. A
staged download is resumed only after any process left from a previous run (found by the run token in its
environment) is killed (``kill_previous_run``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import signal
import site
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections import deque
from pathlib import Path
from unittest import mock

from curation.engine import spark_session
from curation.netsafety import guarded_opener
from curation.pool import finished_shards, normalise_error
from shared import fsio
from shared.config.curation import DownloadConfig
from shared.errors import DiskFullError, OpenAIMError, disk_full_message

log = logging.getLogger("openaim.curation")

# Set in the environment of the download process (and so of every process it starts): a later run finds and
# kills whatever a killed run left behind by this token, before it resumes from that run's files.
_RUN_TOKEN_ENV = "OPENAIM_DOWNLOAD_RUN"
_RUN_FILE = ".openaim-download.run"


_installed_policy: tuple[str, ...] | None = None


def install_guard(allow_hosts: tuple[str, ...]) -> None:
    """Make this process's ``urllib.request.urlopen`` (what img2dataset fetches with) the guarded opener."""
    global _installed_policy
    if _installed_policy != allow_hosts:
        urllib.request.install_opener(guarded_opener(allow_hosts))
        _installed_policy = allow_hosts


class GuardedDownloader:
    """img2dataset's Downloader, called with the guarded opener installed in whichever worker process runs it
    (multiprocessing spawn workers and Spark executors unpickle this object before their first shard)."""
    def __init__(self, downloader, allow_hosts: tuple[str, ...]) -> None:
        self.downloader = downloader
        self.allow_hosts = allow_hosts

    def __call__(self, row):
        install_guard(self.allow_hosts)
        return self.downloader(row)


def _guarded_downloader(allow_hosts: tuple[str, ...], **kwargs) -> GuardedDownloader:
    # On use: img2dataset loads only in the download process, once _quiet_library_output set its environment.
    from img2dataset.downloader import Downloader

    return GuardedDownloader(Downloader(**kwargs), allow_hosts)


@contextlib.contextmanager
def _quiet_library_output():
    """img2dataset's worker processes import albumentations (which warns and checks PyPI for updates) and draw
    tqdm bars on stderr: a failed build must end in one error line. Environment set only for the call."""
    quiet = {"NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1",
             "PYTHONWARNINGS": "ignore::UserWarning,ignore::DeprecationWarning"}
    with mock.patch.dict(os.environ, quiet):
        yield


def run_img2dataset(cfg: DownloadConfig, url_list: str, pool_dir: str, allow_hosts: list[str]) -> None:
    """Call img2dataset in this process (its workers are its children), every fetch through the guard. The
    list and the pool are paths or URLs: img2dataset reads and writes both through fsspec itself."""
    with _quiet_library_output():
        # Imported here, not at module top: the environment above must be set before img2dataset loads.
        # (By module name: the package's attribute ``main`` is its CLI function, not the module.)
        img2dataset_main = importlib.import_module("img2dataset.main")

        # img2dataset builds its Downloader by this name; ours wraps it so each worker installs the guard.
        plain_downloader = img2dataset_main.Downloader
        img2dataset_main.Downloader = functools.partial(_guarded_downloader, tuple(allow_hosts))
        spark, own_spark = (None, False)
        if cfg.distributor == "pyspark":
            spark, own_spark = spark_session(cfg.processes, app="openaim-download")
        previous_sigint = signal.getsignal(signal.SIGINT)
        try:
            img2dataset_main.download(
                url_list=str(url_list), input_format="parquet", url_col="url", caption_col="caption",
                save_additional_columns=["uid"], output_folder=str(pool_dir), output_format="webdataset",
                image_size=cfg.image_size, resize_mode=cfg.resize_mode, processes_count=cfg.processes,
                thread_count=cfg.threads, number_sample_per_shard=cfg.samples_per_shard, timeout=cfg.timeout,
                retries=cfg.retries, distributor=cfg.distributor, incremental_mode="incremental",
                max_image_area=float(cfg.max_image_pixels), compute_hash="sha256", enable_wandb=False,
                subjob_size=1000, oom_shard_count=5,
            )
        except SystemExit:
            # img2dataset's own Ctrl-C handler cleans up and calls sys.exit(0): an interrupt, not a success.
            raise KeyboardInterrupt from None
        finally:
            img2dataset_main.Downloader = plain_downloader
            signal.signal(signal.SIGINT, previous_sigint)  # img2dataset never puts the previous handler back
            if own_spark and spark is not None:
                spark.stop()


def _watch_parent(parent_pid: int) -> None:
    """In the download process: once build-dataset is gone (even killed by SIGKILL, which runs no cleanup
    there), kill this whole process group: img2dataset's workers, its logger and the resource tracker."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="openaim-parent-watchdog", daemon=True).start()


def download_process_main(args_json: str) -> None:
    """Entry point of the download process started by ``download_in_own_session``."""
    args = json.loads(args_json)
    _watch_parent(args["parent_pid"])
    try:
        run_img2dataset(DownloadConfig(**args["cfg"]), args["url_list"], args["pool_dir"],
                        args["allow_hosts"])
    except BaseException:  # noqa: BLE001 - reported to the parent through the exit status and the output
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def kill_previous_run(pool_dir: str) -> int:
    """Kill any process still running on this machine from an earlier download into ``pool_dir`` (found by
    the run token in its environment, so a reused pid is never mistaken for it). Returns how many were
    killed."""
    try:
        token = fsio.read_bytes(fsio.join(pool_dir, _RUN_FILE)).decode().strip()
    except OSError:
        return 0
    needle = f"{_RUN_TOKEN_ENV}={token}".encode()
    killed = 0
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        except OSError:
            continue
    if killed:
        time.sleep(0.2)  # let the kernel tear them down before their files are inspected
        log.warning("download: killed %d process(es) left running by an earlier download into %s",
                    killed, pool_dir)
    return killed


def download_in_own_session(cfg: DownloadConfig, url_list: str, pool_dir: str,
                            allow_hosts: list[str]) -> None:
    """Run img2dataset in a child process in its own session; kill that whole session whenever we stop."""
    token = uuid.uuid4().hex
    fsio.write_text(fsio.join(pool_dir, _RUN_FILE), token)
    # The child imports this very code: from a checkout, its root goes on PYTHONPATH. An installed package
    # needs none, and site-packages on PYTHONPATH would shadow the standard library with old backports
    # (img2dataset requires the py3.6 `dataclasses`).
    root = Path(__file__).resolve().parents[1]
    installed = root in {Path(p).resolve() for p in site.getsitepackages()}
    env = {**os.environ, _RUN_TOKEN_ENV: token, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in ("" if installed else str(root),
                                                     os.environ.get("PYTHONPATH")) if p)}
    args = {"cfg": cfg.model_dump(), "url_list": str(url_list), "pool_dir": str(pool_dir),
            "allow_hosts": list(allow_hosts), "parent_pid": os.getpid()}
    code = ("import sys; from curation.img2dataset_run import download_process_main; "
            "download_process_main(sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: deque[str] = deque(maxlen=30)
    disk_full = threading.Event()

    def pump() -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if normalise_error(line) == "disk full":
                disk_full.set()
            tail.append(line)
            log.debug("img2dataset: %s", line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        next_report = time.monotonic() + 10
        while proc.poll() is None:
            time.sleep(0.2)
            if time.monotonic() >= next_report:
                log.info("download: %d shards finished", len(finished_shards(pool_dir)))
                next_report += 10
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child is gone or interrupted: nothing of it may stay
        proc.wait()
        reader.join(timeout=5)
        fsio.remove(fsio.join(pool_dir, _RUN_FILE))  # nothing of this run is left to find
    if disk_full.is_set():
        raise DiskFullError(disk_full_message(pool_dir))
    if proc.returncode != 0:
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        raise OpenAIMError(f"download process failed (exit {proc.returncode}): {last}")
