"""The engine that runs curation's partition functions: here (``local``) or as Spark tasks (``spark``).

Every curation step after download is written as functions over partitions (a source file, a pool
shard, a bucket of hashed keys); an engine only has to do two things with them:

- ``map(fn, items)``: run ``fn(item)`` for every item, return the (small) results in item order;
- ``group_reduce(items, emit, reduce, buckets)``: ``emit(item)`` yields ``(bucket, value)`` rows,
  every row of bucket b reaches ``reduce(b, rows)`` (one call per bucket), whose small results come back
  in bucket order. This is the shuffle a global grouping needs (pairs by URL, images by sha256,
  embeddings by cluster). The order rows reach ``reduce`` in is the engine's: reducers sort.

Partition functions write their real outputs (parquet parts, tars) to storage every task can reach
and return counts. Memory is then bounded by the largest partition, in the driver as in the workers.

``local`` runs the functions in this process (``workers`` <= 1) or in a pool of ``workers`` spawned
processes; its shuffle writes each map task's rows, grouped by bucket, to one file under a scratch
folder (the driver keeps where each bucket's bytes are) and reduces one bucket at a time. ``spark``
runs them as Spark tasks: ``map`` is a parallelize/map with one partition per item, ``group_reduce`` a
``flatMap`` + ``partitionBy`` (hash by bucket) + ``mapPartitionsWithIndex``. It reuses the active
SparkSession (started by ``spark-submit`` on a cluster) or starts ``local[workers]``. Every task also
reports its process's peak RSS, so a run knows the largest worker's memory (benchmarks/curation_scale.py
prints it).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import pickle
import resource
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from shared.errors import ConfigError

log = logging.getLogger("openaim.curation")


def stable_bucket(key: str | bytes, buckets: int) -> int:
    """The bucket of a key, the same in every process and on every machine (Python's hash() is salted)."""
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % buckets


TASK_BYTES = 1 << 30  # curation.task_bytes' default: input bytes per task when small parts are grouped


def byte_groups(sizes: list[int], target: int) -> list[range]:
    """Consecutive items grouped into tasks of about ``target`` bytes (an item over it is a task alone), so
    the number of tasks follows the data's bytes, not its number of files."""
    groups, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > target:
            groups.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far: VmHWM where Linux has it (getrusage's ru_maxrss keeps
    the peak of the process image before an exec, so a spawned worker would report its parent's)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measured(fn: Callable, item) -> tuple[Any, int]:
    """Run a task with BLAS/OpenMP pools of one thread and report the process's peak RSS. Parallelism is
    the engine's (its worker processes or Spark cores): a task's own thread pools would oversubscribe the
    cores, and on a loaded machine their spin-waits cost more than small products gain."""
    with threadpool_limits(1):
        return fn(item), peak_rss_bytes()


# -- local ---------------------------------------------------------------------------------------------


def _emit_to_files(emit: Callable, scratch: str, task: tuple[int, Any]) -> dict[int, tuple[int, int]]:
    """One map task of the local shuffle: its rows grouped by bucket, each bucket's list pickled into one
    file per map task (like Spark's sort shuffle: a file per bucket and task would make tasks x buckets
    files, and on a filesystem mounted with online discard each unlink is slow: benchmarks/RESULTS.md,
    "Curation: dedup design figures"). Returns where each bucket's bytes are: {bucket: (offset, length)}."""
    index, item = task
    by_bucket: dict[int, list] = {}
    for bucket, value in emit(item):
        by_bucket.setdefault(int(bucket), []).append(value)
    where = {}
    with open(Path(scratch) / f"m{index:06d}.pkl", "wb") as f:
        for bucket in sorted(by_bucket):
            start = f.tell()
            pickle.dump(by_bucket[bucket], f, protocol=pickle.HIGHEST_PROTOCOL)
            where[bucket] = (start, f.tell() - start)
    return where


def _bucket_rows(scratch: str, bucket: int, places: list[tuple[int, int, int]]) -> Iterator:
    """A bucket's rows from every map task's file: places = [(map task, offset, length)]."""
    for index, offset, length in places:
        with open(Path(scratch) / f"m{index:06d}.pkl", "rb") as f:
            f.seek(offset)
            yield from pickle.loads(f.read(length))


def _reduce_files(reduce: Callable, scratch: str, task: tuple[int, list]) -> Any:
    bucket, places = task
    return reduce(bucket, _bucket_rows(scratch, bucket, places))


IN_FLIGHT_PER_WORKER = 4  # tasks submitted to the process pool and not yet collected, per worker


def _in_order(pool: ProcessPoolExecutor, fn: Callable, items: list, window: int) -> Iterator:
    """``fn`` over ``items`` in the pool, results in item order, at most ``window`` tasks submitted ahead
    of the one collected: the driver holds a window of futures, not one per item (``Executor.map``
    submits every item at once: measured, 30,000 trivial tasks on 2 workers grew the driver by 63 MiB that
    way and by 11 MiB through this window, in the same 8 s)."""
    pending: deque = deque()
    rest = iter(items)
    try:
        for item in itertools.islice(rest, window):
            pending.append(pool.submit(fn, item))
        while pending:
            value = pending.popleft().result()
            for item in itertools.islice(rest, 1):
                pending.append(pool.submit(fn, item))
            yield value
    finally:
        for future in pending:
            future.cancel()


class LocalEngine:
    """Partition functions in this process (workers <= 1) or in ``workers`` spawned processes."""

    name = "local"

    def __init__(self, workers: int = 1, scratch_root: Path | None = None) -> None:
        self.workers = workers
        self.scratch_root = scratch_root
        self.worker_peak_rss = 0
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor | None:
        if self.workers <= 1:
            return None
        if self._pool is None:
            # spawn, not fork: the driver may hold torch/faiss thread pools that a fork would copy locked.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self._pool

    def _run(self, fn: Callable, items: list) -> list:
        pool = self._executor()
        done = _in_order(pool, fn, items, IN_FLIGHT_PER_WORKER * self.workers) if pool else map(fn, items)
        out = []
        for value, rss in done:
            self.worker_peak_rss = max(self.worker_peak_rss, rss)
            out.append(value)
        return out

    def map(self, fn: Callable, items: Iterable) -> list:
        return self._run(partial(_measured, fn), list(items))

    def group_reduce(self, items: Iterable, emit: Callable, reduce: Callable, buckets: int) -> list:
        scratch = tempfile.mkdtemp(prefix=".shuffle-", dir=self.scratch_root)
        try:
            written = self.map(partial(_emit_to_files, emit, scratch), list(enumerate(items)))
            places: list[list] = [[] for _ in range(buckets)]
            for index, where in enumerate(written):
                for bucket, (offset, length) in where.items():
                    places[bucket].append((index, offset, length))
            return self.map(partial(_reduce_files, reduce, scratch), list(enumerate(places)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def set_step(self, name: str) -> None:
        """Nothing to label here (see SparkEngine.set_step)."""

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


# -- spark ---------------------------------------------------------------------------------------------


def spark_session(workers: int, app: str = "openaim-curation"):
    """(session, started here): the active SparkSession; under ``spark-submit`` one on its master; else a
    ``local[workers]`` one (Spark in this machine's JVM). On a cluster, the spark-submit recipe of
    docs/scale.md (run verbatim by tests/test_curation_cluster.py against a standalone cluster):

        spark-submit --master spark://HOST:7077 --conf spark.task.maxFailures=8 \\
            openaim/__main__.py build-dataset --config my.yaml --set curation.engine=spark

    (openaim installed on every node, PYSPARK_PYTHON naming its python; the workdir on storage every
    executor reads and writes)."""
    try:  # pyspark is optional (the spark extra): imported where Spark is asked for
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError("curation.engine: spark needs pyspark (pip install 'openaim[spark]')") from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName(app)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit: a local Spark of our own
        # Local workers must run this interpreter (the venv), not whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.master(f"local[{workers}]").config("spark.pyspark.python", sys.executable)
                   .config("spark.pyspark.driver.python", sys.executable)
                   .config("spark.ui.enabled", "false").config("spark.driver.memory", "2g")
                   .config("spark.task.maxFailures", "4"))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def _spark_reduce(reduce: Callable, bucket: int, rows: Iterator) -> list:
    return [_measured(partial(reduce, bucket), (value for _, value in rows))]


def _spark_emit(emit: Callable, item) -> Iterator:
    yield from emit(item)


class SparkEngine:
    """Partition functions as Spark tasks (one Spark partition per item / per bucket)."""

    name = "spark"

    def __init__(self, workers: int = 2) -> None:
        self.spark, self._own = spark_session(workers)
        self.sc = self.spark.sparkContext
        self.worker_peak_rss = 0

    def _collect(self, rdd) -> list:
        out = []
        for value, rss in rdd.collect():
            self.worker_peak_rss = max(self.worker_peak_rss, rss)
            out.append(value)
        return out

    def map(self, fn: Callable, items: Iterable) -> list:
        items = list(items)
        if not items:
            return []
        return self._collect(self.sc.parallelize(items, len(items)).map(partial(_measured, fn)))

    def group_reduce(self, items: Iterable, emit: Callable, reduce: Callable, buckets: int) -> list:
        items = list(items)
        rows = self.sc.parallelize(items, max(1, len(items))).flatMap(partial(_spark_emit, emit))
        grouped = rows.partitionBy(buckets, partitionFunc=int)  # the key is already the bucket
        return self._collect(grouped.mapPartitionsWithIndex(partial(_spark_reduce, reduce)))

    def set_step(self, name: str) -> None:
        """The Spark jobs that follow belong to curation step ``name``: their job group, which the Spark UI
        and its REST API (/api/v1/applications/<app>/jobs) show, so an operator sees which step runs."""
        self.sc.setJobGroup(name, f"openaim curation step {name}")

    def close(self) -> None:
        if self._own:
            self.spark.stop()


def make_engine(kind: str, workers: int, scratch_root: Path | None = None) -> LocalEngine | SparkEngine:
    if kind == "local":
        return LocalEngine(workers, scratch_root)
    if kind == "spark":
        return SparkEngine(workers)
    raise ConfigError(f"unknown curation.engine {kind!r}; valid: local, spark")
