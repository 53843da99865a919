"""Pool shards handed out to scoring ranks through claim records in storage, with leases that expire.

A claim is a small JSON record ``<claims>/<shard>.<generation>`` holding its owner and when its lease
expires, in a local folder or under a URL (shared.fsio). It is created exclusively (``O_CREAT | O_EXCL``
locally, a conditional PUT on an object store: of two ranks creating the same record one wins), so a
shard has one owner per generation. The
owner renews its lease (rewrites its own record) every third of ``lease_s`` while it scores the shard, and
ends it when the shard's output is written (or it fails).
A shard is done when its output exists (written atomically, last); it is free when it has no claim, or
when its newest claim's lease has expired: a rank that died (kill -9, a lost node) holds its shard only
until then, and the next rank takes it by creating the next generation, exclusively again. (A queue
opened on the host of a claim's owner that no longer runs, e.g. a rerun after a crash, takes it at once.)

Ranks take shards until every one is done: a rank with nothing to take waits while other ranks hold live
leases (one of them may die), and returns as soon as every output exists. No rank waits for a given
rank, and any number of ranks (a torchrun job, several jobs, a restarted job) share one queue.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from shared import fsio


def default_owner() -> str:
    """host:pid[:rank]: who holds a claim, in the record (for people and tests; never parsed)."""
    rank = os.environ.get("RANK")
    return f"{socket.gethostname()}:{os.getpid()}" + (f":rank{rank}" if rank is not None else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Claim:
    shard: str
    generation: int
    path: str  # a local path or a URL


class ShardQueue:
    """The claims of one step's shards under ``folder`` (``<folder>/<shard>.<generation>``)."""

    def __init__(self, folder: str | os.PathLike, lease_s: float, owner: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder, self.lease_s = os.fspath(folder), float(lease_s)
        self.owner = owner or default_owner()
        self.clock = clock  # wall clock: leases are compared across hosts
        fsio.makedirs(self.folder)
        self.host = socket.gethostname()
        self._dead_at_start = self._dead_local_claims()

    def _record(self) -> dict:
        return {"owner": self.owner, "host": self.host, "pid": os.getpid(),
                "expires": self.clock() + self.lease_s}

    def _dead_local_claims(self) -> set[str]:
        """Claims found at start whose owner ran on this host and is gone (a rerun after a crash on one
        machine): free at once instead of after their lease. A rank that dies later is seen by its lease
        only, as on another host."""
        dead = set()
        for name in fsio.listdir(self.folder):
            try:
                record = json.loads(fsio.read_bytes(fsio.join(self.folder, name)))
            except (OSError, ValueError):
                continue
            if record.get("host") == self.host and isinstance(record.get("pid"), int) \
                    and not _pid_alive(record["pid"]):
                dead.add(name)
        return dead

    def newest(self, shard: str) -> tuple[int, dict | None]:
        """(generation, record) of the shard's newest claim; (-1, None) when it has none. A record being
        written (created but still empty) reads as live."""
        found = [name[len(shard) + 1:] for name in fsio.listdir(self.folder) if name.startswith(f"{shard}.")]
        gens = [int(g) for g in found if g.isdigit()]
        if not gens:
            return -1, None
        gen = max(gens)
        try:
            return gen, json.loads(fsio.read_bytes(fsio.join(self.folder, f"{shard}.{gen}")))
        except (OSError, ValueError):
            return gen, {"owner": "?", "expires": self.clock() + self.lease_s}

    def try_claim(self, shard: str) -> Claim | None:
        """Claim a free shard (no claim, or an expired one); None when another rank holds a live lease or
        won the race for the same generation."""
        gen, record = self.newest(shard)
        live = record is not None and record["expires"] > self.clock()
        if live and f"{shard}.{gen}" not in self._dead_at_start:
            return None
        path = fsio.join(self.folder, f"{shard}.{gen + 1}")
        mine = self._record() | {"claimed_at": self.clock(), "taken_from": record}
        if not fsio.create_exclusive(path, json.dumps(mine).encode()):
            return None
        return Claim(shard, gen + 1, path)

    def renew(self, claim: Claim) -> None:
        record = json.loads(fsio.read_bytes(claim.path))
        fsio.write_json(claim.path, record | self._record())

    def release(self, claim: Claim) -> None:
        """End the lease now (the shard is done, or this rank gave up on it): a rerun or another rank may
        take the shard at once if its output is missing."""
        record = json.loads(fsio.read_bytes(claim.path))
        fsio.write_json(claim.path, record | {"expires": self.clock(), "released": True})

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[Claim]:
        """Renew the claim's lease in a background thread while the body runs; release it after."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    self.renew(claim)
                except OSError:
                    pass  # storage hiccup: the next renewal may succeed; at worst another rank takes it

        thread = threading.Thread(target=renew, name=f"lease-{claim.shard}", daemon=True)
        thread.start()
        try:
            yield claim
        finally:
            stop.set()
            thread.join()
            self.release(claim)

    def take(self, shards: list[str], done: Callable[[str], bool], poll_s: float | None = None
             ) -> Iterator[Claim]:
        """Claims of the shards not ``done``, one at a time, until every shard is done: yields a claim to
        work on (the caller makes the shard done before asking for the next), waits while the shards left
        are held by live leases."""
        poll_s = min(1.0, self.lease_s / 4) if poll_s is None else poll_s
        while True:
            left = [s for s in shards if not done(s)]
            if not left:
                return
            claim = next((c for c in map(self.try_claim, left) if c is not None), None)
            if claim is None:
                time.sleep(poll_s)
                continue
            if done(claim.shard):  # finished by its previous owner between the check and the claim
                continue
            yield claim
