"""Download with img2dataset from a real HTTP server on 127.0.0.1: safety, failure histogram, pyspark, kill -9
resume, disk full."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.download import download_pool
from curation.extract import pair_uid
from curation.pool import failure_histogram, iter_pool, normalise_error
from shared.config.curation import DownloadConfig
from tests.http_server import LoggedServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"TOP-SECRET-LOCAL-FILE-CONTENT"


def _png_bomb(side: int = 30000) -> bytes:
    """A small PNG whose header declares side x side pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_pairs(path: Path, urls: list[str]) -> list[str]:
    captions = [f"caption {i}" for i in range(len(urls))]
    uids = [pair_uid(u, c) for u, c in zip(urls, captions, strict=True)]
    pq.write_table(pa.table({"uid": uids, "url": urls, "caption": captions,
                             "page_url": [""] * len(urls), "source": ["test"] * len(urls)}), path)
    return uids


def pool_content(pool: Path) -> dict[str, tuple[str, str]]:
    return {uid: (meta["sha256"], caption) for uid, _, caption, meta in iter_pool(pool)}


def test_normalise_error_reasons():
    assert normalise_error("HTTP Error 404: Not Found") == "http 404"
    assert normalise_error("<urlopen error timed out>") == "timeout"
    assert normalise_error("The read operation timed out") == "timeout"
    assert normalise_error("image area too large") == "image too large"
    assert normalise_error("Image decoding error") == "not an image"
    assert normalise_error(None) == "unknown"


def test_download_is_safe_and_summarises_failures(tmp_path):
    with LoggedServer() as srv:
        srv.files.update({"bomb.png": _png_bomb(), "secret": SECRET})
        good = [f"{srv.base_url}/img/{i}.jpg" for i in range(12)]
        unsafe = [f"http://localhost:{srv.port}/file/secret", "file:///etc/hostname",
                  f"file://{tmp_path}/secret.jpg",
                  f"http://10.1.2.3:{srv.port}/file/secret"]
        (tmp_path / "secret.jpg").write_bytes(SECRET)
        missing = [f"{srv.base_url}/missing/{i}.jpg" for i in range(3)]
        urls = good + missing + [f"{srv.base_url}/file/bomb.png"] + unsafe
        uids = write_pairs(tmp_path / "pairs.parquet", urls)
        cfg = DownloadConfig(processes=1, threads=4, image_size=32, samples_per_shard=8, timeout=5,
                             max_image_pixels=4_000_000)
        summary = download_pool(cfg, tmp_path / "pairs.parquet", tmp_path / "pool", allow_hosts=["127.0.0.1"])
        log = list(srv.requests)
    assert summary["downloaded"] == 12 and summary["requested"] == 16  # the 4 unsafe never reach img2dataset
    assert summary["failures"]["http 404"] == 3
    assert summary["failures"].get("image too large", 0) + summary["failures"].get("not an image", 0) == 1
    assert sum(summary["refused_before_download"].values()) == 4
    assert "/file/secret" not in log and len([p for p in log if p.startswith("/img/")]) == 12
    content = pool_content(tmp_path / "pool")
    assert set(content) == set(uids[:12])
    for tar in (tmp_path / "pool").glob("*.tar"):
        assert SECRET not in tar.read_bytes()
    keys = ("requested", "downloaded", "failed", "failures")
    assert failure_histogram(tmp_path / "pool") == {k: summary[k] for k in keys}


def test_pyspark_distributor_local_mode(tmp_path):
    pytest.importorskip("pyspark")
    with LoggedServer() as srv:
        uids = write_pairs(tmp_path / "pairs.parquet", [f"{srv.base_url}/img/{i}.jpg" for i in range(6)])
        cfg = DownloadConfig(distributor="pyspark", processes=1, threads=2, image_size=32,
                             samples_per_shard=3, timeout=5)
        summary = download_pool(cfg, tmp_path / "pairs.parquet", tmp_path / "pool", allow_hosts=["127.0.0.1"])
    assert summary["downloaded"] == 6
    assert set(pool_content(tmp_path / "pool")) == set(uids)


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from curation.download import download_pool
from shared.config.curation import DownloadConfig
from tests.http_server import LoggedServer
cfg = DownloadConfig(processes=1, threads=2, image_size=32, samples_per_shard=6, timeout=10)
download_pool(cfg, Path({pairs!r}), Path({pool!r}), ["127.0.0.1"])
"""


def test_kill9_during_download_then_resume_refetches_no_finished_shard(tmp_path):
    n = 30
    with LoggedServer(delay=0.15) as srv:
        urls = [f"{srv.base_url}/img/{i}.jpg" for i in range(n)]
        write_pairs(tmp_path / "pairs.parquet", urls)
        pool = tmp_path / "pool"
        script = _CHILD.format(root=str(ROOT), pairs=str(tmp_path / "pairs.parquet"), pool=str(pool))
        child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 90
        while time.time() < deadline and not list(pool.glob("*_stats.json")):
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)  # the child and img2dataset's worker processes
        child.wait()
        done_before = sorted(pool.glob("*_stats.json"))
        assert done_before and len(done_before) < 5, "the kill must land mid-run"
        finished_urls = set()
        for stats in done_before:
            shard = pq.read_table(str(stats).replace("_stats.json", ".parquet")).to_pydict()
            finished_urls |= set(shard["url"])
        srv.requests.clear()
        summary = download_pool(DownloadConfig(processes=1, threads=2, image_size=32, samples_per_shard=6,
                                               timeout=10), tmp_path / "pairs.parquet", pool, ["127.0.0.1"])
        refetched = {srv.base_url + p for p in srv.requests} & finished_urls
        # an uninterrupted run for comparison
        summary_ref = download_pool(DownloadConfig(processes=1, threads=2, image_size=32, samples_per_shard=6,
                                                   timeout=10),
                                    tmp_path / "pairs.parquet", tmp_path / "ref", ["127.0.0.1"])
    assert not refetched
    assert summary["downloaded"] == summary_ref["downloaded"] == n
    assert pool_content(pool) == pool_content(tmp_path / "ref")
    assert json.loads(done_before[0].read_text())["successes"] >= 1
