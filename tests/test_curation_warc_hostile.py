"""Extraction from hostile pages: the HTML standard's parsing rules, transfer and content codings, gzip
files cut between members, charset labels, pages over max_page_bytes and a gzip bomb."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from curation.warc_links import links_from_html
from shared.config.curation import ExtractConfig
from tests.extract_local import extract_pairs
from tests.warc_writers import CYRILLIC, JAPANESE, status_and_headers, write_cc_warc, write_warc, write_wat


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
            ctype = ("Content-Type", "text/html; charset=utf-8")
            http = status_and_headers("200 OK", [ctype, *headers], body)
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
