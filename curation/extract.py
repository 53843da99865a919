"""Step 1 of curation: Common Crawl WARC/WAT files (or DataComp-style url/caption parquet) -> image-text pairs

WARC and WAT files are read record by record (curation.warc_links: FastWARC, the page's charset, lexbor's
HTML tree, WAT link metadata); DataComp-style parquet files row by row.

A pair is (absolute image URL, alt text, page URL). Links that must never be fetched (non-http(s), internal
hosts in any spelling a browser accepts: see curation.netsafety) are dropped here; the binding check is made
when the download connects. Sources given as http(s) URLs are fetched through the same guarded connection.

This module reads and screens one source; the extract step (curation.extract_parts, on an engine) writes the
pairs as ``pairs/part-*.parquet`` with ``uid`` (the input's DataComp ``uid`` when it has one, else a 128-bit
hash of url + caption as 32 hex chars, DataComp style), ``url``, ``caption``, ``page_url``, ``source``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from curation.netsafety import guarded_opener, is_policy_block, url_rejection
from curation.warc_links import ExtractStats, warc_links
from shared import fsio
from shared.config.curation import ExtractConfig
from shared.errors import InputError, disk_full_as_error

# Versioned by its step: bump VERSION in openaim/steps/extract.py when this changes the step's results.


def pair_uid(url: str, caption: str) -> str:
    """Stable 128-bit id of a pair, 32 hex chars (same (url, caption) -> same uid on every machine)."""
    return hashlib.blake2b(f"{url}\x00{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


_URL_COLUMNS = ("url", "URL")
_CAPTION_COLUMNS = ("caption", "text", "alt", "TEXT")
_UID = re.compile(r"[0-9a-f]{32}")
# Files a directory source is read for (Common Crawl names: *.warc.gz, *.warc.wat.gz; WET files are not).
SOURCE_SUFFIXES = (".warc.gz", ".warc", ".wat.gz", ".wat", ".parquet")


def _text_column(path: str, schema, names: tuple[str, ...], what: str) -> str:

    name = next((c for c in names if c in schema.names), None)
    if name is None:
        raise InputError(f"{path}: needs a {what} column ({' or '.join(names)}), has {sorted(schema.names)}")
    kind = schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column {name!r} must hold text, holds {kind}")
    return name


def _parquet_links(path: str, stats: ExtractStats) -> Iterator[tuple[str, str, str, str | None]]:
    """(url, caption, page_url, uid or None) of each row of a DataComp-style metadata parquet: a url column,
    a text/caption column, optionally ``uid`` (DataComp's 32-hex-digit id, kept) and ``page_url``."""
    try:
        reader = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    schema = reader.schema_arrow
    url_col = _text_column(path, schema, _URL_COLUMNS, "url")
    cap_col = _text_column(path, schema, _CAPTION_COLUMNS, "caption/text")
    optional = [c for c in ("page_url", "uid") if c in schema.names]
    for c in optional:
        _text_column(path, schema, (c,), c)
    row = 0
    for batch in reader.iter_batches(columns=[url_col, cap_col, *optional], batch_size=65536):
        cols = batch.to_pydict()
        n = batch.num_rows
        pages = cols.get("page_url") or [None] * n
        uids = cols.get("uid") or [None] * n
        for url, cap, page, uid in zip(cols[url_col], cols[cap_col], pages, uids, strict=True):
            if uid is not None:
                uid = uid.strip().lower()
                if not _UID.fullmatch(uid):
                    raise InputError(f"{path}: column 'uid' row {row}: {uid[:40]!r} "
                                     "is not a 32-hex-digit uid")
            row += 1
            stats.records += 1
            yield (url or ""), (cap or ""), (page or ""), uid


def _directory_sources(directory: Path) -> list[str]:
    found = sorted(str(p) for p in directory.rglob("*") if p.is_file() and p.name.endswith(SOURCE_SUFFIXES))
    if not found:
        raise InputError(f"{directory} is a directory with no WARC/WAT/parquet files "
                         f"({', '.join('*' + s for s in SOURCE_SUFFIXES)})")
    return found


def _stored_sources(src: str) -> list[str]:
    """The source files an object store URL names: itself, the WARC/WAT/parquet files under it (a
    prefix), or a glob's matches, in name order."""
    if any(ch in src for ch in "*?["):
        found = fsio.glob(src)
    elif fsio.isfile(src):
        found = [src]
    else:
        found = [f for f in fsio.glob(fsio.join(src, "**")) if f.endswith(SOURCE_SUFFIXES)]
    if not found:
        raise InputError(f"input not found: {src}")
    return found


def resolve_sources(sources: list[str], default_dir: Path) -> list[str]:
    """Expand globs and directories (their WARC/WAT/parquet files); keep URLs as they are. A path or glob
    that matches nothing is an InputError."""
    if not sources:
        found = sorted(glob.glob(str(default_dir / "*.warc.gz")))
        if not found:
            raise InputError(f"no WARC files under {default_dir} "
                             "(generate the mini web or set curation.extract.sources)")
        return found
    out: list[str] = []
    for src in sources:
        if src.startswith(("http://", "https://")):
            out.append(src)
        elif fsio.is_url(src):  # an object store's file, folder or glob
            out.extend(_stored_sources(src))
        elif any(ch in src for ch in "*?["):
            found = sorted(glob.glob(os.path.expanduser(src)))
            if not found:
                raise InputError(f"no file matches {src}")
            for f in found:
                out.extend(_directory_sources(Path(f)) if os.path.isdir(f) else [f])
        else:
            p = Path(os.path.expanduser(src))
            if p.is_dir():
                out.extend(_directory_sources(p))
            elif not p.is_file():
                raise InputError(f"input not found: {src}")
            else:
                out.append(str(p))
    return out


def fetch_source(src: str, allow_hosts: list[str], dest: Path, timeout: float = 60.0) -> None:
    """Download an http(s) source to ``dest`` through the guarded opener: every connection and redirect hop
    is checked and pinned (curation.netsafety). A refusal says only "blocked by policy"."""
    why = url_rejection(src, allow_hosts)
    if why:
        raise InputError(f"refusing to fetch source {src}: {why}")
    try:
        with guarded_opener(allow_hosts).open(src, timeout=timeout) as r, open(dest, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except Exception as exc:
        dest.unlink(missing_ok=True)
        if is_policy_block(exc):
            raise InputError(f"refusing to fetch source {src}: blocked by policy") from None
        with disk_full_as_error(dest):
            raise
        raise InputError(f"cannot fetch {src}: {exc}") from None


def _open_source(src: str, allow_hosts: list[str], tmp: Path) -> str:
    """Local path of a source; an http(s) source is fetched first (``fetch_source``), an object store's
    copied into ``tmp`` (shared.fsio: the task reads the file from local disk)."""
    if fsio.is_url(src) and not src.startswith(("http://", "https://")):
        dest = tmp / fsio.name_of(src)
        fsio.download(src, dest)
        return str(dest)
    if not src.startswith(("http://", "https://")):
        return src
    suffix = ".parquet" if urlsplit(src).path.endswith(".parquet") else ""  # how the file is read
    dest = tmp / (hashlib.sha1(src.encode()).hexdigest() + suffix)
    fetch_source(src, allow_hosts, dest)
    return str(dest)


def _reason_kind(why: str) -> str:
    """'internal address 10.0.0.1' -> 'internal address': the histogram counts kinds, not hosts."""
    if why.startswith("scheme "):
        return why  # 'scheme ftp not allowed' names the scheme, a small set
    return " ".join(why.split(" ")[:2])


def file_links(local: str, source: str, stats: ExtractStats,
               max_page_bytes: int = ExtractConfig.model_fields["max_page_bytes"].default,
               ) -> Iterator[tuple[str, str, str, str | None]]:
    """(url, alt, page_url, uid or None) of every image link of one local source file (WARC, WAT, parquet);
    ``max_page_bytes``: ExtractConfig's, the most bytes of one record's page read."""
    if local.endswith(".parquet"):
        yield from _parquet_links(local, stats)
        return
    try:
        stream = open(local, "rb")  # noqa: SIM115 - closed below, after the generator is drained
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None
    with stream:
        for url, alt, page_url in warc_links(stream, source, stats, max_page_bytes):
            yield url, alt, page_url, None


def screen_link(url: str, alt: str, cfg: ExtractConfig, stats: ExtractStats) -> str | None:
    """The link's caption (alt text, whitespace collapsed) if the pair is kept, else None (reason counted)."""
    stats.links += 1
    caption = " ".join(alt.split())
    if len(caption) < max(cfg.min_caption_chars, 1):
        stats.dropped["empty caption"] += 1
        return None
    why = url_rejection(url, cfg.allow_hosts)
    if why:
        stats.dropped["unsafe url: " + _reason_kind(why)] += 1
        return None
    return caption


__all__ = ["fetch_source", "file_links", "pair_uid", "resolve_sources", "screen_link"]
