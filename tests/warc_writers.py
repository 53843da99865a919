"""WARC and WAT files written with warcio's own writer, for the extract tests: simple pages, and the real
Common Crawl layouts (WARC 1.1 record types; CC's WAT JSON) with ugly pages."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import urlsplit


def _http_response(html: str) -> io.BytesIO:
    body = html.encode()
    return io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def write_warc(path: Path, pages: dict[str, str]) -> None:
    """A gzipped WARC with one response record per page (what Common Crawl's WARC files hold)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, html in pages.items():
            body = html.encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                               ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=http))


def write_wat(path: Path, pages: dict[str, list[dict]], corrupt_json: bool = False) -> None:
    """A gzipped WAT file: metadata records whose JSON lists the page's links (IMG@/src entries)."""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, links in pages.items():
            meta = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": url},
                                 "Payload-Metadata": {"HTTP-Response-Metadata": {
                                     "HTML-Metadata": {"Links": links}}}}}
            payload = json.dumps(meta).encode()
            writer.write_record(writer.create_warc_record(url, "metadata", payload=io.BytesIO(payload),
                                                          warc_content_type="application/json"))
        if corrupt_json:
            writer.write_record(writer.create_warc_record("http://example.com/bad", "metadata",
                                                          payload=io.BytesIO(b"{not json"),
                                                          warc_content_type="application/json"))

# --- Real Common Crawl layouts, written with warcio's own writer (WARC 1.1 record types; CC's WAT JSON) ---

def status_and_headers(status: str, headers: list[tuple[str, str]], body: bytes):
    from warcio.statusandheaders import StatusAndHeaders

    return StatusAndHeaders(status, headers + [("Content-Length", str(len(body)))], protocol="HTTP/1.1")


def write_cc_warc(path: Path, captures: list[tuple[str, str, bytes]]) -> None:
    """What a CC-MAIN WARC holds: a warcinfo record, then per capture a request, a response and a metadata
    record (application/warc-fields), each record its own gzip member.
    ``captures``: (url, content type, body)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True, warc_version="WARC/1.1")
        info = {"software": "test", "format": "WARC File Format 1.1", "isPartOf": "CC-MAIN-TEST"}
        w.write_record(w.create_warcinfo_record(path.name, info))
        for url, ctype, body in captures:
            parts = urlsplit(url)
            req = StatusAndHeaders(f"GET {parts.path or '/'} HTTP/1.1",
                                   [("Host", parts.netloc), ("User-Agent", "CCBot/2.0")],
                                   is_http_request=True)
            w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req))
            http = status_and_headers("200 OK", [("Content-Type", ctype)], body)
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
            fields = b"fetchTimeMs: 112\r\ncharset-detected: UTF-8\r\nlanguages-cld2: {\"languages\":[]}\r\n"
            w.write_record(w.create_warc_record(url, "metadata", payload=io.BytesIO(fields),
                                                warc_content_type="application/warc-fields"))


def _wat_envelope(url: str, warc_type: str, payload_meta: dict) -> dict:
    return {"Container": {"Filename": "CC-MAIN-TEST.warc.gz", "Compressed": True, "Offset": "0"},
            "Envelope": {"Format": "WARC", "WARC-Header-Length": "400",
                         "WARC-Header-Metadata": {"WARC-Type": warc_type, "WARC-Target-URI": url},
                         "Payload-Metadata": payload_meta}}


def write_cc_wat(path: Path, pages: list[tuple[str, str | None, list[dict]]]) -> None:
    """What a CC-MAIN WAT holds: a warcinfo record, then one metadata record (application/json) per record of
    the WARC: request, response (with HTML-Metadata Links when it was HTML) and metadata. ``pages``:
    (url, <base href> or None, links)."""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True, warc_version="WARC/1.1")
        w.write_record(w.create_warcinfo_record(path.name, {"software": "ia-web-commons", "format": "WAT"}))
        for url, base, links in pages:
            head = {"Title": "t", **({"Base": base} if base else {})}
            envelopes = [
                _wat_envelope(url, "request", {
                    "Actual-Content-Type": "application/http; msgtype=request",
                    "HTTP-Request-Metadata": {"Request-Message": {"Method": "GET"}}}),
                _wat_envelope(url, "response", {
                    "Actual-Content-Type": "application/http; msgtype=response",
                    "HTTP-Response-Metadata": {"Response-Message": {"Status": "200"},
                                               "Headers": {"Content-Type": "text/html"},
                                               "HTML-Metadata": {"Head": head, "Links": links}}}),
                _wat_envelope(url, "metadata", {"Actual-Content-Type": "application/warc-fields",
                                                "WARC-Metadata-Metadata": {"Metadata-Records": []}}),
            ]
            for env in envelopes:
                payload = io.BytesIO(json.dumps(env).encode())
                w.write_record(w.create_warc_record(url, "metadata", payload=payload,
                                                    warc_content_type="application/json"))


CYRILLIC = "Красный круг на белом"
JAPANESE = "赤い丸の写真です"
UGLY_CAPTURES = [
    # charset in the header; a relative src; a data: URI (never fetchable); an image without alt
    ("http://a.example/dir/p1.html", "text/html; charset=utf-8",
     '<img src="img/one.jpg" alt="Straße café"><img src="data:image/png;base64,iVBO" alt="inline">'
     '<img src="/noalt.jpg">'.encode()),
    # charset only in <meta charset>: the header says nothing
    ("http://b.example/p2.html", "text/html",
     f'<html><head><meta charset="windows-1251"></head><body><img src="/r.jpg" alt="{CYRILLIC}">'
     "</body></html>".encode("cp1251")),
    # charset only in <meta http-equiv>, Shift_JIS
    ("http://c.example/p3.html", "text/html",
     '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">'
     f'<img src="/j.jpg" alt="{JAPANESE}">'.encode("shift_jis")),
    # an unknown label in the header: the page is kept (meta, then detection decide)
    ("http://d.example/p4.html", "text/html; charset=x-no-such-charset",
     ("<p>" + "Les données sont stockées en UTF-8 ici. " * 8
      + '</p><img src="/u.jpg" alt="déjà vu">').encode()),
    # bad bytes in a UTF-8 page: replaced, the page still counts
    ("http://e.example/p5.html", "text/html; charset=utf-8",
     b'<p>\xff\xfe\xc3(</p><img src="/bad.jpg" alt="still readable">'),
    # <base href> changes what a relative src resolves against
    ("http://f.example/p6.html", "text/html",
     b'<base href="http://cdn.f.example/assets/"><img src="x/y.png" alt="based image">'),
    # not HTML: skipped, not corrupt
    ("http://g.example/i.jpg", "image/jpeg", b"\xff\xd8\xff\xe0 not parsed"),
]
UGLY_EXPECTED = {
    ("http://a.example/dir/img/one.jpg", "Straße café"),
    ("http://b.example/r.jpg", CYRILLIC),
    ("http://c.example/j.jpg", JAPANESE),
    ("http://d.example/u.jpg", "déjà vu"),
    ("http://e.example/bad.jpg", "still readable"),
    ("http://cdn.f.example/assets/x/y.png", "based image"),
}
