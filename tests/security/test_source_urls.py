"""Sources given as http(s) URLs (curation.extract.sources) are fetched through the same guard as images:
redirects re-checked per hop, numeric spellings canonicalised, one pinned lookup per connection."""

from __future__ import annotations

import socket

import pyarrow.parquet as pq
import pytest

from shared.config.curation import ExtractConfig
from shared.errors import InputError
from tests.extract_local import extract_pairs
from tests.security.conftest import ALLOW, ALLOWED_IP, INTERNAL_IP, hop
from tests.test_curation_extract import write_warc

PAGE = '<html><body><img src="http://cdn.example.org/a.jpg" alt="a red circle"></body></html>'


@pytest.fixture
def warc_bytes(tmp_path) -> bytes:
    write_warc(tmp_path / "src.warc.gz", {"http://example.com/p": PAGE})
    return (tmp_path / "src.warc.gz").read_bytes()


def _extract(tmp_path, url: str, allow=ALLOW) -> list[str]:
    extract_pairs(ExtractConfig(sources=[url], allow_hosts=list(allow)), [url], tmp_path / "pairs")
    return pq.read_table(tmp_path / "pairs").column("caption").to_pylist()


def test_source_url_on_an_allowed_host_and_via_allowed_redirects(tmp_path, allowed, warc_bytes):
    allowed.files["crawl.warc.gz"] = warc_bytes
    assert _extract(tmp_path, f"{allowed.base_url}/file/crawl.warc.gz") == ["a red circle"]
    assert _extract(tmp_path, hop(allowed, 3, "/file/crawl.warc.gz")) == ["a red circle"]


@pytest.mark.parametrize("hops", [1, 2, 5])
def test_source_url_that_redirects_to_an_internal_host_is_refused(tmp_path, allowed, internal, warc_bytes,
                                                                  hops):
    internal.files["crawl.warc.gz"] = warc_bytes
    url = hop(allowed, hops, f"{internal.base_url}/file/crawl.warc.gz")
    with pytest.raises(InputError, match="blocked by policy$"):
        _extract(tmp_path, url)
    assert internal.connections == []
    assert not (tmp_path / "pairs").exists()


def test_source_url_that_redirects_to_ftp_is_refused(tmp_path, allowed, ftp_allowed):
    with pytest.raises(InputError, match="blocked by policy$"):
        _extract(tmp_path, hop(allowed, 1, f"ftp://{ftp_allowed.host}:{ftp_allowed.port}/crawl.warc.gz"))
    assert ftp_allowed.connections == []


@pytest.mark.parametrize("spelling", ["2130706434", "0x7f000002", "127.2", "0177.0.0.2",
                                      "127\uff0e0\uff0e0\uff0e2"])
def test_numeric_source_hosts_are_refused(tmp_path, internal, warc_bytes, spelling):
    internal.files["crawl.warc.gz"] = warc_bytes
    with pytest.raises(InputError, match="refusing to fetch source"):
        _extract(tmp_path, f"http://{spelling}:{internal.port}/file/crawl.warc.gz")
    assert internal.connections == []


@pytest.mark.parametrize("spelling", ["2130706433", "127.1", "0x7f000001", "0"])
def test_loopback_spellings_refused_with_no_allowed_host(tmp_path, allowed, warc_bytes, spelling):
    """The production setting (allow_hosts: []) refuses every spelling of a loopback source."""
    allowed.files["crawl.warc.gz"] = warc_bytes
    with pytest.raises(InputError, match="refusing to fetch source"):
        _extract(tmp_path, f"http://{spelling}:{allowed.port}/file/crawl.warc.gz", allow=[])
    assert allowed.connections == []


def test_source_host_rebinding_after_the_check(tmp_path, allowed, internal, warc_bytes, monkeypatch):
    assert internal.port == allowed.port
    allowed.files["crawl.warc.gz"] = internal.files["crawl.warc.gz"] = warc_bytes
    real, calls = socket.getaddrinfo, []

    def rebinding(host, port, *args, **kwargs):
        if host != "crawl.test":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        return real(ALLOWED_IP if len(calls) == 1 else INTERNAL_IP, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://crawl.test:{allowed.port}/file/crawl.warc.gz"
    assert _extract(tmp_path, url) == ["a red circle"]  # one lookup, checked, connected to as checked
    assert len(calls) == 1 and allowed.requests == ["/file/crawl.warc.gz"]
    with pytest.raises(InputError, match="blocked by policy$"):
        _extract(tmp_path, url)
    assert internal.connections == []
