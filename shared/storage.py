"""The one storage layer: every step opens, lists, writes and commits its files through a ``Storage``.

A ``Storage`` is rooted at a run's folder (``workdir``); a step names its files relative to that root as
plain strings ("curation/pairs", "curation/select_stats.json") and the layer joins them. The root is a
local folder, where every write is atomic (shared.atomic: a temporary sibling, then a rename), or a URL
(``s3://bucket/run``): reading, listing, writing, removing and committing go through shared.fsio (fsspec
for a URL, the calls above for a folder). That is why names
are strings joined with "/" (never ``Path`` arithmetic in a step) and why committing is its own
operation: a step's record is written last, after every output it names is complete, so a killed step
has no record and reruns. An object store has no rename: there a file is one PUT, whole or absent.

``local(name)`` hands out a local path, for what is local by design (a run's history archive, training's
own folder); it needs a local root (``local`` on a URL root is one clear error, not a wrong path). The
curation steps never call it: their tasks write whole objects through shared.fsio (``fsio.local_file``
stages a library's file and uploads it) and read through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared import fsio
from shared.atomic import atomic_open, finished_files


class Storage:
    """A run's files under one root (a local folder, or a URL read and written through fsspec)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.fspath(root)

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def url(self, *names: str) -> str:
        """The full name of ``names`` under the root, joined with "/" as URLs are."""
        for name in names:
            if name.startswith("/") or ".." in name.split("/"):
                raise ValueError(f"storage names are relative and stay under the root: {name!r}")
        return posixpath.join(self.root, *names) if names else self.root

    def local(self, *names: str) -> Path:
        """A local path for ``names``, for the libraries that write to a path themselves."""
        if fsio.is_url(self.root):
            raise ValueError(f"{self.url(*names)}: this step writes through a local path and {self.root} "
                             "is a URL (use a local workdir for it)")
        return Path(self.url(*names))

    def local_root(self, *names: str) -> Path | None:
        """``local(names)`` on a local root; None under a URL (for what is kept on this machine then)."""
        return None if fsio.is_url(self.root) else self.local(*names)

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self, *names: str) -> bool:
        return fsio.exists(self.url(*names))

    def list(self, folder: str, pattern: str = "*") -> list[str]:
        """The finished files of ``folder`` matching ``pattern`` (names relative to the root), in name
        order, without the temporary siblings of writes in progress or killed."""
        if fsio.is_url(self.root):  # no temporary siblings there: an object is one PUT
            return [f"{folder}/{fsio.name_of(u)}" for u in fsio.glob(self.url(folder, pattern))]
        return [f"{folder}/{p.name}" for p in finished_files(self.local(folder), pattern)]

    def read_bytes(self, *names: str) -> bytes | None:
        """The file's bytes; None when it does not exist."""
        try:
            return fsio.read_bytes(self.url(*names))
        except FileNotFoundError:
            return None

    def read_json(self, *names: str) -> Any:
        """The parsed file; None when it does not exist or is damaged (a damaged record means "not done")."""
        data = self.read_bytes(*names)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    # -- writing (every write is atomic: readers see the old file or the whole new one) -----------------
    @contextlib.contextmanager
    def open_write(self, name: str, mode: str = "wb", **kwargs: Any) -> Iterator[Any]:
        if fsio.is_url(self.root):  # the object appears when the upload completes, at close
            with fsio.open_file(self.url(name), mode) as f:
                yield f
            return
        with atomic_open(self.local(name), mode, **kwargs) as f:
            yield f

    def write_bytes(self, name: str, data: bytes) -> None:
        fsio.write_bytes(self.url(name), data)

    def write_json(self, name: str, obj: Any) -> None:
        fsio.write_json(self.url(name), obj)  # atomic locally, one PUT under a URL

    @contextlib.contextmanager
    def build_dir(self, name: str) -> Iterator[str]:
        """Where to write the folder ``name`` whole (fsio.replaced_dir): locally built aside and swapped in,
        replacing the previous one only when complete; under a URL the folder itself, made valid by the
        step's record written after it."""
        with fsio.replaced_dir(self.url(name)) as building:
            yield building

    def makedirs(self, name: str) -> None:
        fsio.makedirs(self.url(name))

    def remove(self, name: str) -> None:
        """Delete a file or a folder tree; nothing to delete is fine."""
        fsio.remove(self.url(name))

    def move(self, src: str, dest: str) -> None:
        """Move a file or folder to another name under the root (its parent folders are made)."""
        self.local(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(self.local(src), self.local(dest))

    def copy(self, src: str, dest: str) -> None:
        self.write_bytes(dest, fsio.read_bytes(self.url(src)))

    # -- committing ------------------------------------------------------------------------------------
    def commit(self, name: str, record: dict[str, Any]) -> None:
        """Write a step's record, the mark that its outputs are complete. Called last, after every output
        is written, so that a record is never seen beside a half-written output."""
        self.write_json(name, record)
