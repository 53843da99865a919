"""The mini web's HTTP server: OUT/site as plain files, plus the misbehaving routes of OUT/routes.json.

A stdlib ThreadingHTTPServer with daemon handler threads. Stalling handlers wait on the server's stop
event, so shutdown never waits for a stall. Every request path is logged (memory + OUT/requests.log) so
tests can prove which URLs a crawler asked for.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mimetypes
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shared.errors import InputError, OpenAIMError

log = logging.getLogger("openaim.web")


class MiniWebServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not join handler threads (a stalled one would hold shutdown)
    allow_reuse_address = True

    def __init__(self, out_dir: Path, host: str, port: int):
        self.out_dir = Path(out_dir)
        self.site = (self.out_dir / "site").resolve()
        self.routes: dict[str, dict] = json.loads((self.out_dir / "routes.json").read_text())
        self.stop_event = threading.Event()
        self.request_log: list[str] = []
        self._log_lock = threading.Lock()
        self._log_file = open(self.out_dir / "requests.log", "a", encoding="utf-8")  # noqa: SIM115
        try:
            super().__init__((host, port), MiniWebHandler)
        except BaseException:
            self._log_file.close()
            raise

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def host(self) -> str:
        return self.server_address[0]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def record(self, method: str, path: str) -> None:
        with self._log_lock:
            self.request_log.append(path)
            self._log_file.write(f"{method} {path}\n")
            self._log_file.flush()

    def stop(self) -> None:
        self.stop_event.set()
        self.shutdown()
        self.server_close()
        with self._log_lock:
            self._log_file.close()


class MiniWebHandler(BaseHTTPRequestHandler):
    server: MiniWebServer
    server_version = "miniweb/1"
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        raw_path = self.path
        self.server.record(self.command, raw_path)
        path = unquote(urlsplit(raw_path).path)
        route = self.server.routes.get(path)
        try:
            if route is not None:
                self._route(route, head)
            else:
                self._static(path, head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up; nothing to tell it

    def _send(self, status: int, body: bytes, content_type: str, head: bool,
              extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _static(self, path: str, head: bool) -> None:
        if path in ("", "/"):
            path = "/index.html"
        target = (self.server.site / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.site) or not target.is_file():
            self._send(404, b"not found\n", "text/plain", head)
            return
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype == "text/html":
            ctype += "; charset=utf-8"
        self._send(200, target.read_bytes(), ctype, head)

    def _route(self, route: dict, head: bool) -> None:
        status = int(route.get("status", 200))
        # a very slow host: nothing at all until the stall ends (or the server stops)
        if route.get("stall_seconds") and self.server.stop_event.wait(float(route["stall_seconds"])):
            return
        if status in (301, 302, 303, 307, 308):
            self._send(status, b"", "text/plain", head, {"Location": route["location"]})
            return
        if status >= 400:
            extra = {"Retry-After": "120"} if status == 503 else None
            text = f"{status} {self.responses.get(status, ('',))[0]}\n"
            self._send(status, text.encode(), "text/plain", head, extra)
            return
        body = (self.server.out_dir / route["payload"]).read_bytes() if route.get("payload") else b""
        ctype = route.get("content_type", "application/octet-stream")
        if "reset_after" in route and not head:
            # promise the whole body, send part of it, then reset the connection (RST, not a clean close)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: int(route["reset_after"])])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self._send(status, body, ctype, head)


def _manifest_port(out_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(out_dir) / "manifest.json").read_text())["config"]["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_server(out_dir: Path, host: str = "127.0.0.1", port: int | None = None) -> MiniWebServer:
    """Bind and start serving in a daemon thread. port None: the port baked into the mini web's URLs;
    0: any."""
    out_dir = Path(out_dir)
    if not (out_dir / "routes.json").is_file() or not (out_dir / "site").is_dir():
        raise InputError(f"no mini web at {out_dir} (run `openaim web generate {out_dir}` first)")
    if port is None:
        port = _manifest_port(out_dir)
        if port is None:
            raise InputError(f"{out_dir}/manifest.json is missing or unreadable; regenerate the mini web")
    try:
        server = MiniWebServer(out_dir, host, port)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise OpenAIMError(f"cannot serve the mini web on {host}:{port}: port is busy or not allowed "
                               f"({exc.strerror}); stop the other server or regenerate with "
                               "--set web.port=...") from None
        raise OpenAIMError(f"cannot serve the mini web on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"miniweb-{server.port}", daemon=True)
    thread.start()
    return server


@contextlib.contextmanager
def serve_in_background(out_dir: Path, host: str = "127.0.0.1",
                        port: int | None = None) -> Iterator[MiniWebServer]:
    """Serve the mini web while the block runs; yields the server (.base_url, .port, .request_log)."""
    server = start_server(out_dir, host, port)
    try:
        yield server
    finally:
        server.stop()
