"""Image links of Common Crawl WARC and WAT files, record by record (the extract step's reader).

Records are read with FastWARC (plain or gzip files). A WARC *response* record with an HTML payload carries
a page's raw HTML (its transfer and content codings undone): we parse its ``<img src alt>`` tags with
selectolax's lexbor (the HTML standard's tree builder, scripting off) from text we decode first, with the
charset of the HTTP header, else of a ``<meta>`` in the first 1024 bytes, else detected
(charset-normalizer); labels mean what the WHATWG Encoding Standard says (webencodings), a label it does not
know falls through to the next source, bad bytes become U+FFFD. At most ``max_page_bytes`` of a record are
read, before and after its codings are undone (a gzip or brotli bomb is never inflated whole). A WAT
*metadata* record (``Content-Type: application/json``, an ``Envelope`` object) carries the same links already
extracted (``Envelope > Payload-Metadata > HTTP-Response-Metadata > HTML-Metadata > Links[]`` entries with
``path == "IMG@/src"``). Other records (``warcinfo``, ``request``, a WARC's own ``metadata`` records,
``resource``, ``revisit``, WET ``conversion``) carry no image links and are skipped, not counted corrupt. A
file with no record of either kind (a WET file, a warcinfo-only file) is an error that says what it holds. A
file cut short or damaged part-way counts one corrupt record and keeps the records before the damage.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urljoin

import charset_normalizer
import webencodings
from fastwarc.stream_io import BrotliReader, ChunkedReader, GzipReader
from fastwarc.warc import ArchiveIterator, WarcRecordType
from selectolax.lexbor import LexborHTMLParser

from shared.errors import InputError


@dataclass
class ExtractStats:
    """What an extract task counted: WARC records read, damaged and cut; links seen and kept; why the
    others were dropped."""

    records: int = 0
    corrupt_records: int = 0
    oversized_records: int = 0  # cut at max_page_bytes: only their first max_page_bytes were parsed
    links: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"records": self.records, "corrupt_records": self.corrupt_records,
                "oversized_records": self.oversized_records, "links": self.links, "kept": self.kept,
                "dropped": dict(sorted(self.dropped.items()))}


log = logging.getLogger("openaim.curation")

IMG_LINK_PATH = "IMG@/src"


def links_from_html(html: str, page_url: str) -> list[tuple[str, str]]:
    """(absolute src, alt) of each <img> of a page, in document order. The page is parsed as the HTML standard
    says a browser with scripting off parses it (lexbor): ``<noscript>`` fallbacks count; text that only
    looks like a tag (inside ``<title>``, ``<textarea>``, comments, scripts) does not; of a repeated
    attribute the first counts. Relative srcs resolve against the page, or its first ``<base href>``."""
    tree = LexborHTMLParser(html)
    base_tag = tree.css_first("base[href]")
    base = urljoin(page_url, (base_tag.attributes.get("href") or "").strip()) if base_tag else page_url
    out = []
    for img in tree.tags("img"):
        attrs = img.attributes
        src = attrs.get("src")
        if src:
            out.append((urljoin(base, src.strip()), attrs.get("alt") or ""))
    return out


def links_from_wat(meta: dict | bytes, page_url: str) -> list[tuple[str, str]]:
    """(absolute url, alt) of the IMG@/src links of one WAT JSON record (parsed, or its bytes)."""
    if isinstance(meta, bytes | str):
        meta = json.loads(meta)
    env = meta.get("Envelope", {})
    page_url = env.get("WARC-Header-Metadata", {}).get("WARC-Target-URI", page_url)
    html_meta = env.get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {}).get("HTML-Metadata", {})
    base = html_meta.get("Head", {}).get("Base") or page_url
    out = []
    for link in html_meta.get("Links", []) or []:
        if link.get("path") == IMG_LINK_PATH and link.get("url"):
            out.append((urljoin(base, link["url"].strip()), link.get("alt", "") or ""))
    return out


_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _web_codec(label: str | None, in_meta: bool = False) -> codecs.CodecInfo | None:
    """The codec a browser decodes with for a charset label: the WHATWG Encoding Standard's label table
    (webencodings), so ``latin1``/``ascii`` mean windows-1252 and Python-only codecs (``rot13``, ``zlib``,
    ``utf-7``, ...) are unknown. None for an unknown label, and for the "replacement" encoding
    (``iso-2022-kr`` and kin: a browser shows such a page as one U+FFFD, we try the next source instead).
    From a ``<meta>``, UTF-16 means UTF-8 and x-user-defined means windows-1252 (HTML standard, prescan)."""
    encoding = webencodings.lookup(label.strip("\t\n\f\r \"'")) if label else None
    if encoding is None or encoding.name == "replacement":
        return None
    if in_meta and encoding.name in ("utf-16le", "utf-16be", "x-user-defined"):
        encoding = webencodings.lookup("utf-8" if encoding.name.startswith("utf-16") else "windows-1252")
    return encoding.codec_info


def header_charset(content_type: str | None) -> str | None:
    for part in (content_type or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            return v
    return None


def decode_html(body: bytes, content_type: str | None) -> str:
    """Decode a page like a browser: BOM, then the HTTP header's charset, then a ``<meta>`` charset in the
    first 1024 bytes, then detection; labels the WHATWG Encoding Standard does not know are skipped and
    undecodable bytes become U+FFFD."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(name, errors="replace")
    meta = _META_CHARSET.search(body[:1024])
    codec = _web_codec(header_charset(content_type)) or _web_codec(
        meta.group(1).decode("ascii") if meta else None, in_meta=True)
    if codec is None:
        best = charset_normalizer.from_bytes(body[:65536]).best()
        # A detected name is a Python text codec that decoded the bytes (it need not be a WHATWG label).
        codec = codecs.lookup(best.encoding) if best is not None else None
    return (codec or codecs.lookup("utf-8")).decode(body, "replace")[0]


# The HTTP transfer and content codings a page's bytes may arrive in, and FastWARC's reader that undoes each.
_HTTP_DECODERS = {"chunked": ChunkedReader, "gzip": GzipReader, "x-gzip": GzipReader,
                  "deflate": partial(GzipReader, zlib=True), "br": BrotliReader}


def _read_capped(stream, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` from a stream, read a MiB at a time (a bomb is never inflated whole), and
    whether more was there."""
    out = bytearray()
    while len(out) < max_bytes:
        chunk = stream.read(min(1 << 20, max_bytes - len(out)))
        if not chunk:
            return bytes(out), False
        out += chunk
    return bytes(out), bool(stream.read(1))


def decode_payload(body: bytes, http_headers, max_bytes: int) -> tuple[bytes, bool]:
    """A response's page bytes: its Transfer-Encoding, then its Content-Encoding codings undone, last applied
    first, each cut at ``max_bytes``; and whether a coding's output was cut. A body that does not decode as
    its header says is kept as it stands (a coding we do not know, or bytes that are not what the header
    claims: what warcio's reader did)."""
    cut = False
    for header in ("Transfer-Encoding", "Content-Encoding"):
        codings = [c.strip().lower() for c in (http_headers.get(header) or "").split(",")]
        for coding in reversed(codings):
            decoder = _HTTP_DECODERS.get(coding)
            if decoder is None:
                continue  # identity, empty, or unknown
            try:
                body, more = _read_capped(decoder(io.BytesIO(body)), max_bytes)
            except OSError:
                return body, cut
            cut = cut or more
    return body, cut


def _is_wat_record(record) -> bool:
    ctype = (record.headers.get("Content-Type") or "").lower()
    return record.record_type == WarcRecordType.metadata and "json" in ctype


class TruncatedRecord(Exception):
    """The file ends inside this record (a cut download): nothing after it can be read."""


def _read_block(record, max_bytes: int) -> tuple[bytes, bool]:
    """The rest of a record's block (its payload once the HTTP headers are parsed), cut at ``max_bytes``, and
    whether it was cut (the rest is passed over, not held); TruncatedRecord when the file ends before the
    length its headers declare."""
    body, cut = _read_capped(record.reader, max_bytes)
    length = len(body) + (1 + record.reader.consume() if cut else 0)  # 1: the byte that showed there was more
    if length < record.content_length:
        raise TruncatedRecord
    return body, cut


def _skipped(record) -> None:
    """Pass over a record that holds no links (None), checking that the file does not end inside it."""
    if record.reader.consume() < record.content_length:
        raise TruncatedRecord


class OversizedRecord(Exception):
    """A WAT record longer than ``max_page_bytes``: a cut JSON document cannot be parsed."""


def record_links(record, max_page_bytes: int) -> tuple[list[tuple[str, str]], bool] | None:
    """(url, alt) of the image links of one WARC/WAT record (FastWARC, read with ``parse_http=False``) and
    whether its page was cut at ``max_page_bytes``, or None for a record that holds none by its kind
    (warcinfo, request, WARC metadata, non-HTML response, ...). Raises TruncatedRecord when the file ends
    inside the record, OversizedRecord for a WAT record over the cap, another exception on a damaged record
    of a parsed kind."""
    page_url = record.headers.get("WARC-Target-URI") or ""
    if record.record_type == WarcRecordType.response and record.is_http:
        record.parse_http()
        ctype = record.http_headers.get("Content-Type")
        if ctype and "html" not in ctype.lower():
            return _skipped(record)
        # A page over the cap is parsed from its first max_page_bytes, as a record Common Crawl stored cut at
        # its fetch limit (WARC-Truncated) is parsed today, and as a browser shows the part it has: the
        # links there are real. It is counted (oversized_records), so a crawl full of bombs shows.
        raw, cut = _read_block(record, max_page_bytes)
        body, decoded_cut = decode_payload(raw, record.http_headers, max_page_bytes)
        return links_from_html(decode_html(body, ctype), page_url), cut or decoded_cut
    if _is_wat_record(record):
        raw, cut = _read_block(record, max_page_bytes)
        if cut:
            raise OversizedRecord
        payload = json.loads(raw)
        if not isinstance(payload, dict) or not isinstance(payload.get("Envelope"), dict):
            return None  # JSON metadata that is not a WAT envelope
        return links_from_wat(payload, page_url), False
    return _skipped(record)


def _no_records_message(source: str, kinds: Counter) -> str:
    if not kinds:
        return f"{source}: no records"
    held = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    if kinds.get("conversion"):
        return (f"{source}: a WET file (plain-text 'conversion' records: {held}) has no image links; "
                "use the WARC or WAT files of the crawl")
    return (f"{source}: no response or WAT metadata record to take image links from (holds {held}); "
            "use the WARC or WAT files of the crawl")


def _gzip_tail_broken(stream, start: int) -> bool:
    """Whether a gzip file, from the member where its last record began, fails to end in whole gzip members:
    FastWARC reads a download cut off before the next member gave a byte of its record as a quiet end."""
    stream.seek(start)
    data = stream.read()
    while data:
        member = zlib.decompressobj(wbits=31)
        try:
            member.decompress(data)
        except zlib.error:
            return True
        if not member.eof:
            return True
        data = member.unused_data
    return False


def warc_links(stream, source: str, stats: ExtractStats,
                max_page_bytes: int) -> Iterator[tuple[str, str, str]]:
    """(url, alt, page_url) of every image link in a WARC or WAT file (plain or gzip; FastWARC). Corrupt
    records are counted and skipped; pages over ``max_page_bytes`` are counted and parsed from their first
    ``max_page_bytes`` (a WAT record over it is counted and skipped); a file that breaks (cut short, bytes
    that are not a WARC record, a damaged gzip member) counts one corrupt record and ends there. A file with
    no record to take links from raises InputError saying what it holds."""
    gzipped = stream.read(2) == b"\x1f\x8b"
    stream.seek(0)
    it = iter(ArchiveIterator(stream, parse_http=False))
    first = True
    kinds: Counter = Counter()  # record types seen
    parsed = 0  # records of a kind that holds links
    last_record_at = 0  # where the last record read began (in a gzip file, its member's start)
    while True:
        try:
            record = next(it)
            if record.headers.get("Content-Length") is None:
                raise TruncatedRecord  # the file ends inside the record's WARC header block
        except StopIteration:
            if gzipped and _gzip_tail_broken(stream, last_record_at):
                if first:
                    raise InputError(f"{source}: not a readable WARC/WAT file (no complete record)") from None
                stats.corrupt_records += 1
                log.warning("%s: truncated after %d records; the damaged tail was skipped",
                            source, stats.records)
            elif parsed == 0:
                raise InputError(_no_records_message(source, kinds)) from None
            return
        except (TruncatedRecord, OSError, ValueError) as exc:
            if first:
                why = "no complete record" if isinstance(exc, TruncatedRecord) else type(exc).__name__
                raise InputError(f"{source}: not a readable WARC/WAT file ({why})") from None
            stats.corrupt_records += 1
            log.warning("%s: damaged stream after %d records (%s); rest of file skipped",
                        source, stats.records, exc or "cut short")
            return
        last_record_at = record.stream_pos
        first = False
        kinds[str(record.record_type)] += 1
        page_url = record.headers.get("WARC-Target-URI") or ""
        try:
            found = record_links(record, max_page_bytes)
        except OversizedRecord:
            parsed += 1
            stats.records += 1
            stats.oversized_records += 1
            log.debug("%s: WAT record over %d bytes skipped", source, max_page_bytes)
            continue
        except TruncatedRecord:
            stats.corrupt_records += 1
            if sum(kinds.values()) == 1:
                raise InputError(f"{source}: not a readable WARC/WAT file (no complete record)") from None
            log.warning("%s: truncated after %d records; the damaged tail was skipped", source, stats.records)
            return
        except Exception as exc:  # noqa: BLE001 - one bad record never stops a crawl
            parsed += 1
            stats.records += 1
            stats.corrupt_records += 1
            log.debug("%s: corrupt record skipped: %s", source, exc)
            continue
        if found is None:
            continue
        links, cut = found
        parsed += 1
        stats.records += 1
        if cut:
            stats.oversized_records += 1
            log.debug("%s: page of %s cut at %d bytes", source, page_url, max_page_bytes)
        for url, alt in links:
            yield url, alt, page_url
