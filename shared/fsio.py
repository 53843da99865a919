"""Paths and URLs through one layer: a local path or an fsspec URL (``s3://bucket/prefix``, ``gs://``,
``memory://`` ...) is opened, listed, written and removed by the same calls.

The one question "is this a URL?" is asked here (``is_url``) and nowhere else: a local path takes the
same route as before (``open``, ``glob``, ``shared.atomic``'s temporary sibling + rename), a URL goes to
its fsspec filesystem (s3fs for ``s3://``, configured by the standard ``AWS_*`` variables, including
``AWS_ENDPOINT_URL``). Names under a URL are joined with "/" (``join``), never with ``pathlib``.

Object stores have no rename, so nothing here moves a folder into place on a URL: a folder is built where
it ends and becomes valid when a commit record is written last (``build_dir`` / ``commit_dir``); readers
trust only folders with their record. Writing one object is a single PUT, which a reader sees whole or
not at all; on local disk a file is written atomically (``shared.atomic``).
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import functools
import glob as globlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import braceexpand

from shared.atomic import atomic_dir, atomic_path, atomic_write_bytes, json_text

PathOrURL = str | os.PathLike


def is_url(path: PathOrURL) -> bool:
    """Whether ``path`` names an object through an fsspec protocol (``file://`` counts as local)."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def _local(path: PathOrURL) -> str:
    text = os.fspath(path)
    return text.removeprefix("file://")


def filesystem(url: str):
    """(fsspec filesystem, the path within it) for a URL, with no listing cached from before: other
    processes (the other ranks, a killed run) write the same prefixes."""
    import fsspec  # imported on first URL use: local runs never load it

    fs, inner = fsspec.core.url_to_fs(url)
    fs.invalidate_cache(inner)
    return fs, inner


def join(base: PathOrURL, *names: str) -> str:
    """``base`` with ``names`` appended: with "/" under a URL, as ``os.path.join`` locally."""
    if is_url(base):
        return posixpath.join(os.fspath(base), *names)
    return os.path.join(os.fspath(base), *names)


def name_of(path: PathOrURL) -> str:
    """The last part of a path or URL."""
    return posixpath.basename(os.fspath(path).rstrip("/")) if is_url(path) else os.path.basename(path)


def parent(path: PathOrURL) -> str:
    """The folder holding a path or URL."""
    if is_url(path):
        return posixpath.dirname(os.fspath(path).rstrip("/"))
    return os.path.dirname(os.fspath(path))


def _url_of(fs, path: str) -> str:
    """A filesystem-internal path (what fsspec's listings return) as a full URL again."""
    return fs.unstrip_protocol(path)


# -- reading ---------------------------------------------------------------------------------------------

def open_file(path: PathOrURL, mode: str = "rb") -> IO[Any]:
    """An open file (seekable for reading), locally ``open`` itself."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        return fs.open(inner, mode)
    return open(_local(path), mode)


def exists(path: PathOrURL) -> bool:
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        return fs.exists(inner)
    return os.path.exists(_local(path))


def isfile(path: PathOrURL) -> bool:
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        return fs.isfile(inner)
    return os.path.isfile(_local(path))


def isdir(path: PathOrURL) -> bool:
    """A local folder, or a URL prefix with objects under it (object stores have no empty folders)."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        return fs.isdir(inner)
    return os.path.isdir(_local(path))


def listdir(path: PathOrURL) -> list[str]:
    """The names (not paths) directly in a folder, sorted; [] when it does not exist."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))
        except FileNotFoundError:
            return []
    try:
        return sorted(os.listdir(_local(path)))
    except (FileNotFoundError, NotADirectoryError):
        return []


def glob(pattern: PathOrURL) -> list[str]:
    """The paths (URLs under a URL pattern) matching a glob pattern, sorted."""
    if is_url(pattern):
        fs, inner = filesystem(os.fspath(pattern))
        fs.invalidate_cache()  # every folder the pattern may enter
        return sorted(_url_of(fs, p) for p in fs.glob(inner))
    return sorted(globlib.glob(os.fspath(pattern)))


def expand(patterns: list[str]) -> tuple[list[str], list[str]]:
    """Brace patterns ("shards/{00000..00009}.tar") and globs -> (the existing paths/URLs they name, in
    pattern order with each glob's matches sorted; the names spelled out literally or by braces that do
    not exist)."""
    found: list[str] = []
    missing: list[str] = []
    listed: dict[str, set[str]] = {}  # an object store's folder, listed once (not one request per name)

    def present(item: str) -> bool:
        if not is_url(item):
            return os.path.exists(_local(item))
        folder = posixpath.dirname(item)
        if folder not in listed:
            listed[folder] = set(listdir(folder))
        return posixpath.basename(item) in listed[folder]

    for pattern in patterns:
        for item in braceexpand.braceexpand(pattern):
            if any(c in item for c in "*?["):
                found.extend(glob(item))
            elif present(item):
                found.append(item)
            else:
                missing.append(item)
    return found, missing


def read_bytes(path: PathOrURL) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def list_files(folder: PathOrURL, pattern: str = "*") -> list[tuple[str, int]]:
    """(path or URL, size in bytes) of the files of ``folder`` matching ``pattern``, in name order, from one
    listing (no file opened), without dot-names (the temporary siblings of local writes in progress or
    killed, hidden records); an absent folder has none."""
    if is_url(folder):
        fs, inner = filesystem(os.fspath(folder))
        try:
            entries = fs.ls(inner, detail=True)
        except FileNotFoundError:
            return []
        found = [(_url_of(fs, e["name"]), int(e["size"])) for e in entries if e["type"] == "file"]
    else:
        try:
            found = [(e.path, e.stat().st_size) for e in os.scandir(_local(folder)) if e.is_file()]
        except (FileNotFoundError, NotADirectoryError):
            return []
    return sorted((path, size) for path, size in found
                  if not name_of(path).startswith(".") and fnmatch.fnmatchcase(name_of(path), pattern))


def size(path: PathOrURL) -> int:
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        return int(fs.size(inner))
    return os.path.getsize(_local(path))


# What an object store's metadata says identifies one version of an object, best first: S3's ETag (a digest
# of the bytes, also for multipart uploads), GCS's md5/generation, then the time it was last written.
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "LastModified", "mtime", "updated", "created")


def stat(path: PathOrURL) -> dict[str, Any]:
    """What identifies this version of a file, from its metadata only (no byte read): its size and
    ``mtime_ns`` on local disk; its size and its store's version tag (``_VERSION_KEYS``: one HEAD request
    on S3) under a URL. A file rewritten in place gets a new stat; FileNotFoundError if absent."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        info = fs.info(inner)
        tag = next((f"{key}={info[key]}" for key in _VERSION_KEYS if info.get(key) is not None), "")
        return {"size": int(info["size"]), "version": tag}
    st = os.stat(_local(path))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# -- writing ---------------------------------------------------------------------------------------------

def write_bytes(path: PathOrURL, data: bytes) -> None:
    """The whole file at once: atomically on local disk, one PUT on an object store."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        fs.pipe_file(inner, data)
    else:
        atomic_write_bytes(Path(_local(path)), data)


def write_text(path: PathOrURL, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: PathOrURL, obj: Any) -> None:
    """A record (shared.atomic.json_text), whole at once."""
    write_text(path, json_text(obj))


def create_exclusive(path: PathOrURL, data: bytes) -> bool:
    """Create ``path`` holding ``data`` only if nothing is there: of two writers racing for one name exactly
    one gets True (locally ``O_CREAT | O_EXCL``; on an object store a conditional PUT, ``If-None-Match: *``).
    Locally a reader may see the file empty for a moment."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        try:
            fs.pipe_file(inner, data, mode="create")
        except (FileExistsError, OSError):
            fs.invalidate_cache(inner)
            if fs.exists(inner):  # the precondition failed: another writer created it first
                return False
            raise
        return True
    try:
        fd = os.open(_local(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def makedirs(path: PathOrURL) -> None:
    """A local folder and its parents; nothing on an object store (a prefix exists once written under)."""
    if not is_url(path):
        os.makedirs(_local(path), exist_ok=True)


def remove(path: PathOrURL) -> None:
    """A file or a whole folder/prefix; nothing there is fine."""
    if is_url(path):
        fs, inner = filesystem(os.fspath(path))
        with contextlib.suppress(FileNotFoundError):
            fs.rm(inner, recursive=True)
        fs.invalidate_cache()
        return
    local = _local(path)
    if os.path.isdir(local) and not os.path.islink(local):
        shutil.rmtree(local, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)


@contextlib.contextmanager
def local_file(path: PathOrURL) -> Iterator[Path]:
    """A local path to write ``path`` to, for the libraries that write to a path themselves (safetensors,
    torch.save, pyarrow, numpy, tarfile): locally a temporary sibling renamed over ``path`` when the block
    ends without an error (shared.atomic.atomic_path); under a URL a temporary file uploaded then, one
    object whole or absent. Inside the block the written file can be read back (a task's digest of what
    it wrote)."""
    if not is_url(path):
        with atomic_path(_local(path)) as tmp:
            yield tmp
        return
    with tempfile.TemporaryDirectory(prefix="openaim-upload-") as tmp:
        staged = Path(tmp) / name_of(path)
        yield staged
        fs, inner = filesystem(os.fspath(path))
        fs.put_file(str(staged), inner)


@contextlib.contextmanager
def local_dir(path: PathOrURL) -> Iterator[Path]:
    """``local_file`` for a folder a library fills itself: the folder itself locally (made), under a URL a
    temporary folder uploaded, every file in it, when the block ends without an error."""
    if not is_url(path):
        os.makedirs(_local(path), exist_ok=True)
        yield Path(_local(path))
        return
    with tempfile.TemporaryDirectory(prefix="openaim-upload-") as tmp:
        yield Path(tmp)
        fs, inner = filesystem(os.fspath(path))
        for file in sorted(Path(tmp).rglob("*")):
            if file.is_file():
                fs.put_file(str(file), posixpath.join(inner, file.relative_to(tmp).as_posix()))


def copy_dir(src: PathOrURL, dest: PathOrURL, last: str | None = None) -> None:
    """Copy the files of folder ``src`` (not recursive) into ``dest``, the file named ``last`` (a record
    saying the copy is complete) after every other. On an object store the copies are server-side."""
    files = [path for path, _ in list_files(src) if name_of(path) != last]  # dot-names are not listed
    if last is not None and exists(join(src, last)):
        files.append(join(src, last))
    makedirs(dest)
    for path in files:
        target = join(dest, name_of(path))
        if is_url(path) and is_url(dest):
            fs, inner = filesystem(os.fspath(path))
            fs.copy(inner, filesystem(target)[1])
        else:
            write_bytes(target, read_bytes(path))


def download(src: PathOrURL, dest: Path) -> None:
    """Copy a file or a folder (recursively) to a local path (its parent folders made)."""
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    if is_url(src):
        fs, inner = filesystem(os.fspath(src))
        if fs.isdir(inner):
            fs.get(inner.rstrip("/") + "/", str(dest), recursive=True)
        else:
            fs.get_file(inner, str(dest))
    elif os.path.isdir(_local(src)):
        shutil.copytree(_local(src), dest)
    else:
        shutil.copy2(_local(src), dest)


@functools.lru_cache(maxsize=4)
def process_copy(path: str) -> str:
    """A local path holding ``path`` for the rest of this process (a file a worker memory-maps for all its
    tasks): the path itself locally; under a URL one download per process, removed when it exits."""
    if not is_url(path):
        return _local(path)
    folder = tempfile.mkdtemp(prefix="openaim-copy-")
    atexit.register(shutil.rmtree, folder, True)
    local = os.path.join(folder, name_of(path))
    download(path, Path(local))
    return local


@contextlib.contextmanager
def replaced_dir(final: PathOrURL) -> Iterator[str]:
    """A folder written whole in place of ``final``: locally built in a temporary sibling swapped in when
    the block ends without an error (shared.atomic.atomic_dir: the previous folder stays until then);
    under a URL ``final`` itself, emptied of an earlier attempt's objects first (no rename there: what
    makes it valid is the step record written after it, shared.stage_cache)."""
    if is_url(final):
        remove(final)
        yield os.fspath(final)
        return
    with atomic_dir(_local(final)) as tmp:
        yield str(tmp)


# -- folders committed by a record written last --------------------------------------------------------

def build_dir(final: PathOrURL) -> str:
    """Where to build the folder ``final``, emptied: on local disk a hidden sibling (``.<name>.tmp``)
    renamed into place by ``commit_dir``; on an object store ``final`` itself, valid once its record is
    written."""
    if is_url(final):
        building = os.fspath(final)
        remove(building)  # objects of an earlier, uncommitted attempt
        return building
    local = Path(_local(final))
    building = local.parent / f".{local.name}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    return str(building)


def commit_dir(building: str, final: PathOrURL, record: str, content: str = "ok\n") -> None:
    """Make a folder built by ``build_dir`` valid: write its record ``record`` last (after every file in it
    is complete); on local disk also flush it and rename it into place over an older ``final``."""
    write_text(join(building, record), content)
    if is_url(final):
        return
    local = _local(final)
    _fsync_dir(building)
    if os.path.exists(local):
        shutil.rmtree(local)
    os.replace(building, local)
    _fsync_dir(os.path.dirname(local) or ".")


def is_building(name: str) -> bool:
    """A local folder that ``build_dir`` left behind (a kill before its commit)."""
    return name.startswith(".") and name.endswith(".tmp")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
