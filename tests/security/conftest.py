"""Loopback servers for the hostile-web suite. Everything listens on 127.0.0.0/8 only: 127.0.0.1 plays the
allowed host (``allow_hosts: ["127.0.0.1"]``), 127.0.0.2 the internal one that must never see a connection.
Each server keeps a log of the connections it accepted (and the HTTP ones of the requests they answered:
tests.http_server.LoggedServer, the tests' one HTTP server)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Self
from urllib.parse import quote

import pytest

from tests.faults.conftest import served_web  # noqa: F401 - the mini web, served (a session fixture)
from tests.http_server import LoggedServer

ALLOWED_IP = "127.0.0.1"
INTERNAL_IP = "127.0.0.2"
ALLOW = [ALLOWED_IP]


class TcpListener:
    """A bare TCP port (an FTP server stand-in) that logs every connection it accepts."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.connections: list[tuple[str, int]] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()
        self._stop = threading.Event()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.connections.append(addr)
            conn.sendall(b"220 ftp ready\r\n")
            conn.close()

    def __enter__(self) -> Self:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.sock.close()


def hop(server: LoggedServer, n: int, to: str) -> str:
    """URL of a chain of ``n`` redirects on ``server`` that ends by redirecting to ``to``."""
    return f"{server.base_url}/hop/{n}?to={quote(to, safe='')}"


@pytest.fixture
def allowed() -> Iterator[LoggedServer]:
    with LoggedServer(ALLOWED_IP) as srv:
        yield srv


@pytest.fixture
def internal(allowed) -> Iterator[LoggedServer]:
    """The internal server, on the same port as ``allowed`` where it is free (so a host that rebinds from one
    address to the other reaches the same port)."""
    try:
        srv = LoggedServer(INTERNAL_IP, allowed.port)
    except OSError:
        srv = LoggedServer(INTERNAL_IP)
    with srv:
        yield srv


@pytest.fixture
def ftp_internal() -> Iterator[TcpListener]:
    with TcpListener(INTERNAL_IP) as lst:
        yield lst


@pytest.fixture
def ftp_allowed() -> Iterator[TcpListener]:
    with TcpListener(ALLOWED_IP) as lst:
        yield lst
