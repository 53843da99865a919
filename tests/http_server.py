"""The one loopback HTTP server of the tests (the download tests and the hostile-web suite).

Real HTTP on a 127.0.0.0/8 address (any: the security suite plays an internal host on 127.0.0.2):
- ``/img/<i>.jpg``: a JPEG, a different one per ``i`` (after ``delay`` seconds: a slow server);
- ``/hop/<n>?to=URL``: a chain of ``n`` 302 redirects on this server that ends in a 302 to URL;
- ``/file/<name>``: the bytes set in ``files[name]`` (a bomb, a secret, a WARC);
- anything else: 404.
Every accepted connection (``connections``) and every request path (``requests``) is logged, so a test can
say what never reached the server.
"""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
from PIL import Image


def jpeg(i: int) -> bytes:
    """A 40x40 noise JPEG with a band of height 10 + i % 20: distinct bytes and pixels for every ``i``."""
    rng = np.random.default_rng(i)
    arr = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    arr[: 10 + i % 20] = (i * 37) % 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class LoggedServer:
    """The server above on ``host:port`` (port 0: a free one), serving in a thread while entered."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, delay: float = 0.0) -> None:
        self.connections: list[tuple[str, int]] = []
        self.requests: list[str] = []
        self.files: dict[str, bytes] = {}
        self.delay = delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the tests read ``requests``
                pass

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path.startswith("/img/"):
                    time.sleep(outer.delay)
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
