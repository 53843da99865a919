"""The one storage layer: every step opens, lists, writes and commits its files through a ``Storage``.

A ``Storage`` is rooted at a run's folder (``workdir``); a step names its files relative to that root as
plain strings ("curation/pairs", "curation/select_stats.json") and the layer joins them. Today the root is a
local folder and every write is atomic (shared.atomic: a temporary sibling, then a rename); the object
storage issue makes the root a URL (``s3://bucket/run``) read and written through fsspec, which is why
names are strings joined with "/" (never ``Path`` arithmetic in a step) and why committing is its own
operation: a step's record is written last, after every output it names is complete, so a killed step
has no record and reruns.

``local(name)`` hands out a local path for the libraries that insist on writing to a path themselves
(pyarrow datasets, img2dataset, torch, webdataset's TarWriter): on object storage these become staged
uploads.
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

from shared.atomic import atomic_dir, atomic_open, atomic_write_bytes, atomic_write_json, finished_files


class Storage:
    """A run's files under one root (a local folder now; a URL once fsspec backs it)."""

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
        return Path(self.url(*names))

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self, *names: str) -> bool:
        return self.local(*names).exists()

    def list(self, folder: str, pattern: str = "*") -> list[str]:
        """The finished files of ``folder`` matching ``pattern`` (names relative to the root), in name
        order, without the temporary siblings of writes in progress or killed."""
        return [f"{folder}/{p.name}" for p in finished_files(self.local(folder), pattern)]

    def read_bytes(self, *names: str) -> bytes | None:
        """The file's bytes; None when it does not exist."""
        try:
            return self.local(*names).read_bytes()
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
        with atomic_open(self.local(name), mode, **kwargs) as f:
            yield f

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.local(name), data)

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.local(name), obj)

    @contextlib.contextmanager
    def build_dir(self, name: str) -> Iterator[Path]:
        """A folder built aside and swapped in whole, replacing the previous one only when complete."""
        with atomic_dir(self.local(name)) as tmp:
            yield tmp

    def makedirs(self, name: str) -> None:
        self.local(name).mkdir(parents=True, exist_ok=True)

    def remove(self, name: str) -> None:
        """Delete a file or a folder tree; nothing to delete is fine."""
        path = self.local(name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def move(self, src: str, dest: str) -> None:
        """Move a file or folder to another name under the root (its parent folders are made)."""
        self.local(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(self.local(src), self.local(dest))

    def copy(self, src: str, dest: str) -> None:
        self.write_bytes(dest, self.local(src).read_bytes())

    # -- committing ------------------------------------------------------------------------------------
    def commit(self, name: str, record: dict[str, Any]) -> None:
        """Write a step's record, the mark that its outputs are complete. Called last, after every output
        is written, so that a record is never seen beside a half-written output."""
        self.write_json(name, record)
