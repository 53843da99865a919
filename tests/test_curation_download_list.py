"""img2dataset's input is written per pairs partition by engine tasks, the URL check inside each task."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from curation.download import write_download_list
from curation.engine import LocalEngine
from curation.netsafety import BLOCKED


def test_download_list_has_one_file_per_pairs_part_with_unsafe_urls_dropped(tmp_path):
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    parts = {
        "part-00000.parquet": ["http://a.example/1.jpg", "file:///etc/passwd", "http://a.example/2.jpg"],
        "part-00001.parquet": ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x.jpg"],
        "part-00002.parquet": ["http://b.example/3.jpg"],
    }
    for name, urls in parts.items():
        pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(len(urls))], "url": urls,
                                 "caption": ["c"] * len(urls), "page_url": [""] * len(urls)}), pairs / name)
    engine = LocalEngine(2)
    try:
        kept, refused = write_download_list(engine, pairs, tmp_path / "download_list", [])
    finally:
        engine.close()
    assert kept == 3 and refused == {BLOCKED: 3}
    files = sorted(p.name for p in (tmp_path / "download_list").iterdir())
    assert files == ["part-00000.parquet", "part-00002.parquet"]  # a part with nothing to fetch: no file
    table = pq.read_table(tmp_path / "download_list")
    assert sorted(table.column("url").to_pylist()) == [
        "http://a.example/1.jpg", "http://a.example/2.jpg", "http://b.example/3.jpg"]
    assert set(table.column_names) == {"uid", "url", "caption"}
