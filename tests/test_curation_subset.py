"""The DataComp subset built by parts: uid ranges sorted by engine tasks, subset.npy streamed from them."""

from __future__ import annotations

from functools import partial

import numpy as np

from curation.engine import LocalEngine
from curation.select import subset_to_uids, uid_subset
from curation.select_parts import concat_subset, subset_bucket, subset_part_task, subset_pieces


def test_subset_parts_in_name_order_are_the_sorted_subset_and_subset_npy_is_datacomps(tmp_path):
    rng = np.random.default_rng(0)
    uids = [f"{int(a):016x}{int(b):016x}" for a, b in rng.integers(0, 2**64, size=(3000, 2), dtype=np.uint64)]
    uids += [f"{0:016x}{7:016x}", f"{2**64 - 1:016x}{0:016x}"]  # the ends of the uid space
    buckets, out = 5, tmp_path / "subset"
    out.mkdir()

    def emit(k: int):  # seven write tasks, each its own sorted subset, sent by uid range
        for bucket, piece in subset_pieces(uid_subset(uids[k::7]), buckets):
            yield bucket, ("subset", piece)
        yield k % buckets, ("counts", ({"written": 1, "shards": 2, "faces_blurred": 0}, k, f"tars-{k}"))

    done = LocalEngine().group_reduce(range(7), emit, partial(subset_part_task, out), buckets)
    assert sum(d[0] for d in done) == len(uids)
    assert sum(d[1]["shards"] for d in done) == 14  # every task's counts reached one range's task
    assert sorted(t for d in done for t in d[2]) == [(k, f"tars-{k}") for k in range(7)]
    parts = [np.load(p) for p in sorted(out.glob("part-*.npy"))]
    assert len(parts) == buckets
    for k, part in enumerate(parts):
        assert (subset_bucket(part, buckets) == k).all()  # each part holds one uid range
    n = concat_subset(out, tmp_path / "subset.npy")
    subset = np.load(tmp_path / "subset.npy")
    assert n == len(uids) and subset.dtype == np.dtype("u8,u8")
    assert np.array_equal(subset, uid_subset(uids))  # DataComp's layout: sorted (f0, f1) records
    assert subset_to_uids(subset) == sorted(uids)
