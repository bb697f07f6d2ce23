"""The live page's HTTP server: the standard library's ThreadingHTTPServer, one thread per connection.

GET /             the page (index.html, app.js, style.css beside this file)
GET /api/state    JSON snapshot: last calm.status, last labels per stream, recent events, call verdicts
GET /events       Server-Sent Events: `state` (the snapshot) first, then every message calmd publishes,
                  named by its kind (label, event, status, call), the data being the published JSON
GET /clips/<path> a saved clip (or its sidecar or spectrogram picture) under the clips folder, with Range
                  requests (so <audio> can seek)
GET /healthz      JSON: clients, messages, dropped and refused clients
GET, POST /api/.. the login session and the review of saved detections (api.py)
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..refusals import CLIP_TYPES, Refused, clip_path
from .hub import KEEPALIVE, PageHub

if TYPE_CHECKING:
    from .api import PageApi, Reply

log = logging.getLogger("calmd.page")

SOCKET_TIMEOUT_S = 30.0  # a peer that stops reading (or never sends its request) frees its thread after this
KEEPALIVE_S = 15.0  # an SSE comment after this much quiet
PEER_CHECK_S = 1.0  # how soon a closed browser tab frees its place (page.max_clients)
RETRY_MS = 2000  # EventSource's reconnect delay
SSE_SNDBUF = 256 * 1024  # kernel send buffer of an /events connection: bounded, not autotuned to megabytes
CLOSE_JOIN_S = 5.0

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/session.js": ("session.js", "text/javascript; charset=utf-8"),
    "/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/versions.js": ("versions.js", "text/javascript; charset=utf-8"),
    "/calls.js": ("calls.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
MAX_BODY = 64 * 1024  # a POST's JSON body
# Nothing from elsewhere: no CDN, no inline script; text is set with textContent, and this backs it up.
CSP = "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes of a single-range `Range: bytes=...` header; None to send the whole
    file (no header, another unit, several ranges or bad syntax, which RFC 9110 lets a server ignore).
    Refused(416) when the range is well formed but holds no byte of the file."""
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    first_s, sep, last_s = header[len("bytes=") :].strip().partition("-")
    if not sep or not (first_s or last_s) or not all(x.isdigit() for x in (first_s, last_s) if x):
        return None
    unsatisfiable = Refused(
        416, f"range {header!r}: no byte of a {size}-byte clip", {"Content-Range": f"bytes */{size}"}
    )
    if not first_s:  # a suffix: the last N bytes
        if int(last_s) == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - int(last_s)), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        raise unsatisfiable
    return first, min(int(last_s), size - 1) if last_s else size - 1


class PageServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() ends and joins the connection threads itself, with a bound
    keepalive_s = KEEPALIVE_S
    peer_check_s = PEER_CHECK_S

    def __init__(self, host: str, port: int, hub: PageHub, clips_dir: Path | None):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.hub = hub
        self.clips_dir = clips_dir
        self.api: PageApi | None = None  # the login and the review (LivePage sets it)
        files = resources.files("calmd.page")
        self.static = {path: ((files / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}
        self.connections: dict[socket.socket, threading.Thread] = {}
        self.connections_lock = threading.Lock()
        super().__init__((host, port), PageHandler)
        self.thread = threading.Thread(target=self.serve_forever, name="page-server", daemon=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn), which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="page-client", daemon=True
        )
        with self.connections_lock:
            self.connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop accepting, end every connection (an /events stream first says nothing more), join the threads."""
        self.hub.close()
        self.shutdown()
        self.server_close()
        with self.connections_lock:
            connections = dict(self.connections)
        for sock in connections:
            _shut(sock)
        deadline = time.monotonic() + CLOSE_JOIN_S
        for thread in [self.thread, *connections.values()]:
            thread.join(max(0.0, deadline - time.monotonic()))


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the browser has closed its side: an EventSource sends nothing after its request, so the
    socket turns readable only at its end. (select first: recv on a socket with a timeout would wait.)"""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by its peer or its thread
        pass


class PageHandler(BaseHTTPRequestHandler):
    server: PageServer
    server_version = "calmd-page"
    timeout = SOCKET_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("page %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            try:
                if self.server.api is None:
                    raise Refused(404, f"no API at {path!r}: this page is read-only")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise Refused(411, "a write needs a Content-Length")
                if int(length) > MAX_BODY:
                    self.close_connection = True  # the body is not read
                    raise Refused(413, f"a write's body is at most {MAX_BODY} bytes")
                body = self.rfile.read(int(length))
                self._reply(self.server.api.post(path, self.headers, body, self.client_address[0]))
            except Refused as e:
                self._send(e.status, f"{e}\n".encode(), "text/plain; charset=utf-8", False, e.headers)
        except OSError as e:
            log.debug("page %s: POST %s: %s", self.address_string(), path, e)

    def _reply(self, reply: Reply, head: bool = False) -> None:
        body = json.dumps(reply.body, separators=(",", ":")).encode()
        self._send(reply.status, body, "application/json", head, reply.headers, cache="no-store")

    def _route(self, head: bool) -> None:
        path = urlsplit(self.path).path
        try:
            try:
                self._dispatch(path, head)
            except Refused as e:
                self._send(e.status, f"{e}\n".encode(), "text/plain; charset=utf-8", head, e.headers)
        except OSError as e:  # the browser went away mid-response, or stopped reading for SOCKET_TIMEOUT_S
            log.debug("page %s: %s %s: %s", self.address_string(), self.command, path, e)

    def _dispatch(self, path: str, head: bool) -> None:
        if path in self.server.static:
            body, ctype = self.server.static[path]
            self._send(200, body, ctype, head)
        elif path == "/api/state":
            self._json(self.server.hub.snapshot(), head)
        elif path == "/healthz":
            self._json(self.server.hub.health(), head)
        elif (
            path.startswith("/api/")
            and self.server.api is not None
            and (reply := self.server.api.get(path, self.headers, dict(parse_qsl(urlsplit(self.path).query))))
        ):
            self._reply(reply, head)
        elif path == "/events":
            self._events()
        elif path.startswith("/clips/"):
            self._clip(path[len("/clips/") :], head)
        else:
            raise Refused(404, f"no page at {path!r} (try /)")

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        head: bool = False,
        headers: dict[str, str] | None = None,
        cache: str = "no-cache",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers(cache)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _common_headers(self, cache: str = "no-cache") -> None:
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)

    def _json(self, data: dict[str, Any], head: bool) -> None:
        self._send(200, json.dumps(data, separators=(",", ":")).encode(), "application/json", head)

    def _events(self) -> None:
        sock = self.connection
        client = self.server.hub.connect(self.address_string(), lambda: _shut(sock))
        if client is None:
            raise Refused(503, f"/events: already serving page.max_clients ({self.server.hub.max_clients}) browsers")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SNDBUF)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self._common_headers()
            self.end_headers()
            self.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
            quiet_since = time.monotonic()
            while (data := client.next(self.server.peer_check_s)) is not None:
                if data:
                    self.wfile.write(data)
                    quiet_since = time.monotonic()
                elif _peer_closed(sock):
                    return
                elif time.monotonic() - quiet_since >= self.server.keepalive_s:
                    self.wfile.write(KEEPALIVE)
                    quiet_since = time.monotonic()
        finally:
            self.server.hub.disconnect(client)

    def _clip(self, url_path: str, head: bool) -> None:
        if self.server.clips_dir is None:
            raise Refused(404, "no clips folder: saved clips are off ([clips] enabled = false)")
        path = clip_path(self.server.clips_dir, url_path)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            span = byte_range(self.headers.get("Range"), size)
            first, last = span if span is not None else (0, size - 1)
            self.send_response(206 if span is not None else 200)
            self.send_header("Content-Type", CLIP_TYPES[path.suffix.lower()])
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            if span is not None:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self._common_headers()
            self.end_headers()
            if not head and last >= first:
                self.connection.sendfile(f, first, last - first + 1)
