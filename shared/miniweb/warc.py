"""The crawl of the mini web as Common Crawl ships it: WARC response records and WAT metadata records.

Both are written with warcio. Record ids and dates derive from the seed and the URL (not uuid4/now) and
warcio's gzip members carry mtime 0, so the same pages always give byte-identical files.
Files are written plainly: callers write into a temporary directory swapped in whole
(shared.atomic.atomic_dir).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CRAWL_START = dt.datetime(2024, 1, 15, tzinfo=dt.UTC)  # fixed: dates must not depend on when we run
SOFTWARE = "openaim-miniweb"


@dataclass
class Page:
    url: str
    title: str
    html: str
    links: list[tuple[str, str]]  # (src exactly as written in the HTML, alt), in document order


def record_id(seed: int, *parts: str) -> str:
    digest = hashlib.sha256("\x00".join([str(seed), *parts]).encode()).digest()
    return f"<urn:uuid:{uuid.UUID(bytes=digest[:16], version=4)}>"


def warc_date(index: int) -> str:
    return (CRAWL_START + dt.timedelta(seconds=7 * index)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _warcinfo(writer, seed: int, filename: str) -> None:
    info = (f"software: {SOFTWARE}\r\nformat: WARC File Format 1.1\r\n"
            f"isPartOf: openaim-miniweb-seed{seed}\r\n").encode()
    writer.write_record(writer.create_warc_record(
        "", "warcinfo", payload=io.BytesIO(info), length=len(info),
        warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": record_id(seed, "warcinfo", filename), "WARC-Date": warc_date(0),
                           "WARC-Filename": filename}))


def _http_headers(html_bytes: bytes):
    return StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                       ("Content-Length", str(len(html_bytes)))], protocol="HTTP/1.1")


def write_warc(path: Path, pages: list[Page], seed: int, first_index: int) -> None:
    """Gzipped WARC: a warcinfo record, then one `response` record per page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        _warcinfo(writer, seed, path.name)
        for i, page in enumerate(pages):
            body = page.html.encode("utf-8")
            writer.write_record(writer.create_warc_record(
                page.url, "response", payload=io.BytesIO(body), length=len(body),
                http_headers=_http_headers(body),
                warc_headers_dict={"WARC-Record-ID": record_id(seed, "response", page.url),
                                   "WARC-Date": warc_date(first_index + i)}))


def wat_payload(page: Page, seed: int, index: int) -> dict:
    """The WAT JSON of one page's response record, in Common Crawl's layout (only the fields we fill)."""
    body = page.html.encode("utf-8")
    links = [{"path": "IMG@/src", "url": src, "alt": alt} for src, alt in page.links]
    return {
        "Container": {"Filename": f"miniweb-seed{seed}.warc.gz", "Compressed": True},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Metadata": {
                "WARC-Type": "response", "WARC-Target-URI": page.url, "WARC-Date": warc_date(index),
                "WARC-Record-ID": record_id(seed, "response", page.url),
                "Content-Type": "application/http; msgtype=response",
            },
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                    "Headers": {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(body))},
                    "Entity-Length": len(body),
                    "HTML-Metadata": {"Head": {"Title": page.title}, "Links": links},
                },
            },
        },
    }


def write_wat(path: Path, pages: list[Page], seed: int, first_index: int) -> None:
    """Gzipped WAT: a warcinfo record, then one `metadata` record (JSON) per page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        _warcinfo(writer, seed, path.name)
        for i, page in enumerate(pages):
            payload = json.dumps(wat_payload(page, seed, first_index + i), sort_keys=True,
                                 separators=(",", ":")).encode("utf-8")
            writer.write_record(writer.create_warc_record(
                page.url, "metadata", payload=io.BytesIO(payload), length=len(payload),
                warc_content_type="application/json",
                warc_headers_dict={"WARC-Record-ID": record_id(seed, "metadata", page.url),
                                   "WARC-Refers-To": record_id(seed, "response", page.url),
                                   "WARC-Date": warc_date(first_index + i)}))
