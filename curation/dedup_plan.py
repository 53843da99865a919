"""What the dedup step's tasks share (curation.dedup_parts, curation.dedup_near): the plan every task
carries, a part's dedup vectors, and the loser files, one per part, reached through the engine's shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from curation.copy_detection import dedup_vectors
from curation.parts import Part, key_part, key_row
from shared import fsio
from shared.config.curation import DedupConfig


@dataclass(frozen=True)
class Plan:
    """What every dedup task needs (picklable: it travels to Spark and process-pool workers). Small: no
    table of the parts (a task gets its own parts; a row key names its part)."""

    work: str  # the step's scratch folder: a local path or a URL (shared.fsio)
    cfg: DedupConfig
    task_starts: np.ndarray  # [tasks] the index of each task's first part (tasks are consecutive parts)

    def task_of(self, part_index: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.task_starts, part_index, side="right") - 1


def make_plan(tasks: list[list[Part]], work: str, cfg: DedupConfig) -> Plan:
    return Plan(work, cfg, np.array([t[0].index for t in tasks], dtype=np.int64))


def vectors(data: dict, w: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """A part's unit dedup vectors [n, D] and its zoomed views (each [n, D])."""
    emb, copies = data["embedding"], data["copy"]
    x = dedup_vectors(emb, copies[:, 0], w)
    return x, [dedup_vectors(emb, copies[:, v], w) for v in range(1, copies.shape[1])]


def load(path: str):
    """A .npy array or an .npz archive's arrays (a dict), read through shared.fsio."""
    with fsio.open_file(path) as f:
        got = np.load(f)
        if isinstance(got, np.lib.npyio.NpzFile):
            with got:
                return {name: got[name] for name in got.files}
        return got


def load_head(path: str, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a .npy array (C order), read through shared.fsio without the rest."""
    with fsio.open_file(path) as f:
        fmt = np.lib.format
        major, _ = fmt.read_magic(f)
        shape, fortran, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: not a plain C-order array")
        out = np.empty((min(rows, shape[0]), *shape[1:]), dtype)
        buf, got = memoryview(out).cast("B"), 0
        while got < len(buf):
            n = f.readinto(buf[got:])
            if not n:
                raise EOFError(f"{path}: ends before its {shape[0]} rows")
            got += n
        return out


def save(path: str, *array: np.ndarray, **arrays: np.ndarray) -> None:
    """``np.save`` of one array, or ``np.savez`` of named arrays, written whole (shared.fsio.local_file:
    locally a temporary sibling renamed into place, under a URL one upload)."""
    with fsio.local_file(path) as tmp, open(tmp, "wb") as f:
        if array:
            np.save(f, *array)
        else:
            np.savez(f, **arrays)


def losers(folder: str, part: Part) -> np.ndarray:
    """Rows of ``part`` that lost in ``folder`` (exact or near): its one file there, if any."""
    path = fsio.join(folder, f"{part.index:08d}.npy")
    return key_row(load(path)) if fsio.isfile(path) else np.zeros(0, np.int64)


def write_part_keys(folder: str, keys: np.ndarray) -> int:
    """Sorted row keys to one file per part they belong to (``<part index>.npy``); the files written."""
    fsio.makedirs(folder)
    keys = np.sort(np.asarray(keys, dtype=np.int64))
    owner = key_part(keys)
    cuts = np.flatnonzero(np.diff(owner)) + 1
    for chunk in np.split(keys, cuts) if len(keys) else []:
        save(fsio.join(folder, f"{int(key_part(chunk[:1])[0]):08d}.npy"), chunk)
    return len(cuts) + 1 if len(keys) else 0


def emit_to_tasks(plan: Plan, path: str):
    """Route one file of row keys (any parts) to the tasks that own their parts."""
    keys = load(path)
    task = plan.task_of(key_part(keys))
    order = np.argsort(task, kind="stable")
    cuts = np.flatnonzero(np.diff(task[order])) + 1
    for sel in np.split(order, cuts) if len(order) else []:
        yield int(task[sel[0]]), keys[sel]


def write_routed(folder: str, task: int, chunks) -> int:
    """One task's share of the routed keys: one file per part (``folder/<part index>.npy``)."""
    chunks = list(chunks)
    return write_part_keys(folder, np.concatenate(chunks)) if chunks else 0


def route_to_parts(engine, plan: Plan, sources: list[str], folder: str) -> None:
    """Row keys in ``sources`` (files of keys from any parts) to one file per part in ``folder``, through
    the engine's shuffle keyed by the task that owns the part: no folder of (source, part) files, no
    listing per part."""
    engine.group_reduce(sources, partial(emit_to_tasks, plan), partial(write_routed, folder),
                        len(plan.task_starts))


def exact_survivors(plan: Plan, part: Part, data: dict) -> np.ndarray:
    """Row indices of the part that survived exact dedup."""
    keep = np.ones(len(data["score"]), dtype=bool)
    keep[losers(fsio.join(plan.work, "exact"), part)] = False
    return np.flatnonzero(keep)
