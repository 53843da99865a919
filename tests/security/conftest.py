"""Loopback servers for the hostile-web suite. Everything listens on 127.0.0.0/8 only: 127.0.0.1 plays the
allowed host (``allow_hosts: ["127.0.0.1"]``), 127.0.0.2 the internal one that must never see a connection.
Each server keeps a log of the connections it accepted and the requests it answered."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest
from PIL import Image

from tests.faults.conftest import served_web  # noqa: F401 - the mini web, served (a session fixture)

ALLOWED_IP = "127.0.0.1"
INTERNAL_IP = "127.0.0.2"
ALLOW = [ALLOWED_IP]


def jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class LoggedServer:
    """HTTP on ``host``: /img/<i>.jpg (an image), /hop/<n>?to=URL (a 302 chain of n hops on this server that
    ends in a 302 to URL), /file/<name> (bytes set in ``files``). Every accepted connection is logged."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.connections: list[tuple[str, int]] = []
        self.requests: list[str] = []
        self.files: dict[str, bytes] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path.startswith("/img/"):
                    self._send(jpeg(int(parts.path.rsplit("/", 1)[1].split(".")[0])), "image/jpeg")
                elif parts.path.startswith("/hop/"):
                    n = int(parts.path.rsplit("/", 1)[1])
                    to = parse_qs(parts.query)["to"][0]
                    nxt = to if n <= 1 else f"/hop/{n - 1}?{parts.query}"
                    self.send_response(302)
                    # Non-ASCII is percent-encoded in a Location header, as servers send it.
                    self.send_header("Location", quote(nxt, safe="/:?&=%[]@!$'()*+,;#~"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif parts.path.startswith("/file/") and parts.path[6:] in outer.files:
                    self._send(outer.files[parts.path[6:]], "application/octet-stream")
                else:
                    self.send_error(404)

            def _send(self, body: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address) -> bool:
                outer.connections.append(client_address)
                return True

        self.httpd = Server((host, port), Handler)
        self.host, self.port = self.httpd.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
