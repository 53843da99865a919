"""Step 1 of curation: Common Crawl WARC/WAT files (or a DataComp-style url/caption parquet) -> image-text pairs.

A WARC *response* record carries a page's raw HTML: we parse its ``<img src alt>`` tags. A WAT *metadata*
record carries the same links already extracted (``Links[]`` entries with ``path == "IMG@/src"``). Either
way a pair is (absolute image URL, alt text, page URL). Links that must never be fetched (non-http(s),
private/loopback/link-local hosts) are dropped here and again right before download.

Output: ``pairs.parquet`` with ``uid`` (128-bit hash of url + caption as 32 hex chars, DataComp style),
``url``, ``caption``, ``page_url``, ``source``.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

from shared.config.curation import ExtractConfig
from shared.errors import InputError
from shared.netsafety import url_rejection

# Bump when the extracted pairs change for the same config and inputs: this step and every step after it
# rerun (shared/stage_cache.py). Edits that change no result (comments, refactors) need no bump.
VERSION = 1

log = logging.getLogger("openaim.curation")

IMG_LINK_PATH = "IMG@/src"


def pair_uid(url: str, caption: str) -> str:
    """Stable 128-bit id of a pair, 32 hex chars (same (url, caption) -> same uid on every machine)."""
    return hashlib.blake2b(f"{url}\x00{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass
class ExtractStats:
    records: int = 0
    corrupt_records: int = 0
    links: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"records": self.records, "corrupt_records": self.corrupt_records, "links": self.links,
                "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


class _ImgTagParser(HTMLParser):
    """Collects (src, alt) of every <img>; the page's <base href> changes what relative srcs resolve against."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[tuple[str, str]] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "img" and a.get("src"):
            self.images.append((a["src"], a.get("alt", "")))
        elif tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]

    handle_startendtag = handle_starttag


def links_from_html(html: str, page_url: str) -> list[tuple[str, str]]:
    """(absolute src, alt) of each <img> in a page; relative srcs resolve against the page (or its <base>)."""
    parser = _ImgTagParser()
    parser.feed(html)
    parser.close()
    base = urljoin(page_url, parser.base) if parser.base else page_url
    return [(urljoin(base, src.strip()), alt) for src, alt in parser.images]


def links_from_wat(payload: bytes, page_url: str) -> list[tuple[str, str]]:
    """(absolute url, alt) of the IMG@/src links of one WAT JSON record."""
    meta = json.loads(payload)
    env = meta.get("Envelope", {})
    page_url = env.get("WARC-Header-Metadata", {}).get("WARC-Target-URI", page_url)
    html_meta = env.get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {}).get("HTML-Metadata", {})
    base = html_meta.get("Head", {}).get("Base") or page_url
    out = []
    for link in html_meta.get("Links", []) or []:
        if link.get("path") == IMG_LINK_PATH and link.get("url"):
            out.append((urljoin(base, link["url"].strip()), link.get("alt", "") or ""))
    return out


def _charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            return v.strip("\"' ")
    return "utf-8"


def _warc_links(stream, source: str, stats: ExtractStats, size: int) -> Iterator[tuple[str, str, str]]:
    """(url, alt, page_url) of every image link in a WARC or WAT file. Corrupt records are counted and skipped;
    a stream that breaks mid-file ends that file (warcio cannot resynchronise inside a damaged gzip member)."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    archive = ArchiveIterator(stream)
    it = iter(archive)
    first = True
    while True:
        try:
            record = next(it)
        except StopIteration:
            # warcio ends quietly on a truncated last gzip member: bytes left past the last whole record
            # mean one record was cut off.
            if archive.offset < size:
                if first:
                    raise InputError(f"{source}: not a readable WARC/WAT file (no complete record)") from None
                stats.corrupt_records += 1
                log.warning("%s: truncated after %d records; the damaged tail was skipped", source, stats.records)
            return
        except (ArchiveLoadFailed, OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
            if first:
                raise InputError(f"{source}: not a readable WARC/WAT file ({type(exc).__name__})") from None
            stats.corrupt_records += 1
            log.warning("%s: damaged stream after %d records (%s); rest of file skipped", source, stats.records, exc)
            return
        if first and not (record.format == "warc" and record.rec_headers.get_header("WARC-Type")):
            raise InputError(f"{source}: not a readable WARC/WAT file (first record has no WARC header)")
        first = False
        try:
            page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
            if record.rec_type == "response":
                ctype = record.http_headers.get_header("Content-Type") if record.http_headers else None
                if ctype and "html" not in ctype.lower():
                    continue
                stats.records += 1
                html = record.content_stream().read().decode(_charset(ctype), errors="replace")
                links = links_from_html(html, page_url)
            elif record.rec_type == "metadata":
                stats.records += 1
                links = links_from_wat(record.content_stream().read(), page_url)
            else:
                continue
        except Exception as exc:  # noqa: BLE001 - one bad record never stops a crawl
            stats.corrupt_records += 1
            log.debug("%s: corrupt record skipped: %s", source, exc)
            continue
        for url, alt in links:
            yield url, alt, page_url


def _parquet_links(path: str, stats: ExtractStats) -> Iterator[tuple[str, str, str]]:
    """DataComp metadata style: a url column and a text/caption column."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    cols = set(table.column_names)
    cap_col = next((c for c in ("caption", "text", "alt", "TEXT") if c in cols), None)
    url_col = next((c for c in ("url", "URL") if c in cols), None)
    if url_col is None or cap_col is None:
        raise InputError(f"{path}: needs a url column and a caption/text column, has {sorted(cols)}")
    page = table.column("page_url").to_pylist() if "page_url" in cols else [""] * table.num_rows
    for url, cap, p in zip(table.column(url_col).to_pylist(), table.column(cap_col).to_pylist(), page):
        stats.records += 1
        yield (url or ""), (cap or ""), (p or "")


def resolve_sources(sources: list[str], default_dir: Path) -> list[str]:
    """Expand globs; keep URLs as they are. A path or glob that matches nothing is an InputError."""
    if not sources:
        found = sorted(glob.glob(str(default_dir / "*.warc.gz")))
        if not found:
            raise InputError(f"no WARC files under {default_dir} (generate the mini web or set curation.extract.sources)")
        return found
    out: list[str] = []
    for src in sources:
        if src.startswith(("http://", "https://")):
            out.append(src)
        elif any(ch in src for ch in "*?["):
            found = sorted(glob.glob(os.path.expanduser(src)))
            if not found:
                raise InputError(f"no file matches {src}")
            out.extend(found)
        else:
            p = Path(os.path.expanduser(src))
            if not p.is_file():
                raise InputError(f"input not found: {src}")
            out.append(str(p))
    return out


def _open_source(src: str, allow_hosts: list[str], tmp: Path) -> str:
    """Local path of a source; an http(s) source is fetched (after the same safety check as images)."""
    if not src.startswith(("http://", "https://")):
        return src
    import urllib.request

    why = url_rejection(src, allow_hosts)
    if why:
        raise InputError(f"refusing to fetch source {src}: {why}")
    dest = tmp / hashlib.sha1(src.encode()).hexdigest()
    try:
        with urllib.request.urlopen(src, timeout=60) as r, open(dest, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot fetch {src}: {exc}") from None
    return str(dest)


def _reason_kind(why: str) -> str:
    """'internal address 10.0.0.1' -> 'internal address': the histogram counts kinds, not hosts."""
    if why.startswith("scheme "):
        return why  # 'scheme ftp not allowed' names the scheme, a small set
    if " resolves to " in why:
        return "resolves to internal address"
    return " ".join(why.split(" ")[:2])


def extract_pairs(cfg: ExtractConfig, sources: list[str], out_path: Path, progress=None) -> dict:
    """Extract unique, fetchable (url, caption) pairs from ``sources`` into ``out_path`` (parquet, atomic).

    Returns the counts (records, corrupt records, links, kept, dropped by reason) for the manifest.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shared.atomic import atomic_path

    stats = ExtractStats()
    seen: set[tuple[str, str]] = set()
    rows: dict[str, list[str]] = {"uid": [], "url": [], "caption": [], "page_url": [], "source": []}
    task = progress.add_task("extract", total=len(sources)) if progress else None
    with tempfile.TemporaryDirectory(prefix="openaim-extract-") as tmpdir, contextlib.ExitStack() as closing:
        for src in sources:
            local = _open_source(src, cfg.allow_hosts, Path(tmpdir))
            if local.endswith(".parquet"):
                links = _parquet_links(local, stats)
            else:
                try:
                    stream = closing.enter_context(open(local, "rb"))
                except OSError as exc:
                    raise InputError(f"cannot read {src}: {exc.strerror}") from None
                links = _warc_links(stream, src, stats, os.path.getsize(local))
            name = Path(src).name
            for url, alt, page_url in links:
                stats.links += 1
                caption = " ".join(alt.split())
                if len(caption) < max(cfg.min_caption_chars, 1):
                    stats.dropped["empty caption"] += 1
                    continue
                why = url_rejection(url, cfg.allow_hosts)
                if why:
                    stats.dropped["unsafe url: " + _reason_kind(why)] += 1
                    continue
                if (url, caption) in seen:
                    stats.dropped["duplicate pair"] += 1
                    continue
                seen.add((url, caption))
                for k, v in zip(rows, (pair_uid(url, caption), url, caption, page_url, name)):
                    rows[k].append(v)
            if progress:
                progress.advance(task)
    stats.kept = len(rows["uid"])
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.table(rows, schema=pa.schema([(k, pa.string()) for k in rows])), tmp)
    return stats.as_dict()


__all__ = ["extract_pairs", "links_from_html", "links_from_wat", "pair_uid", "resolve_sources"]
