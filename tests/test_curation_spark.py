"""The download step with img2dataset's pyspark distributor, Spark in local mode, on a tiny served mini web.

The pool it builds must hold exactly what the default multiprocessing distributor fetches from the same
pairs (same uids, same image bytes, same captions), with the same failure histogram, and no unsafe URL
may reach the server. Spark needs Java (17 is installed here); without pyspark the test is skipped.
"""

from __future__ import annotations

import socket

import pytest

from tests.extract_local import extract_pairs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pool(pool_dir):
    from curation.pool import iter_pool

    return {uid: (meta["sha256"], caption) for uid, _, caption, meta in iter_pool(pool_dir)}


def test_pyspark_download_equals_multiprocessing(tmp_path):
    pytest.importorskip("pyspark")
    from curation.download import download_pool
    from curation.extract import resolve_sources
    from shared.config import load_config
    from shared.miniweb.generate import generate_web
    from shared.miniweb.server import serve_in_background

    port = _free_port()
    cfg = load_config(None, [f"workdir={tmp_path}", f"web.port={port}", "web.n_images=40", "web.hq_size=10",
                             "web.bench_train_per_class=2", "web.bench_test_per_class=2",
                             "web.slow_seconds=4",
                             "curation.download.timeout=2", "curation.download.samples_per_shard=16",
                             "curation.download.threads=4", "curation.download.processes=1"])
    generate_web(cfg.web, cfg.web_dir)
    pairs = tmp_path / "pairs"
    extract_pairs(cfg.curation.extract, resolve_sources([], cfg.web_dir / "warc"), pairs)

    with serve_in_background(cfg.web_dir, host="127.0.0.1", port=port) as server:
        spark_cfg = cfg.curation.download.model_copy(update={"distributor": "pyspark"})
        allow_hosts = cfg.curation.extract.allow_hosts
        spark_summary = download_pool(spark_cfg, pairs, tmp_path / "pool-spark", allow_hosts)
        spark_log = list(server.request_log)
        mp_summary = download_pool(cfg.curation.download, pairs, tmp_path / "pool-mp", allow_hosts)

    # Spark really ran: img2dataset's pyspark distributor wrote several shards, each marked done.
    assert len(list((tmp_path / "pool-spark").glob("*_stats.json"))) >= 2
    assert spark_summary["downloaded"] >= 20
    assert {k: spark_summary[k] for k in ("requested", "downloaded", "failures")} == \
           {k: mp_summary[k] for k in ("requested", "downloaded", "failures")}
    assert _pool(tmp_path / "pool-spark") == _pool(tmp_path / "pool-mp")
    assert not any(p.startswith("/secret") for p in spark_log), "an unsafe URL reached the server"
