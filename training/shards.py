"""Webdataset shards for training: listed once, read by interleaved readers in shuffle windows, resumed
exactly (training.data mixes them into batches).

Readers. A rank has one logical stream per DataLoader worker (at least one); each stream of each source
(curated, ImageNet shards) is one *reader*; the world's R = world * S readers are numbered
g = rank * S + stream.

Shard order. Shards are visited as a seeded permutation per epoch (without replacement): global
visit position p opens shard perm_e[p mod n] with e = p // n and perm_e seeded by (seed, source, e).
Reader g opens positions base + g, base + g + R, base + g + 2R, ...: together the readers consume
each epoch's permutation in order, so in one epoch every shard is read once by one reader.

Shuffle. A reader reads consecutive shards of its sequence into one *window* until it holds at least
`shuffle_buffer` samples (at least one shard), and yields the window in a permutation seeded by
(seed, source, position of its first shard): the shuffle spans shards, and a window is a pure
function of where it starts. A reader's position is {base, readers, k (first shard of the open
window, in its own sequence), next_k (first shard after the window), taken (samples yielded from
the window)}; each batch carries the positions after it and checkpoints store them per rank.

Resume. Same world size and workers: every reader re-reads its open window and skips `taken` samples
(no decoding): bit-identical batches. Another world size or worker count (`resplit_positions`): the
old readers' unread work is dealt to the new readers, a function of the checkpoint alone. New reader
j's sequence starts with a `prefix` of visit positions: first the open windows of old readers j,
j + R', j + 2R', ... (R' new readers), each replayed whole (same shards, same shuffle) with the
samples its old reader had yielded skipped (`skips`); then every R'-th of the positions, in order,
that lie before the first position after every shard any old reader opened and that no old reader
opened; after its prefix it reads positions F + j, F + j + R', ... (F that first position). So no
sample is skipped and none is read twice: each sample of every epoch is read exactly once, as in an
uninterrupted run; what changes is the order (which reader reads which shard, and the shuffle windows
formed from the handed-over positions). The replayed windows hold the same shards only if
`shuffle_buffer` is unchanged.

Listing. The shard list is built once at the edge (`curated_shard_list`, `imagenet_sources`; in
training by rank 0, then broadcast), through shared.fsio (local paths and fsspec URLs such as s3://):
every name a pattern spells out must exist (the missing ones are one error line); readers hold the
list as a `StringTable` (two numpy arrays).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared import fsio
from shared.errors import InputError
from shared.wds_reader import read_samples

log = logging.getLogger("openaim.training")


class StringTable:
    """Strings (paths, URLs) as one bytes buffer + offsets: two numpy arrays, no Python object per entry,
    so DataLoader workers neither copy nor touch a page per string (reference counts) when they index it."""

    def __init__(self, strings: list[str]):
        encoded = [x.encode() for x in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes().decode()

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


def expand_shards(patterns: list[str], key: str = "training.data.shards") -> list[str]:
    """Globs and brace patterns ("shards/{00000..00009}.tar", "s3://bucket/shards/*.tar") -> the listed
    paths/URLs (shared.fsio.expand: local paths and fsspec URLs alike), globs sorted.

    Every name a pattern spells out (literally or by braces) must exist: the missing ones are one error
    naming them, not a run that trains on the rest."""
    out, missing = fsio.expand(patterns)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{key}: {len(missing)} of the {len(missing) + len(out)} shards listed by "
                         f"{', '.join(patterns)} do not exist: {shown}")
    return out


def curated_shard_list(patterns: list[str]) -> list[str]:
    """The curated shards: training.data.shards (placeholders expanded), else the curation stage's output
    pattern; one error line when nothing matches or a listed shard is missing."""
    shards = expand_shards(patterns)
    if not shards:
        raise InputError(f"no training shards found at {', '.join(patterns)} (run `openaim build-dataset` "
                         "or set training.data.shards)")
    return shards


def imagenet_sources(paths: list[str]) -> list[str]:
    """training.data.imagenet resolved: image folders as given, else its shard patterns listed."""
    if not paths or all(Path(p).is_dir() for p in paths):
        return list(paths)
    shards = expand_shards(paths, key="training.data.imagenet")
    if not shards:
        raise InputError(f"no ImageNet shards found at {', '.join(paths)}")
    return shards


class BadSampleCounter:
    """A webdataset handler: warn, count, carry on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, exc: Exception) -> bool:
        self.count += 1
        log.warning("skipping unreadable data: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200]
                    if str(exc) else "")
        return True


def fresh_position(base: int, readers: int) -> dict:
    return {"base": base, "readers": readers, "k": 0, "next_k": 0, "taken": 0}


def visit_of(position: dict, reader: int, k: int) -> int:
    """The visit position of entry k of a reader's sequence: its `prefix` (shards handed over by a
    resplit), then every `readers`-th position from `base + reader`."""
    prefix = position.get("prefix", ())
    if k < len(prefix):
        return prefix[k]
    return position["base"] + reader + (k - len(prefix)) * position["readers"]


class ShardReader:
    """One reader's endless stream of raw samples over a seeded per-epoch shard permutation (module doc).
    `urls` is a `StringTable` (or any indexable of str)."""

    def __init__(self, urls, seed: int, tag: int, reader: int, shuffle_buffer: int,
                 on_error: BadSampleCounter):
        self.urls, self.seed, self.tag, self.reader = urls, seed, tag, reader
        self.shuffle_buffer, self.on_error = shuffle_buffer, on_error
        self._perm_epoch, self._perm = -1, np.arange(0)

    def shard_at(self, visit: int) -> str:
        epoch, offset = divmod(visit, len(self.urls))
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, self.tag, epoch])
            self._perm, self._perm_epoch = rng.permutation(len(self.urls)), epoch
        return self.urls[int(self._perm[offset])]

    def samples(self, position: dict) -> Iterator[tuple[dict[str, Any], dict, int]]:
        """Yield (sample, position after it, visit position of its window) from `position`; each sample
        carries its shard's visit position as "__visit__"."""
        k = position["k"]
        fixed = {key: value for key, value in position.items() if key not in ("k", "next_k", "taken")}
        skips = position.get("skips", {})
        skip = max(position["taken"], skips.get(k, 0))
        empty = 0
        while True:
            first_visit = visit_of(position, self.reader, k)
            window: list[dict[str, Any]] = []
            next_k = k
            while len(window) < max(1, self.shuffle_buffer):
                visit = visit_of(position, self.reader, next_k)
                before = len(window)
                for sample in read_samples(self.shard_at(visit), handler=self.on_error):
                    sample["__visit__"] = visit
                    window.append(sample)
                next_k += 1
                empty = 0 if len(window) > before else empty + 1
                if empty > 2 * len(self.urls) + 20:
                    raise InputError(f"no readable samples in {len(self.urls)} shard(s), e.g. {self.urls[0]}")
            order = np.random.default_rng([self.seed, self.tag, first_visit]).permutation(len(window))
            for taken in range(skip, len(window)):
                after = {**fixed, "k": k, "next_k": next_k, "taken": taken + 1}
                yield window[int(order[taken])], after, first_visit
            k = next_k
            skip = skips.get(k, 0)


def _unread(old: list[dict]) -> tuple[int, list[tuple[list[int], int]], list[int]]:
    """What the old readers (one source) left: (first position after every one any of them opened,
    their open windows as (visits, samples already yielded), the positions before it none opened)."""
    nxt = []
    for q in old:
        n_prefix = len(q.get("prefix", ()))
        stride = max(0, q["next_k"] - n_prefix)  # stride entries opened
        nxt.append(q["base"] + q["reader"] + stride * q["readers"])
    first_after = max(nxt)
    windows, loose = [], []
    for q, n in zip(old, nxt, strict=True):
        if q["next_k"] > q["k"]:
            skip = max(q["taken"], q.get("skips", {}).get(q["k"], 0))
            windows.append(([visit_of(q, q["reader"], i) for i in range(q["k"], q["next_k"])], skip))
        loose.extend(q.get("prefix", [])[q["next_k"]:])
        loose.extend(range(n, first_after, q["readers"]))
    return first_after, windows, sorted(loose)


def resplit_positions(saved: list[list[dict]] | None, world_size: int, num_streams: int,
                      sources: list[str]) -> list[list[dict]]:
    """Per-rank, per-stream reader positions for this world: the saved ones when the world size and
    workers are unchanged, else the old readers' unread work dealt to the new readers (module doc):
    their open windows replayed, the positions none opened, then interleaved order after all of them."""
    readers = world_size * num_streams
    if saved and len(saved) == world_size and all(len(r) == num_streams for r in saved):
        return [[dict(p) for p in r] for r in saved]
    new = [[{} for _ in range(num_streams)] for _ in range(world_size)]
    for name in sources:
        old = [p[name] for rank_positions in saved or [] for p in rank_positions if name in p]
        first_after, windows, loose = _unread(old) if old else (0, [], [])
        for g in range(readers):
            prefix: list[int] = []
            skips: dict[int, int] = {}
            for visits, skip in windows[g::readers]:
                if skip:
                    skips[len(prefix)] = skip
                prefix.extend(visits)
            prefix.extend(loose[g::readers])
            position = {**fresh_position(first_after, readers), "reader": g}
            if prefix:
                position.update(prefix=prefix, skips=skips)
            new[g // num_streams][g % num_streams][name] = position
    return new
