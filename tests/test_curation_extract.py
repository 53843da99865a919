"""Extraction of image-text pairs from real WARC / WAT files (warcio) and DataComp-style parquet."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.extract import extract_pairs, links_from_html, pair_uid, resolve_sources
from shared.config.curation import ExtractConfig
from shared.errors import InputError


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
                                 "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": links}}}}}
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
    based = links_from_html('<base href="http://other.net/x/"><img src="y.png" alt="z">', "http://example.com/p")
    assert based == [("http://other.net/x/y.png", "z")]


def test_extract_warc_keeps_safe_captioned_unique_pairs(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    write_warc(warc, {"http://example.com/dir/page.html": PAGE})
    out = tmp_path / "pairs.parquet"
    stats = extract_pairs(ExtractConfig(), [str(warc)], out)
    t = pq.read_table(out).to_pydict()
    assert sorted(t["url"]) == ["http://cdn.example.org/c.jpg", "http://example.com/dir/b.jpg",
                                "http://example.com/img/a.jpg"]
    assert "two blue squares" in t["caption"]  # whitespace normalised
    assert all(len(u) == 32 and int(u, 16) >= 0 for u in t["uid"])
    assert t["uid"][t["url"].index("http://example.com/img/a.jpg")] == pair_uid("http://example.com/img/a.jpg", "a red circle")
    assert set(t["page_url"]) == {"http://example.com/dir/page.html"} and set(t["source"]) == {"crawl.warc.gz"}
    assert stats["dropped"]["empty caption"] == 2
    assert stats["dropped"]["duplicate pair"] == 1
    assert sum(v for k, v in stats["dropped"].items() if k.startswith("unsafe url")) == 5
    assert stats["kept"] == 3 and stats["links"] == 11


def test_allow_hosts_admits_a_loopback_host_by_name(tmp_path):
    warc = tmp_path / "crawl.warc.gz"
    write_warc(warc, {"http://localhost:8000/p.html": PAGE})
    out = tmp_path / "pairs.parquet"
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
    out = tmp_path / "pairs.parquet"
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
    out = tmp_path / "pairs.parquet"
    stats = extract_pairs(ExtractConfig(), [str(cut)], out)
    assert 5 <= stats["kept"] < 20 and stats["corrupt_records"] == 1


def test_parquet_source_and_globs(tmp_path):
    src = tmp_path / "meta.parquet"
    pq.write_table(pa.table({"url": ["http://a.com/1.jpg", "file:///x", "http://a.com/2.jpg"],
                             "text": ["first", "second", ""]}), src)
    out = tmp_path / "pairs.parquet"
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
        extract_pairs(ExtractConfig(), [str(junk)], tmp_path / "pairs.parquet")
    assert not (tmp_path / "pairs.parquet").exists()


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=root, capture_output=True, text=True, check=False,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(root)})


def test_cli_missing_and_unreadable_inputs_exit_nonzero_with_one_line(tmp_path):
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    for src, msg in ((str(tmp_path / "nope.warc.gz"), "input not found"), (str(junk), "not a readable WARC")):
        r = _cli(["build-dataset", "--set", f"workdir={tmp_path / 'run'}",
                  "--set", f'curation.extract.sources=["{src}"]'], tmp_path)
        assert r.returncode != 0
        err = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and msg in err[0], r.stderr
