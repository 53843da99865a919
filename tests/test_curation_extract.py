"""Extraction of image-text pairs from real WARC / WAT files (warcio) and DataComp-style parquet."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.extract import pair_uid, resolve_sources
from curation.warc_links import links_from_html
from shared.config.curation import ExtractConfig
from shared.errors import InputError
from tests.extract_local import extract_pairs


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


PAGE = """<html><head><title>t</title></head><body>
<img src="/img/a.jpg" alt="a red circle">
<img src="b.jpg" alt="  two  blue squares ">
<img src="http://cdn.example.org/c.jpg" alt="a green star">
<img src="/img/empty.jpg" alt="">
<img src="/img/noalt.jpg">
<img src="file:///etc/passwd" alt="secret">
<img src="http://169.254.169.254/latest/meta-data" alt="metadata">
<img src="http://localhost:8000/secret.jpg" alt="local">
<img src="http://10.0.0.7/x.jpg" alt="private">
<img src="ftp://example.com/x.jpg" alt="ftp">
<img src="/img/a.jpg" alt="a red circle">
</body></html>"""


def test_html_links_resolve_relative_srcs_against_page_and_base():
    links = links_from_html(PAGE, "http://example.com/dir/page.html")
    assert ("http://example.com/img/a.jpg", "a red circle") in links
    assert ("http://example.com/dir/b.jpg", "  two  blue squares ") in links
    based = links_from_html('<base href="http://other.net/x/"><img src="y.png" alt="z">',
                            "http://example.com/p")
    assert based == [("http://other.net/x/y.png", "z")]


def test_extract_warc_keeps_safe_captioned_unique_pairs(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    write_warc(warc, {"http://example.com/dir/page.html": PAGE})
    out = tmp_path / "pairs"
    stats = extract_pairs(ExtractConfig(), [str(warc)], out)
    t = pq.read_table(out).to_pydict()
    assert sorted(t["url"]) == ["http://cdn.example.org/c.jpg", "http://example.com/dir/b.jpg",
                                "http://example.com/img/a.jpg"]
    assert "two blue squares" in t["caption"]  # whitespace normalised
    assert all(len(u) == 32 and int(u, 16) >= 0 for u in t["uid"])
    a_url = "http://example.com/img/a.jpg"
    assert t["uid"][t["url"].index(a_url)] == pair_uid(a_url, "a red circle")
    assert set(t["page_url"]) == {"http://example.com/dir/page.html"}
    assert set(t["source"]) == {"crawl.warc.gz"}
    assert stats["dropped"]["empty caption"] == 2
    assert stats["dropped"]["duplicate pair"] == 1
    assert sum(v for k, v in stats["dropped"].items() if k.startswith("unsafe url")) == 5
    assert stats["kept"] == 3 and stats["links"] == 11


def test_allow_hosts_admits_a_loopback_host_by_name(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    write_warc(warc, {"http://localhost:8000/p.html": PAGE})
    out = tmp_path / "pairs"
    extract_pairs(ExtractConfig(allow_hosts=["localhost"]), [str(warc)], out)
    urls = pq.read_table(out).column("url").to_pylist()
    assert "http://localhost:8000/secret.jpg" in urls and "http://localhost:8000/img/a.jpg" in urls
    assert not any(u.startswith(("file:", "ftp:")) or "169.254" in u or "10.0.0.7" in u for u in urls)


def test_extract_wat_and_corrupt_records_are_counted(tmp_path):
    wat = tmp_path / "crawl.warc.wat.gz"
    write_wat(wat, {"http://example.com/p.html": [
        {"path": "IMG@/src", "url": "/i/1.jpg", "alt": "one yellow triangle"},
        {"path": "A@/href", "url": "/elsewhere", "text": "a link"},
        {"path": "IMG@/src", "url": "http://127.0.0.1/i/2.jpg", "alt": "loopback"},
        {"path": "IMG@/src", "url": "/i/3.jpg", "alt": ""},
    ]}, corrupt_json=True)
    out = tmp_path / "pairs"
    stats = extract_pairs(ExtractConfig(), [str(wat)], out)
    t = pq.read_table(out).to_pydict()
    assert t["url"] == ["http://example.com/i/1.jpg"] and t["caption"] == ["one yellow triangle"]
    assert stats["corrupt_records"] == 1 and stats["records"] == 2


def test_truncated_warc_keeps_records_before_the_damage(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    pages = {f"http://example.com/p{i}.html": f'<img src="/{i}.jpg" alt="picture {i}">' for i in range(20)}
    write_warc(warc, pages)
    data = warc.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "pairs"
    stats = extract_pairs(ExtractConfig(), [str(cut)], out)
    assert 5 <= stats["kept"] < 20 and stats["corrupt_records"] == 1


def test_parquet_source_and_globs(tmp_path):
    src = tmp_path / "meta.parquet"
    pq.write_table(pa.table({"url": ["http://a.com/1.jpg", "file:///x", "http://a.com/2.jpg"],
                             "text": ["first", "second", ""]}), src)
    out = tmp_path / "pairs"
    stats = extract_pairs(ExtractConfig(), resolve_sources([str(tmp_path / "*.parquet")], tmp_path), out)
    assert pq.read_table(out).column("url").to_pylist() == ["http://a.com/1.jpg"] and stats["kept"] == 1


def test_bad_inputs_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        resolve_sources([str(tmp_path / "missing.warc.gz")], tmp_path)
    with pytest.raises(InputError, match="no file matches"):
        resolve_sources([str(tmp_path / "nothing-*.warc.gz")], tmp_path)
    with pytest.raises(InputError, match="no WARC files"):
        resolve_sources([], tmp_path)
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(gzip.compress(b"this is not a warc file at all\n" * 10))
    with pytest.raises(InputError, match="not a readable WARC"):
        extract_pairs(ExtractConfig(), [str(junk)], tmp_path / "pairs")
    assert not (tmp_path / "pairs").exists()


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=root, capture_output=True,
                          text=True, check=False, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})


def test_cli_missing_and_unreadable_inputs_exit_nonzero_with_one_line(tmp_path):
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    for src, msg in ((str(tmp_path / "nope.warc.gz"), "input not found"), (str(junk), "not a readable WARC")):
        r = _cli(["build-dataset", "--set", f"workdir={tmp_path / 'run'}",
                  "--set", f'curation.extract.sources=["{src}"]'], tmp_path)
        assert r.returncode != 0
        err = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and msg in err[0], r.stderr


# --- Real Common Crawl layouts, written with warcio's own writer (WARC 1.1 record types; CC's WAT JSON) ---

def _http(status: str, headers: list[tuple[str, str]], body: bytes):
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
            http = _http("200 OK", [("Content-Type", ctype)], body)
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


def test_real_layout_warc_with_every_record_type_and_ugly_pages(tmp_path):
    warc = tmp_path / "CC-MAIN-TEST-00000.warc.gz"
    write_cc_warc(warc, UGLY_CAPTURES)
    out = tmp_path / "pairs"
    stats = extract_pairs(ExtractConfig(), [str(warc)], out)
    t = pq.read_table(out).to_pydict()
    assert set(zip(t["url"], t["caption"], strict=True)) == UGLY_EXPECTED
    assert stats["corrupt_records"] == 0
    assert stats["records"] == 6  # the HTML responses; warcinfo/request/metadata/non-HTML are skipped
    assert stats["dropped"] == {"empty caption": 1, "unsafe url: scheme data not allowed": 1}


def test_real_layout_wat_envelopes_with_links(tmp_path):
    wat = tmp_path / "CC-MAIN-TEST-00000.warc.wat.gz"
    write_cc_wat(wat, [
        ("http://a.example/dir/p.html", None, [
            {"path": "IMG@/src", "url": "i/1.jpg", "alt": "one yellow triangle"},
            {"path": "A@/href", "url": "/elsewhere", "text": "a link"},
            {"path": "IMG@/src", "url": "data:image/gif;base64,R0lG", "alt": "inline"},
            {"path": "IMG@/src", "url": "/i/2.jpg"},
        ]),
        ("http://b.example/q.html", "http://cdn.b.example/s/", [
            {"path": "IMG@/src", "url": "k.png", "alt": "  spaced   out  "},
            {"path": "IMG@/src", "url": "http://2130706433/x.jpg", "alt": "numeric loopback"},
        ]),
    ])
    out = tmp_path / "pairs"
    stats = extract_pairs(ExtractConfig(), [str(wat)], out)
    t = pq.read_table(out).to_pydict()
    assert set(zip(t["url"], t["caption"], strict=True)) == {
        ("http://a.example/dir/i/1.jpg", "one yellow triangle"),
        ("http://cdn.b.example/s/k.png", "spaced out")}
    assert stats["corrupt_records"] == 0
    assert stats["records"] == 6  # every WAT envelope (request/response/metadata), none counted corrupt
    assert stats["dropped"]["unsafe url: internal address"] == 1


def test_a_directory_source_reads_its_warc_wat_and_parquet_files(tmp_path):
    crawl = tmp_path / "crawl"
    (crawl / "segment").mkdir(parents=True)
    write_cc_warc(crawl / "segment" / "a.warc.gz", UGLY_CAPTURES[:1])
    write_cc_wat(crawl / "b.warc.wat.gz", [("http://w.example/p", None,
                                            [{"path": "IMG@/src", "url": "/w.jpg", "alt": "from the wat"}])])
    (crawl / "notes.txt").write_text("not a source")
    sources = resolve_sources([str(crawl)], tmp_path)
    assert [Path(s).name for s in sources] == ["b.warc.wat.gz", "a.warc.gz"]
    extract_pairs(ExtractConfig(), sources, tmp_path / "pairs")
    assert set(pq.read_table(tmp_path / "pairs").column("caption").to_pylist()) == {
        "from the wat", "Straße café"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is a directory with no WARC/WAT/parquet files"):
        resolve_sources([str(tmp_path / "empty")], tmp_path)


def test_wet_and_warcinfo_only_sources_say_what_they_are(tmp_path):
    from warcio.warcwriter import WARCWriter

    wet = tmp_path / "CC-MAIN-TEST.warc.wet.gz"
    with open(wet, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record(wet.name, {"software": "test"}))
        w.write_record(w.create_warc_record("http://a.example/", "conversion",
                                            payload=io.BytesIO(b"plain text of a page"),
                                            warc_content_type="text/plain"))
    with pytest.raises(InputError, match=r"WET file .*no image links"):
        extract_pairs(ExtractConfig(), [str(wet)], tmp_path / "pairs")
    info_only = tmp_path / "info.warc.gz"
    with open(info_only, "wb") as f:
        w = WARCWriter(f, gzip=True)
        w.write_record(w.create_warcinfo_record(info_only.name, {"software": "test"}))
    with pytest.raises(InputError, match=r"info.warc.gz: no response or WAT metadata record .*1 warcinfo"):
        extract_pairs(ExtractConfig(), [str(info_only)], tmp_path / "pairs")
    assert not (tmp_path / "pairs").exists()


def test_datacomp_parquet_keeps_its_uids(tmp_path):
    """DataComp metadata: uid (32 hex digits), url, text, and more columns; the uid is the pair's id."""
    import numpy as np

    from curation.select import subset_to_uids, uid_subset

    rng = np.random.default_rng(0)
    uids = [f"{int(a):016x}{int(b):016x}" for a, b in rng.integers(0, 2**63, size=(4, 2))]
    src = tmp_path / "0000.parquet"
    pq.write_table(pa.table({
        "uid": uids, "url": [f"http://img.example/{i}.jpg" for i in range(4)],
        "text": ["a cat", "a dog", "", "a bird"], "original_width": [640, 480, 320, 100],
        "original_height": [480, 480, 240, 100], "sha256": ["0" * 64] * 4}), src)
    stats = extract_pairs(ExtractConfig(), [str(src)], tmp_path / "pairs")
    t = pq.read_table(tmp_path / "pairs").to_pydict()
    assert sorted(t["uid"]) == sorted([uids[0], uids[1], uids[3]]) and stats["kept"] == 3
    assert subset_to_uids(uid_subset(t["uid"])) == sorted(t["uid"])


def test_non_text_parquet_columns_and_bad_uids_name_file_and_column(tmp_path):
    bad = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"url": ["http://a.example/1.jpg"], "text": [42]}), bad)
    with pytest.raises(InputError, match=r"ints.parquet: column 'text' must hold text, holds int64"):
        extract_pairs(ExtractConfig(), [str(bad)], tmp_path / "pairs")
    bad_uid = tmp_path / "uids.parquet"
    pq.write_table(pa.table({"uid": ["not-a-uid"], "url": ["http://a.example/1.jpg"], "text": ["x"]}),
                   bad_uid)
    with pytest.raises(InputError, match=r"uids.parquet: column 'uid' row 0"):
        extract_pairs(ExtractConfig(), [str(bad_uid)], tmp_path / "pairs")


def test_html_is_parsed_by_the_html_standard_rules():
    """lexbor builds the tree a browser (scripting off) builds: <noscript> fallbacks are images; tag-like
    text inside <title>, <textarea> and comments is not; a repeated attribute keeps its first value."""
    page = ('<html><head><title><img src="/t.jpg" alt="title text"></title></head><body>'
            '<noscript><img src="/ns.jpg" alt="fallback"></noscript>'
            '<textarea><img src="/ta.jpg" alt="typed"></textarea>'
            '<!-- <img src="/c.jpg" alt="comment"> -->'
            '<img src="/a.jpg" alt="first" alt="second"><IMG SRC=" /caps.jpg " ALT="a &amp; b">'
            '</body></html>')
    assert links_from_html(page, "http://example.com/p") == [
        ("http://example.com/ns.jpg", "fallback"), ("http://example.com/a.jpg", "first"),
        ("http://example.com/caps.jpg", "a & b")]


def _coded_warc(path: Path, captures: list[tuple[list[tuple[str, str]], bytes]]) -> None:
    """Responses whose HTTP headers name transfer/content codings; ``captures``: (headers, wire bytes)."""
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for i, (headers, body) in enumerate(captures):
            http = _http("200 OK", [("Content-Type", "text/html; charset=utf-8"), *headers], body)
            w.write_record(w.create_warc_record(f"http://h{i}.example/p", "response",
                                                payload=io.BytesIO(body), http_headers=http))


def test_transfer_and_content_codings_are_undone_and_a_lying_header_keeps_the_bytes(tmp_path):
    def page(i: int) -> bytes:
        return f'<img src="/{i}.jpg" alt="coded page {i}">'.encode()

    def chunked(body: bytes) -> bytes:
        return b"".join(b"%x\r\n%s\r\n" % (len(body[k:k + 7]), body[k:k + 7])
                        for k in range(0, len(body), 7)) + b"0\r\n\r\n"

    warc = tmp_path / "coded.warc.gz"
    _coded_warc(warc, [
        ([("Content-Encoding", "gzip")], gzip.compress(page(0))),
        ([("Transfer-Encoding", "chunked")], chunked(page(1))),
        ([("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip")], chunked(gzip.compress(page(2)))),
        ([("Content-Encoding", "gzip")], page(3)),  # says gzip, is not: read as it stands
        ([("Content-Encoding", "x-unknown")], page(4)),
    ])
    stats = extract_pairs(ExtractConfig(), [str(warc)], tmp_path / "pairs")
    t = pq.read_table(tmp_path / "pairs").to_pydict()
    assert sorted(t["caption"]) == [f"coded page {i}" for i in range(5)]
    assert stats["records"] == 5 and stats["corrupt_records"] == 0


def test_a_file_cut_between_gzip_members_counts_the_cut(tmp_path):
    """Cut inside a gzip member that had not yet given a byte of its record: the records before it are kept,
    the cut counts as one corrupt record (a reader that stops quietly would miss it)."""
    warc = tmp_path / "crawl.warc.gz"
    write_warc(warc, {f"http://example.com/p{i}.html": f'<img src="/{i}.jpg" alt="picture {i}">'
                      for i in range(4)})
    data = warc.read_bytes()
    third = [k for k in range(len(data) - 1) if data[k:k + 3] == b"\x1f\x8b\x08"][3]
    for cut, kept in ((third + 5, 3), (third, 3), (len(data), 4)):
        (tmp_path / "cut.warc.gz").write_bytes(data[:cut])
        stats = extract_pairs(ExtractConfig(), [str(tmp_path / "cut.warc.gz")], tmp_path / "pairs")
        assert (stats["kept"], stats["corrupt_records"]) == (kept, int(cut == third + 5)), cut


# --- Hostile charsets and sizes ---

def test_charset_labels_mean_what_the_whatwg_encoding_standard_says(tmp_path):
    """Labels are looked up in the WHATWG table, as a browser does: a Python-only codec named in the header
    (rot13, zlib: a corrupt record before) or a label the web does not know (utf-7) or the "replacement"
    encoding (iso-2022-kr) falls through to the <meta> charset; latin1-family labels mean windows-1252."""
    def meta_page(charset: str, alt: str, encoding: str) -> bytes:
        return f'<meta charset="{charset}"><img src="/i.jpg" alt="{alt}">'.encode(encoding)

    html = "text/html; charset="
    captures = [
        ("http://rot13.example/p", html + "rot13", meta_page("windows-1251", CYRILLIC, "cp1251")),
        ("http://zlib.example/p", html + "zlib", meta_page("Shift_JIS", JAPANESE, "shift_jis")),
        # "+AKM-" is UTF-7 for "£": a page decoded as UTF-7 would show it (and lose the é)
        ("http://utf7.example/p", html + "utf-7", meta_page("utf-8", "cost +AKM-1 café", "utf-8")),
        ("http://kr.example/p", html + "iso-2022-kr", meta_page("utf-8", "déjà vu", "utf-8")),
        # 0x80 is "€" in windows-1252 and a C1 control in ISO-8859-1 (what Python's latin-1 codecs give)
        ("http://latin1.example/p", html + "latin1", b'<img src="/i.jpg" alt="\x80 5, na\xefve">'),
        ("http://l1.example/p", html + "l1", b'<img src="/i.jpg" alt="\x80 6 \x93quoted\x94">'),
        ("http://meta.example/p", "text/html", b'<meta charset="iso_8859-1"><img src="/i.jpg" alt="\x80 7">'),
    ]
    warc = tmp_path / "charsets.warc.gz"
    write_cc_warc(warc, captures)
    stats = extract_pairs(ExtractConfig(), [str(warc)], tmp_path / "pairs")
    t = pq.read_table(tmp_path / "pairs").to_pydict()
    assert dict(zip(t["page_url"], t["caption"], strict=True)) == {
        "http://rot13.example/p": CYRILLIC, "http://zlib.example/p": JAPANESE,
        "http://utf7.example/p": "cost +AKM-1 café", "http://kr.example/p": "déjà vu",
        "http://latin1.example/p": "€ 5, naïve", "http://l1.example/p": "€ 6 “quoted”",
        "http://meta.example/p": "€ 7"}
    assert stats["records"] == 7 and stats["corrupt_records"] == 0


def test_a_page_over_max_page_bytes_is_parsed_from_its_prefix_and_counted(tmp_path):
    """A page (stored, or once chunked/gzip are undone) longer than max_page_bytes: its first max_page_bytes
    are parsed (a link past the cut is not seen) and the record counts under oversized_records; a WAT record
    over the cap cannot be parsed cut and is counted and skipped; the records around them are read."""
    pad = b"<p>" + b"x" * 8000 + b"</p>"
    page = b'<img src="/early.jpg" alt="early">' + pad + b'<img src="/late.jpg" alt="late">'
    warc = tmp_path / "big.warc.gz"
    _coded_warc(warc, [
        ([], b'<img src="/small.jpg" alt="small page">'),
        ([], page),
        ([("Content-Encoding", "gzip")], gzip.compress(page)),  # 4 KiB stored, 8 KiB decoded
        ([("Transfer-Encoding", "chunked")], b"%x\r\n%s\r\n0\r\n\r\n" % (len(page), page)),
    ])
    wat = tmp_path / "big.warc.wat.gz"
    write_wat(wat, {"http://w.example/small": [{"path": "IMG@/src", "url": "/w.jpg", "alt": "wat small"}],
                    "http://w.example/big": [{"path": "IMG@/src", "url": f"/{i}.jpg", "alt": "wat big"}
                                             for i in range(200)]})
    cfg = ExtractConfig(max_page_bytes=4096)
    stats = extract_pairs(cfg, [str(warc), str(wat)], tmp_path / "pairs")
    t = pq.read_table(tmp_path / "pairs").to_pydict()
    assert sorted(set(t["caption"])) == ["early", "small page", "wat small"]
    assert stats["oversized_records"] == 4 and stats["records"] == 6 and stats["corrupt_records"] == 0
    stats = extract_pairs(ExtractConfig(), [str(warc), str(wat)], tmp_path / "pairs")
    assert stats["oversized_records"] == 0
    assert "late" in pq.read_table(tmp_path / "pairs").column("caption").to_pylist()


_BOMB_RUN = """
import json, resource, sys
from pathlib import Path
from curation.extract import pair_uid  # noqa: F401 - imports loaded before the baseline
from shared.config.curation import ExtractConfig
from tests.extract_local import extract_pairs

small, bomb, out = map(Path, sys.argv[1:])
extract_pairs(ExtractConfig(), [str(small)], out / "warm")  # every lazy import and parser set up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = extract_pairs(ExtractConfig(), [str(bomb)], out / "pairs")
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"stats": stats, "peak_growth": growth}))
"""


def test_a_gzip_bomb_record_is_cut_counted_and_the_run_stays_small(tmp_path):
    """1 GiB of zeros behind an HTML prefix, gzip-compressed to ~1 MB (built a MiB at a time) in one record
    of a WARC: the record is read a MiB at a time up to max_page_bytes (16 MiB), its prefix's link kept, the
    record counted as oversized; the other records of the file are extracted; the extracting process's peak
    RSS grows by less than half the 1 GiB a whole read would hold (measured in a fresh process)."""
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [deflate.compress(b'<html><body><img src="/in-bomb.jpg" alt="before the zeros"><p>')]
    zeros = bytes(1 << 20)
    parts += [deflate.compress(zeros) for _ in range(1024)]
    bomb = b"".join(parts) + deflate.flush()
    assert len(bomb) < 2 << 20
    warc = tmp_path / "bomb.warc.gz"
    _coded_warc(warc, [([], b'<img src="/a.jpg" alt="page before">'),
                       ([("Content-Encoding", "gzip")], bomb),
                       ([], b'<img src="/b.jpg" alt="page after">')])
    small = tmp_path / "small.warc.gz"
    _coded_warc(small, [([], b'<img src="/w.jpg" alt="warm up">')])
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _BOMB_RUN, str(small), str(warc), str(tmp_path)], cwd=root,
                       capture_output=True, text=True, check=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    result = json.loads(r.stdout.strip().splitlines()[-1])
    stats = result["stats"]
    assert stats["oversized_records"] == 1 and stats["corrupt_records"] == 0 and stats["records"] == 3
    captions = pq.read_table(tmp_path / "pairs").column("caption").to_pylist()
    assert sorted(captions) == ["before the zeros", "page after", "page before"]
    # A whole read holds >= 1 GiB of bytes (and its text, and lexbor's tree). The cut page costs ~300 MiB
    # here: lexbor keeps a 16-byte record of each parse error, and each NUL of the 16 MiB is one.
    assert result["peak_growth"] < 512 << 20, result
