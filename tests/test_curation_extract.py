"""Extraction of image-text pairs from real WARC / WAT files (warcio), real Common Crawl layouts and
DataComp-style parquet; bad inputs. Hostile pages (codings, charsets, sizes):
test_curation_warc_hostile.py."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.extract import pair_uid, resolve_sources
from curation.warc_links import links_from_html
from shared.config.curation import ExtractConfig
from shared.errors import InputError
from tests.extract_local import extract_pairs
from tests.warc_writers import (
    UGLY_CAPTURES,
    UGLY_EXPECTED,
    write_cc_warc,
    write_cc_wat,
    write_warc,
    write_wat,
)

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
    return subprocess.run([sys.executable, "-m", "openaim", *args], cwd=root, capture_output=True,
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
