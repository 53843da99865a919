"""The one webdataset reader: webdataset's own tar iteration and sample-key rule, for every stage.

A sample is a run of consecutive tar members that share a key. The key and the field come from
webdataset's ``base_plus_ext``: the member's path up to the first dot of its basename is the key, the rest
the field, lower-cased (``dir.x/sub/a.b.c.JPG`` -> key ``dir.x/sub/a``, field ``b.c.jpg``). Members that
are not regular files, whose basename has no dot or starts with one, and webdataset's ``__meta__`` files
are skipped; a field repeated within one sample is an error (``ValueError``).

- ``read_samples``: the samples of one shard with their bytes, streamed (webdataset's tar expansion and
  grouping over the file that shared.fsio opens: a local path or any fsspec URL, ``s3://`` included).
- ``indexed_samples``: the same samples of an opened tar with member headers (``tarfile.TarInfo``) in
  place of bytes, for readers that read only some members, or read them later by offset.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, group_by_keys, meta_prefix, meta_suffix, tar_file_expander

from shared import fsio

# tar_file_iterator's default skip_meta: members that webdataset never turns into sample fields.
_SKIP_META = re.compile(r"__[^/]*__($|/)")


def read_samples(shard: str | Path, handler: Callable[[Exception], bool] = reraise_exception
                 ) -> Iterator[dict[str, Any]]:
    """The samples of one shard in tar order: dicts of ``__key__``, ``__url__`` and field -> bytes.
    ``handler`` gets each error and returns whether to go on (webdataset's handler protocol)."""
    files = tar_file_expander(_opened(str(shard), handler), handler=handler)
    return group_by_keys(files, handler=handler)


def _opened(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """webdataset's ``url_opener`` with shared.fsio opening the file: the stream, closed when read."""
    try:
        stream = fsio.open_file(url, "rb")
    except Exception as exc:
        exc.args = (*exc.args, url)
        if handler(exc):
            return
        raise
    with stream:
        yield {"url": url, "stream": stream}


def _sample_file(info: tarfile.TarInfo) -> bool:
    """Whether webdataset's tar iteration (``tar_file_iterator``) turns this member into a field."""
    name = info.name
    if not info.isreg() or name is None:
        return False
    if "/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix):
        return False
    return _SKIP_META.match(name) is None


def indexed_samples(tar: tarfile.TarFile, url: str = "") -> Iterator[dict[str, Any]]:
    """The samples of an opened tar in tar order, grouped as ``read_samples`` groups them, with each
    field's ``TarInfo`` (read it with ``tar.extractfile``) instead of its bytes."""
    files = ({"fname": info.name, "data": info, "__url__": url} for info in tar if _sample_file(info))
    return group_by_keys(files, keys=base_plus_ext)
