"""The mini web's server over real HTTP on 127.0.0.1: served bytes match the truth, and every broken
behaviour happens as the truth says (404/500/503, redirect loop, truncation, reset, stall, odd bodies)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_miniweb import free_port, small_config

from shared.errors import OpenAIMError
from shared.miniweb.generate import generate_web
from shared.miniweb.server import serve_in_background


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("srv") / "web"
    cfg = small_config(free_port(), seed=11, n_images=120)
    generate_web(cfg, out)
    truth = pq.read_table(out / "truth.parquet").to_pylist()
    with serve_in_background(out, host=cfg.host) as server:
        yield SimpleNamespace(out=out, cfg=cfg, truth=truth, server=server)


def _get(url: str, timeout: float = 5.0):
    """(status, headers, body) without following redirects."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _one(truth, reason):
    return next(r for r in truth if r["reason"] == reason)


def test_binds_the_port_baked_into_the_urls(served):
    assert served.server.port == served.cfg.port
    assert served.server.base_url == f"http://127.0.0.1:{served.cfg.port}"
    status, _, body = _get(served.server.base_url + "/")
    assert status == 200 and b"/pages/00000.html" in body


def test_images_and_pages_serve_the_truth_bytes(served):
    kinds = ("match", "mismatch", "junk", "near_dup", "exact_dup", "eval_leak")
    good = [r for r in served.truth if r["kind"] in kinds]
    for r in good:
        status, headers, body = _get(r["url"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert hashlib.sha256(body).hexdigest() == r["sha256"]
    for page_url in sorted({r["page_url"] for r in served.truth})[:5]:
        status, headers, body = _get(page_url)
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<img" in body


def test_error_statuses(served):
    assert _get(_one(served.truth, "404")["url"])[0] == 404
    assert _get(_one(served.truth, "500")["url"])[0] == 500
    storm = [r for r in served.truth if r["reason"] == "storm_503"]
    for _ in range(3):  # it never recovers
        assert all(_get(r["url"])[0] == 503 for r in storm)
    assert _get(served.server.base_url + "/../../etc/passwd")[0] == 404


def test_redirect_loop(served):
    url = _one(served.truth, "redirect_loop")["url"]
    status, headers, _ = _get(url)
    assert status == 302
    hop = urllib.parse.urljoin(url, headers["Location"])
    assert hop != url
    status2, headers2, _ = _get(hop)
    assert status2 == 302 and urllib.parse.urljoin(hop, headers2["Location"]) == url
    with pytest.raises(urllib.error.HTTPError, match="redirect"):
        urllib.request.urlopen(url, timeout=5)


def test_odd_bodies(served):
    status, headers, body = _get(_one(served.truth, "truncated")["url"])
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(body)).load()
    status, headers, body = _get(_one(served.truth, "html_as_image")["url"])
    assert headers["Content-Type"] == "image/jpeg" and body.lstrip().lower().startswith(b"<!doctype html")
    status, headers, body = _get(_one(served.truth, "wrong_content_type")["url"])
    assert status == 200 and not headers["Content-Type"].startswith("image/")
    bomb = _one(served.truth, "bomb")
    status, headers, body = _get(bomb["url"])
    assert hashlib.sha256(body).hexdigest() == bomb["sha256"] and len(body) < 10_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))


def test_reset_mid_body(served):
    parts = urlsplit(_one(served.truth, "reset")["url"])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", parts.path)
    resp = conn.getresponse()
    assert resp.status == 200
    promised = int(resp.getheader("Content-Length"))
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        body = resp.read()
        assert len(body) == promised, "must not get the whole body"
    conn.close()


def test_slow_response_stalls_then_answers(served):
    slow = _one(served.truth, "slow")
    with pytest.raises((TimeoutError, socket.timeout)):
        _get(slow["url"], timeout=0.4)
    t0 = time.perf_counter()
    status, _, body = _get(slow["url"], timeout=served.cfg.slow_seconds + 10)
    assert time.perf_counter() - t0 >= served.cfg.slow_seconds * 0.9
    assert status == 200 and hashlib.sha256(body).hexdigest() == slow["sha256"]


def test_request_log_records_paths(served):
    junk = next(r for r in served.truth if r["kind"] == "junk")
    _get(junk["url"])
    path = urlsplit(junk["url"]).path
    assert path in served.server.request_log
    lines = (served.out / "requests.log").read_text().splitlines()
    assert f"GET {path}" in lines
    # the unsafe localhost URLs point at our own server; nothing above asked for them
    secret = [urlsplit(r["url"]).path for r in served.truth if r["reason"] == "localhost"]
    assert secret and not set(secret) & set(served.server.request_log)


def test_shutdown_does_not_wait_for_stalled_handlers(tmp_path):
    cfg = small_config(free_port(), seed=5, n_images=40, hq_size=10, bench_train_per_class=2,
                       bench_test_per_class=2, slow_seconds=60)
    out = tmp_path / "web"
    generate_web(cfg, out)
    slow = next(r for r in pq.read_table(out / "truth.parquet").to_pylist() if r["reason"] == "slow")
    errors = []

    def client():
        try:
            _get(slow["url"], timeout=30)
        except OSError as exc:
            errors.append(exc)

    with serve_in_background(out) as server:
        threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.time() + 5
        while server.request_log.count(urlsplit(slow["url"]).path) < 3 and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.perf_counter()
    assert time.perf_counter() - t0 < 3.0
    for t in threads:
        t.join(5)
    assert errors and not any(t.is_alive() for t in threads)  # clients see the connection close
    # the port is free again
    with serve_in_background(out) as again:
        assert again.port == cfg.port


def test_busy_port_is_one_line_error(served):
    with pytest.raises(OpenAIMError, match="busy"), serve_in_background(served.out, port=served.cfg.port):
        pass
    with pytest.raises(OpenAIMError, match="no mini web"), \
            serve_in_background(served.out / "nowhere", port=0):
        pass
    assert json.loads((served.out / "manifest.json").read_text())["config"]["port"] == served.cfg.port
