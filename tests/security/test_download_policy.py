"""img2dataset's real worker processes fetch through the guard: redirect chains into an internal address or
another scheme, numeric spellings and closed ports are all "blocked by policy", nothing reaches them, and
the pool holds only what the allowed host served."""

from __future__ import annotations

import socket

import pyarrow as pa
import pyarrow.parquet as pq

from curation.download import download_pool
from curation.extract import pair_uid
from curation.netsafety import BLOCKED
from curation.pool import finished_shards, iter_pool
from shared.config.curation import DownloadConfig
from tests.security.conftest import ALLOW, INTERNAL_IP, hop


def _write_pairs(path, urls: list[str]) -> list[str]:
    captions = [f"caption {i}" for i in range(len(urls))]
    uids = [pair_uid(u, c) for u, c in zip(urls, captions, strict=True)]
    pq.write_table(pa.table({"uid": uids, "url": urls, "caption": captions, "page_url": [""] * len(urls),
                             "source": ["test"] * len(urls)}), path)
    return uids


def test_download_never_connects_to_a_disallowed_target(tmp_path, allowed, internal, ftp_internal,
                                                        ftp_allowed):
    closed = socket.socket()
    closed.bind((INTERNAL_IP, 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    p = internal.port
    good = [f"{allowed.base_url}/img/{i}.jpg" for i in range(6)] + [hop(allowed, 2, "/img/10.jpg")]
    redirected = (
        [hop(allowed, n, f"{internal.base_url}/img/{20 + n}.jpg") for n in range(1, 6)]
        + [hop(allowed, n, f"ftp://{ftp.host}:{ftp.port}/x.jpg")
           for n in (1, 5) for ftp in (ftp_internal, ftp_allowed)]
        + [hop(allowed, 1, f"http://{s}:{p}/img/30.jpg")
           for s in ("2130706434", "127.2", "0x7f000002", "0177.0.0.2", "127\u30020\u30020\u30022")]
        + [hop(allowed, 1, f"http://{INTERNAL_IP}:{closed_port}/img/31.jpg"),
           hop(allowed, 1, f"http://0:{allowed.port}/img/32.jpg"), hop(allowed, 1, "file:///etc/hostname")]
    )
    direct = [f"http://2130706434:{p}/img/40.jpg", f"http://127.2:{p}/img/41.jpg", f"ftp://{INTERNAL_IP}/x",
              f"http://{INTERNAL_IP}:{p}/img/42.jpg"]
    uids = _write_pairs(tmp_path / "pairs.parquet", good + redirected + direct)
    cfg = DownloadConfig(processes=1, threads=4, image_size=32, samples_per_shard=10, timeout=5)
    summary = download_pool(cfg, tmp_path / "pairs.parquet", tmp_path / "pool", ALLOW)

    assert internal.connections == [] and internal.requests == []
    assert ftp_internal.connections == [] and ftp_allowed.connections == []
    assert "/img/32.jpg" not in allowed.requests  # '0' (0.0.0.0) did not reach 127.0.0.1 either
    assert summary["downloaded"] == len(good)
    assert summary["failures"] == {BLOCKED: len(redirected)}
    assert summary["refused_before_download"] == {BLOCKED: len(direct)}
    assert {uid for uid, *_ in iter_pool(tmp_path / "pool")} == set(uids[: len(good)])
    # What was recorded about a refused fetch is the refusal and nothing else.
    errors = set()
    for shard in finished_shards(tmp_path / "pool"):
        t = pq.read_table(str(shard) + ".parquet", columns=["status", "error_message"]).to_pylist()
        errors |= {row["error_message"] for row in t if row["status"] != "success"}
    assert errors == {f"<urlopen error {BLOCKED}>"}
