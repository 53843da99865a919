"""Step 2 of curation: fetch the extracted pairs' images with img2dataset into webdataset shards (``pool/``).

img2dataset writes per shard ``NNNNN.tar`` (successes: jpg + txt + json with our ``uid``), ``NNNNN.parquet``
(every input row with ``status`` and ``error_message``) and ``NNNNN_stats.json``, whose presence marks the
shard done: with ``incremental_mode="incremental"`` a killed run resumes and never refetches a finished shard.

The pipeline never downloads into ``pool/`` itself: a new download is fetched into the sibling
``pool.partial/`` (where a killed run also resumes) and swapped in place of ``pool/`` only once it succeeded
(``stage_pool`` then ``swap_in_pool``). A download that fails, in which every request failed, or that is
interrupted leaves the previous ``pool/`` as it was.

Safety: img2dataset fetches whatever it is given, ``file://`` included, and follows redirects on its own.
Its worker processes therefore fetch through ``shared.netsafety.guarded_opener`` (installed in each worker by
``GuardedDownloader``): every connection, redirect hops included, goes only to a checked, pinned address, and
a refused fetch is recorded as "blocked by policy" with nothing about what lay behind it (a name that does
not resolve is refused the same way). URLs that fail the textual check are dropped before the list is handed
over, by the engine tasks that write it (``download_list/``, one parquet file per pairs partition, which
img2dataset reads file by file: no process holds the whole list). Its default opt-out header check
(X-Robots-Tag noai/noimageai/noindex/noimageindex) stays on.
Decompression bombs: OpenCV (which img2dataset decodes with) refuses images over
``OPENCV_IO_MAX_IMAGE_PIXELS`` *before* allocating, which we set from ``cfg.max_image_pixels``;
``max_image_area`` repeats the cap, and PIL's MAX_IMAGE_PIXELS covers our own later decodes.

Processes: with the multiprocessing distributor the download runs in a child process in its own session
(process group) with a watchdog: if build-dataset dies, even by kill -9, the child kills its whole group
(img2dataset's workers, its logger, the resource tracker). build-dataset kills the group on any exit too. A
staged download is resumed only after any process left from a previous run (found by the run token in its
environment) is killed, and only from shards whose files are complete (``verify_shards``).

Distributors: ``multiprocessing`` (default, one machine) or ``pyspark``. With pyspark we reuse the active
SparkSession or start a local one (``local[processes]``). On a real cluster, start the session yourself:

    spark-submit --master spark://HOST:7077 --num-executors 16 --executor-cores 4 \\
        --conf spark.task.maxFailures=100 --py-files openaim.zip \\
        -m shared.cli build-dataset --config my.yaml --set curation.download.distributor=pyspark

(or, in a driver script, build ``SparkSession.builder.master("spark://HOST:7077")...getOrCreate()`` and call
``build_dataset(cfg)``); ``pool/`` must then be on storage every executor can write (HDFS, S3, NFS).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib
import json
import logging
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections import Counter, deque
from pathlib import Path

import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq

from curation.engine import LocalEngine, spark_session
from shared.atomic import atomic_dir, atomic_write_json, finished_files
from shared.config.curation import DownloadConfig
from shared.errors import DiskFullError, InputError, OpenAIMError, disk_full_as_error, disk_full_message
from shared.netsafety import BLOCKED, guarded_opener, url_rejection

# Bump when the downloaded pool change for the same config and inputs: this step and every step after it
# rerun (shared/stage_cache.py). Edits that change no result (comments, refactors) need no bump.
VERSION = 3  # 2: guarded connections, "blocked by policy", damaged shards refetched;
# 3: the download list is a folder, one file per pairs partition (img2dataset shards each file alone)

log = logging.getLogger("openaim.curation")

# Ordered: the first pattern that matches an img2dataset error message names its reason.
_REASONS: list[tuple[str, str]] = [
    (re.escape(BLOCKED), BLOCKED),
    (r"No space left on device|\[Errno 28\]", "disk full"),
    (r"HTTP Error (\d+)", "http {0}"),
    (r"timed? ?out|timeout", "timeout"),
    (r"Connection refused", "connection refused"),
    (r"Connection reset|RemoteDisconnected|BrokenPipe|closed connection", "connection reset"),
    (r"IncompleteRead|truncated", "truncated body"),
    (r"redirect", "redirect loop"),
    (r"X-Robots-Tag", "opted out (x-robots-tag)"),
    (r"image area too large|exceeds limit|too large|pixel", "image too large"),
    (r"decod|cannot identify|Unsupported image", "not an image"),
    (r"Name or service not known|getaddrinfo|nodename", "dns failure"),
    (r"unknown url type|unsafe", "unsafe url"),
]

# Set in the environment of the download process (and so of every process it starts): a later run finds and
# kills whatever a killed run left behind by this token, before it resumes from that run's files.
_RUN_TOKEN_ENV = "OPENAIM_DOWNLOAD_RUN"
_RUN_FILE = ".openaim-download.run"


def normalise_error(message: str | None) -> str:
    """Map an img2dataset error message to a short reason ('http 404', 'timeout', ...)."""
    if not message:
        return "unknown"
    for pattern, label in _REASONS:
        m = re.search(pattern, message, flags=re.IGNORECASE)
        if m:
            return label.format(*m.groups())
    return message.strip().splitlines()[0][:60]


def finished_shards(pool_dir: Path) -> list[Path]:
    """Paths without suffix (``pool/00003``) of the shards img2dataset finished (their stats file exists)."""
    return [Path(p[: -len("_stats.json")]) for p in sorted(glob.glob(str(pool_dir / "[0-9]*_stats.json")))]


def _shard_file(shard: Path, suffix: str) -> Path:
    return shard.with_name(shard.name + suffix)


def failure_histogram(pool_dir: Path) -> dict:
    """Counts of successes and of each normalised failure reason, from the finished shards' parquet files."""
    hist: Counter = Counter()
    n_ok = n_total = 0
    for shard in finished_shards(pool_dir):
        t = pq.read_table(_shard_file(shard, ".parquet"), columns=["status", "error_message"])
        statuses, errors = t.column("status").to_pylist(), t.column("error_message").to_pylist()
        for status, err in zip(statuses, errors, strict=True):
            n_total += 1
            if status == "success":
                n_ok += 1
            else:
                hist[normalise_error(err)] += 1
    return {"requested": n_total, "downloaded": n_ok, "failed": n_total - n_ok,
            "failures": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))}


def _tar_is_complete(path: Path) -> bool:
    """A closed tar ends in whole 512-byte blocks, the last two all zero (end of archive): a write cut short
    does not. O(1): a resume checks every shard without reading the pool."""
    size = path.stat().st_size
    if size < 1024 or size % 512:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1024)
        return f.read(1024) == bytes(1024)


def verify_shards(pool_dir: Path) -> int:
    """Drop finished-looking shards whose stats, tar or parquet is incomplete (a write cut short by a kill or
    a full disk), so a resume fetches them again. Returns how many shards were dropped."""
    dropped = 0
    for shard in finished_shards(pool_dir):
        try:
            json.loads(_shard_file(shard, "_stats.json").read_text())
            pq.read_metadata(_shard_file(shard, ".parquet"))  # the footer: written last
            if not _tar_is_complete(_shard_file(shard, ".tar")):
                raise ValueError("truncated tar")
        except Exception:  # noqa: BLE001 - any damage means: fetch this shard again
            for suffix in ("_stats.json", ".tar", ".parquet"):  # stats first: it marks the shard done
                _shard_file(shard, suffix).unlink(missing_ok=True)
            dropped += 1
    return dropped


def pairs_partitions(pairs_path: Path) -> list[Path]:
    """The pairs partitions: the extract step's ``pairs/part-*.parquet`` (a folder), or one parquet file."""
    return finished_files(pairs_path, "*.parquet") if pairs_path.is_dir() else [pairs_path]


def download_list_part(allow_hosts: list[str], out_dir: Path, part: Path) -> tuple[int, int]:
    """One task: the rows (url, caption, uid) of one pairs partition whose URL passes the textual check, to
    ``out_dir/<part name>`` (none when no row does; ``out_dir`` is swapped in whole); (kept, refused). The
    binding check: on each connection."""
    t = pq.read_table(part, columns=["uid", "url", "caption"])
    keep = [not url_rejection(url, allow_hosts) for url in t.column("url").to_pylist()]
    kept = sum(keep)
    if kept:
        pq.write_table(t.filter(pa.array(keep, type=pa.bool_())), out_dir / part.name)
    return kept, len(keep) - kept


def write_download_list(engine, pairs_path: Path, out_dir: Path,
                        allow_hosts: list[str]) -> tuple[int, Counter]:
    """img2dataset's input: a folder of parquet files, one per pairs partition, written by engine tasks (the
    URL check runs in the tasks; nothing here holds more than the counts). Refusals are counted as "blocked
    by policy" only."""
    with atomic_dir(out_dir) as tmp:
        task = functools.partial(download_list_part, allow_hosts, tmp)
        counts = engine.map(task, pairs_partitions(pairs_path))
    refused = sum(r for _, r in counts)
    return sum(k for k, _ in counts), Counter({BLOCKED: refused} if refused else {})


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
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_img2dataset(cfg: DownloadConfig, url_list: Path, pool_dir: Path, allow_hosts: list[str]) -> None:
    """Call img2dataset in this process (its workers are its children), every fetch through the guard."""
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
        run_img2dataset(DownloadConfig(**args["cfg"]), Path(args["url_list"]), Path(args["pool_dir"]),
                        args["allow_hosts"])
    except BaseException:  # noqa: BLE001 - reported to the parent through the exit status and the output
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def kill_previous_run(pool_dir: Path) -> int:
    """Kill any process still running from an earlier download into ``pool_dir`` (found by the run token in
    its environment, so a reused pid is never mistaken for it). Returns how many were killed."""
    try:
        token = (pool_dir / _RUN_FILE).read_text().strip()
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


def download_in_own_session(cfg: DownloadConfig, url_list: Path, pool_dir: Path,
                            allow_hosts: list[str]) -> None:
    """Run img2dataset in a child process in its own session; kill that whole session whenever we stop."""
    token = uuid.uuid4().hex
    (pool_dir / _RUN_FILE).write_text(token)
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
    code = ("import sys; from curation.download import download_process_main; "
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
        (pool_dir / _RUN_FILE).unlink(missing_ok=True)  # nothing of this run is left to find
    if disk_full.is_set():
        raise DiskFullError(disk_full_message(pool_dir))
    if proc.returncode != 0:
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        raise OpenAIMError(f"download process failed (exit {proc.returncode}): {last}")


def download_pool(cfg: DownloadConfig, pairs_path: Path, pool_dir: Path, allow_hosts: list[str],
                  engine=None) -> dict:
    """Download every safe pair of ``pairs_path`` (a pairs folder or file) into ``pool_dir`` (resumes a killed
    run), return a summary. The download list is written by ``engine``'s tasks (in-process when None).

    Raises InputError when no image at all could be downloaded (the pool would be empty), DiskFullError
    when the disk fills up.
    """
    with disk_full_as_error(pool_dir):
        pool_dir.mkdir(parents=True, exist_ok=True)
        kill_previous_run(pool_dir)
        if verify_shards(pool_dir):
            log.warning("download: damaged shards of an earlier run in %s will be fetched again", pool_dir)
        url_list = pool_dir.parent / "download_list"
        n_safe, rejected = write_download_list(engine or LocalEngine(), pairs_path, url_list, allow_hosts)
        if rejected:
            log.warning("download: %d URLs %s", sum(rejected.values()), BLOCKED)
        if n_safe == 0:
            raise InputError("no downloadable URL: every extracted pair was empty or unsafe")

        # Cap decompression bombs before any pixel buffer is allocated (OpenCV reads this when first used,
        # and img2dataset's worker processes inherit the environment).
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_image_pixels)
        PIL.Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

        done_before = {p.name for p in finished_shards(pool_dir)}
        if cfg.distributor == "pyspark":
            run_img2dataset(cfg, url_list, pool_dir, allow_hosts)  # Spark owns its executors' lifetimes
        else:
            download_in_own_session(cfg, url_list, pool_dir, allow_hosts)
        verify_shards(pool_dir)
        _drop_failed_run(pool_dir, done_before)
        summary = failure_histogram(pool_dir)
    summary["refused_before_download"] = dict(rejected)
    if summary["downloaded"] == 0:
        raise InputError(f"empty pool: all {summary['requested']} downloads failed "
                         f"({', '.join(f'{k}: {v}' for k, v in list(summary['failures'].items())[:3])})")
    return summary


def _drop_failed_run(pool_dir: Path, done_before: set[str]) -> None:
    """If every request of the shards this call fetched failed (server down, network gone), remove those
    shards and raise: kept, they would count as done, and a resume would never fetch them again."""
    new = [s for s in finished_shards(pool_dir) if s.name not in done_before]
    if not new or any(json.loads(_shard_file(s, "_stats.json").read_text()).get("successes", 0) for s in new):
        return
    hist: Counter = Counter()
    for shard in new:
        parquet = _shard_file(shard, ".parquet")
        if parquet.is_file():
            hist.update(normalise_error(e) for e in pq.read_table(parquet, columns=["error_message"])
                        .column("error_message").to_pylist())
        for suffix in ("_stats.json", ".tar", ".parquet"):  # the stats file first: it marks the shard done
            _shard_file(shard, suffix).unlink(missing_ok=True)
    raise InputError(f"download failed: all {sum(hist.values())} requests of this run failed "
                     f"({', '.join(f'{k}: {v}' for k, v in hist.most_common(3))})")


# The state of a staged download. Not named *.json: img2dataset's resume reads every *.json as shard stats.
_STATE = ".openaim-download.state"


def staging_dir(pool_dir: Path) -> Path:
    """Where a new pool is downloaded (and a killed download resumes) before it replaces ``pool_dir``."""
    return pool_dir.with_name(pool_dir.name + ".partial")


def _old_dir(pool_dir: Path) -> Path:
    return pool_dir.with_name(pool_dir.name + ".old")


def _state(folder: Path) -> dict:
    try:
        return json.loads((folder / _STATE).read_text())
    except (OSError, ValueError):
        return {}


def _finish_interrupted_swap(pool_dir: Path) -> None:
    """A run killed mid-swap: put the previous pool back if the new one never arrived, else drop it."""
    old = _old_dir(pool_dir)
    if old.exists():
        if pool_dir.exists():
            shutil.rmtree(old)
        else:
            old.rename(pool_dir)


def stage_pool(cfg: DownloadConfig, pairs_path: Path, pool_dir: Path, allow_hosts: list[str],
               fingerprint: str, restart: bool = False, engine=None) -> None:
    """Get a finished download for ``fingerprint`` (the download step's fingerprint) ready to swap in, without
    touching ``pool_dir``: download it into ``staging_dir(pool_dir)``, resuming a killed download of the same
    fingerprint there (unless ``restart``). Nothing to do if ``pool_dir`` already holds it (its step record
    was lost). Raises InputError, ``pool_dir`` untouched, when no image could be downloaded."""
    _finish_interrupted_swap(pool_dir)
    if not restart and _state(pool_dir).get("fingerprint") == fingerprint:
        return
    stage = staging_dir(pool_dir)
    state = _state(stage)
    if stage.exists() and (restart or state.get("fingerprint") != fingerprint):
        shutil.rmtree(stage)  # an abandoned download of other settings (or --force): start afresh
        state = {}
    if state.get("complete"):
        return
    stage.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage / _STATE, {"fingerprint": fingerprint, "complete": False})
    try:
        summary = download_pool(cfg, pairs_path, stage, allow_hosts, engine)
    except InputError as exc:
        kept = (f"{pool_dir.name}/ was kept as it was" if pool_dir.exists()
                else f"no {pool_dir.name}/ was made")
        raise InputError(f"{exc}; {kept}") from None
    atomic_write_json(stage / _STATE, {"fingerprint": fingerprint, "complete": True, "summary": summary})


def swap_in_pool(pool_dir: Path, fingerprint: str) -> dict:
    """Put the finished staged download in place of ``pool_dir`` (rename the old one away, the new one in,
    delete the old one) and return its download summary. Each rename is atomic, and a run killed between
    them is repaired by the next ``stage_pool``."""
    _finish_interrupted_swap(pool_dir)
    stage, old = staging_dir(pool_dir), _old_dir(pool_dir)
    state = _state(stage)
    if state.get("complete") and state.get("fingerprint") == fingerprint:
        if pool_dir.exists():
            pool_dir.rename(old)
        stage.rename(pool_dir)
        if old.exists():
            shutil.rmtree(old)
    state = _state(pool_dir)
    if not (state.get("complete") and state.get("fingerprint") == fingerprint):
        raise OpenAIMError(f"no finished download to put in place of {pool_dir}: rerun to download it")
    return state["summary"]

