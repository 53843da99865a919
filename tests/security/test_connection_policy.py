"""The URL policy enforced where the connection is made (curation.netsafety.guarded_opener), in-process:
redirect chains into internal addresses and other schemes, numeric host spellings, DNS rebinding."""

from __future__ import annotations

import socket
import urllib.error

import pytest

from curation.netsafety import BLOCKED, guarded_opener, is_policy_block
from tests.security.conftest import ALLOW, ALLOWED_IP, INTERNAL_IP, hop


def _fetch(url: str, allow=ALLOW) -> bytes:
    with guarded_opener(allow).open(url, timeout=5) as r:
        return r.read()


def _assert_blocked(url: str, allow=ALLOW) -> None:
    with pytest.raises(urllib.error.URLError) as info:
        _fetch(url, allow)
    assert is_policy_block(info.value) and str(info.value.reason) == BLOCKED


def test_allowed_host_and_allowed_redirects_are_fetched(allowed):
    assert _fetch(f"{allowed.base_url}/img/1.jpg")[:2] == b"\xff\xd8"
    assert _fetch(hop(allowed, 3, "/img/2.jpg"))[:2] == b"\xff\xd8"
    assert allowed.requests[-1] == "/img/2.jpg"


@pytest.mark.parametrize("hops", [1, 2, 3, 4, 5])
def test_redirect_chain_to_an_internal_http_host_never_connects(allowed, internal, hops):
    _assert_blocked(hop(allowed, hops, f"{internal.base_url}/img/7.jpg"))
    assert len([p for p in allowed.requests if p.startswith("/hop/")]) == hops  # every allowed hop was taken
    assert internal.connections == [] and internal.requests == []


@pytest.mark.parametrize("hops", [1, 3, 5])
@pytest.mark.parametrize("target", ["internal", "allowed"])
def test_redirect_chain_to_ftp_never_connects(allowed, ftp_internal, ftp_allowed, hops, target):
    ftp = ftp_internal if target == "internal" else ftp_allowed
    _assert_blocked(hop(allowed, hops, f"ftp://{ftp.host}:{ftp.port}/x.jpg"))
    assert ftp.connections == []


@pytest.mark.parametrize("scheme_url", ["file:///etc/hostname", "data:image/png;base64,iVBORw0KGgo=",
                                        "gopher://127.0.0.1/", "ftp://127.0.0.1/x"])
def test_other_schemes_refused_directly_and_by_redirect(allowed, scheme_url):
    _assert_blocked(scheme_url)
    _assert_blocked(hop(allowed, 1, scheme_url))


@pytest.mark.parametrize("spelling", ["2130706434", "0x7f000002", "127.2", "0177.0.0.2", "0x7f.0.0.2",
                                      "127\u30020\u30020\u30022", "127\uff0e0\uff0e0\uff0e2", "127.0.0.2.",
                                      "%31%32%37.0.0.2", "[::ffff:127.0.0.2]"])
def test_numeric_spellings_of_an_internal_address_never_connect(allowed, internal, spelling):
    port = internal.port
    _assert_blocked(f"http://{spelling}:{port}/img/1.jpg")
    _assert_blocked(hop(allowed, 2, f"http://{spelling}:{port}/img/1.jpg"))
    assert internal.connections == []


def test_unspecified_address_zero_is_not_the_allowed_loopback(allowed):
    """``http://0/`` connects to the local host on Linux: it must not count as the allowed 127.0.0.1."""
    _assert_blocked(f"http://0:{allowed.port}/img/1.jpg")
    _assert_blocked(f"http://0.0.0.0:{allowed.port}/img/1.jpg")
    assert allowed.connections == []


def test_resolution_failure_fails_closed():
    _assert_blocked("http://no-such-host.invalid/img/1.jpg", allow=[])


def test_blocked_fetches_say_nothing_about_what_lies_behind(allowed, internal):
    """A closed port, an open port and a 404 on the internal host all read the same: no scan possible."""
    closed = socket.socket()
    closed.bind((INTERNAL_IP, 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    messages = set()
    for url in (f"{internal.base_url}/img/1.jpg", f"{internal.base_url}/missing",
                f"http://{INTERNAL_IP}:{closed_port}/x"):
        for target in (url, hop(allowed, 1, url)):
            with pytest.raises(urllib.error.URLError) as info:
                _fetch(target)
            messages.add(str(info.value))
    assert messages == {f"<urlopen error {BLOCKED}>"}
    assert internal.connections == []


class _Rebinding:
    """getaddrinfo for one name that answers ``first`` on the first lookup and ``then`` afterwards."""

    def __init__(self, name: str, first: str, then: str) -> None:
        self.name, self.answers, self.calls = name, [first, then], 0
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != self.name:
            return self.real(host, port, *args, **kwargs)
        addr = self.answers[min(self.calls, 1)]
        self.calls += 1
        return self.real(addr, port, *args, **kwargs)


def test_dns_rebinding_connects_to_the_checked_address_or_nowhere(allowed, internal, monkeypatch):
    assert internal.port == allowed.port, "the rebinding test needs both servers on one port"
    rebind = _Rebinding("rebind.test", ALLOWED_IP, INTERNAL_IP)
    monkeypatch.setattr(socket, "getaddrinfo", rebind)
    url = f"http://rebind.test:{allowed.port}/img/3.jpg"
    # First connection: one lookup, checked (127.0.0.1 is allowed by address) and connected to as checked.
    assert _fetch(url)[:2] == b"\xff\xd8"
    assert rebind.calls == 1
    assert allowed.requests == ["/img/3.jpg"]
    # The name now answers 127.0.0.2: the next connection is refused, whatever was checked before.
    _assert_blocked(url)
    _assert_blocked(hop(allowed, 2, url))
    assert rebind.calls == 3  # one lookup per connection, never a second one behind the check
    assert internal.connections == []


def test_a_name_with_one_internal_answer_is_refused(allowed, internal, monkeypatch):
    real = socket.getaddrinfo

    def mixed(host, port, *args, **kwargs):
        if host == "mixed.test":
            return real(ALLOWED_IP, port, *args, **kwargs) + real(INTERNAL_IP, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    _assert_blocked(f"http://mixed.test:{allowed.port}/img/1.jpg")
    assert allowed.connections == [] and internal.connections == []


def test_https_connections_are_pinned_and_checked_too(ftp_allowed, ftp_internal):
    """The TLS connection class goes through the same pinned connect: a bare TCP listener sees the allowed
    connection (the handshake then fails, it speaks no TLS) and never the internal one."""
    with pytest.raises(urllib.error.URLError) as info:
        _fetch(f"https://{ftp_allowed.host}:{ftp_allowed.port}/x.jpg")
    assert not is_policy_block(info.value)
    assert len(ftp_allowed.connections) == 1
    _assert_blocked(f"https://{ftp_internal.host}:{ftp_internal.port}/x.jpg")
    _assert_blocked(f"https://2130706434:{ftp_internal.port}/x.jpg")
    assert ftp_internal.connections == []
