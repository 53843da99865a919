"""Errors meant for the user: printed as one line, no traceback, with a chosen exit code."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class OpenAIMError(Exception):
    """A problem the user can fix (bad path, bad config, corrupt artifact). Printed as one line."""

    exit_code = 1


class ConfigError(OpenAIMError):
    """A config value is invalid. Exit code 2, like a usage error."""

    exit_code = 2


class InputError(OpenAIMError):
    """An input file or URL is missing, unreadable or corrupt."""

    exit_code = 1


class PartialFailure(OpenAIMError):
    """A stage wrote every output it could, but some of its parts failed (named in the message)."""

    exit_code = 1


class PeerError(OpenAIMError):
    """A collective with the other torchrun ranks failed: a rank died, hung past the timeout, or closed
    its connection. Exit code 4, so a launcher (or a person) tells it from this rank's own errors."""

    exit_code = 4


class DiskFullError(OpenAIMError):
    """A write ran out of disk space (ENOSPC / quota). Finished outputs are untouched (atomic writes)."""

    exit_code = 1


# How libraries report a write that ran out of space when they do not keep the OSError: torch's zip writer
# ("unexpected pos"), safetensors ("os error 28"), pyarrow/C++ and tracebacks ("No space left on device").
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "unexpected pos", "[Errno 28]",
                   "os error 28")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a write that ran out of disk space."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc) for t in _DISK_FULL_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_message(path: str | os.PathLike) -> str:
    return (f"disk full: cannot write {path} (free space on {_mount_of(Path(path))} and rerun; "
            "finished outputs are kept)")


def _mount_of(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Turn running out of disk space inside the block into one clear DiskFullError naming ``path``.

    Usage: ``with disk_full_as_error(ckpt_dir): write_checkpoint(...)``. Any other error passes unchanged.
    """
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(path)) from exc
        raise
