"""The scoring queue's claims (curation.shard_queue) in a real folder and in a prefix of moto's S3 server on
loopback: one owner per generation, a live lease blocks others, an expired one is taken at the next
generation, renewal keeps a shard, and of many threads racing for the same claim exactly one wins. (The
end-to-end case, a rank killed mid-shard under torchrun, is tests/test_torchrun_scoring.py.)"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from curation.shard_queue import ShardQueue
from shared import fsio
from tests.s3_server import BUCKET


class Clock:
    """A wall clock the test moves by hand (leases are minutes long in real runs)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["local", "s3"])
def claims(request, tmp_path) -> str:
    """The claims folder: a local one, or a prefix in moto's S3 server on loopback (claims are created
    there by a conditional PUT)."""
    if request.param == "local":
        return str(tmp_path)
    request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/claims-{uuid.uuid4().hex[:8]}"


def test_claims_leases_and_takeover(claims):
    clock = Clock()
    a = ShardQueue(claims, lease_s=10, owner="a", clock=clock)
    b = ShardQueue(claims, lease_s=10, owner="b", clock=clock)
    claim = a.try_claim("00000")
    assert claim is not None and claim.generation == 0
    assert b.try_claim("00000") is None  # a live lease
    assert b.try_claim("00001").generation == 0

    clock.now += 8
    a.renew(claim)  # renewed before it expired: still a's
    clock.now += 8
    assert b.try_claim("00000") is None
    clock.now += 3  # 11 s after the renewal: expired
    taken = b.try_claim("00000")
    assert taken is not None and taken.generation == 1
    record = json.loads(fsio.read_bytes(taken.path))
    assert record["owner"] == "b" and record["taken_from"]["owner"] == "a"
    assert record["claimed_at"] >= record["taken_from"]["expires"]
    assert a.newest("00000")[0] == 1 and a.try_claim("00000") is None
    b.release(taken)  # done (or given up): free at once, without waiting for the lease
    assert a.try_claim("00000").generation == 2


def test_take_yields_until_done_and_waits_for_live_leases(tmp_path):
    clock = Clock()
    done: set[str] = set()
    q = ShardQueue(tmp_path, lease_s=10, owner="q", clock=clock)
    other = ShardQueue(tmp_path, lease_s=10, owner="other", clock=clock)
    assert other.try_claim("s2") is not None  # held by a rank that then dies
    got = []
    waits = 0
    for claim in q.take(["s1", "s2", "s3"], done.__contains__, poll_s=0):
        got.append(claim.shard)
        done.add(claim.shard)
        if claim.shard == "s3":
            clock.now += 11  # s2's owner is gone: its lease runs out
            waits += 1
    assert got == ["s1", "s3", "s2"] and waits == 1


def test_one_winner_per_generation(claims):
    queues = [ShardQueue(claims, lease_s=60, owner=f"t{i}") for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda q: q.try_claim("00007"), queues))
    winners = [c for c in got if c is not None]
    assert len(winners) == 1 and winners[0].generation == 0
    assert fsio.listdir(claims) == ["00007.0"]


def test_a_rerun_takes_a_dead_local_owners_claim_at_once(tmp_path):
    """A claim whose owner ran on this host and has exited (a crashed run) is free for a queue opened
    afterwards, before its lease ends; a live owner's claim is not."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    crashed = ShardQueue(tmp_path, lease_s=600, owner="crashed")
    crashed_claim = crashed.try_claim("00000")
    record = json.loads(Path(crashed_claim.path).read_text())
    # the claim now names a process that has exited
    Path(crashed_claim.path).write_text(json.dumps(record | {"pid": int(dead.stdout)}))
    assert crashed.try_claim("00001") is not None  # live: this process holds it

    rerun = ShardQueue(tmp_path, lease_s=600, owner="rerun")
    assert rerun.try_claim("00000").generation == 1
    assert rerun.try_claim("00001") is None
