"""/metrics, /healthz and /readyz on one port, served from threads beside the event loop.

No request handler touches the event loop. /metrics renders the App's registry in the request's
thread, /healthz reads the loop's heartbeat, and /readyz reads the `Health` state. A blocked
loop therefore gives a prompt 503 on /healthz rather than a request that hangs.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from stream.errors import ConfigError
from stream.health import Health

log = logging.getLogger(__name__)

# Requests served at the same time. Beyond this, new connections are closed unanswered, so a
# flood of clients cannot create unbounded threads.
MAX_CONCURRENT_REQUESTS = 16
# Seconds a client may take to send its request before its connection is closed.
REQUEST_TIMEOUT_S = 10.0
# Seconds between checks for a shutdown request in the accept loop.
POLL_INTERVAL_S = 0.2
# Minimum seconds between two warnings about closed connections, so a flood logs one line a minute.
REJECTED_WARNING_INTERVAL_S = 60.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Health):
        self.registry = registry
        self.health = health
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT_REQUESTS)
        self._rejected = 0  # connections closed since the last warning; the accept thread owns it
        self._rejected_warned_at = -math.inf
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's fully qualified name, a DNS lookup that can
        # block for seconds; nothing here uses that name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            self._warn_rejected()
            return
        super().process_request(request, client_address)

    def _warn_rejected(self) -> None:
        self._rejected += 1
        now = time.monotonic()
        if now - self._rejected_warned_at >= REJECTED_WARNING_INTERVAL_S:
            log.warning(
                "HTTP: %d requests already in progress; closed %d new connections unanswered",
                MAX_CONCURRENT_REQUESTS, self._rejected,
            )
            self._rejected = 0
            self._rejected_warned_at = now

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("HTTP request from %s failed", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send_metrics()
        elif path == "/healthz":
            self._send_health()
        elif path == "/readyz":
            self._send_readiness()
        else:
            self._send_json(404, {"error": f"no such path {path!r}; use /metrics, /healthz or /readyz"})

    def _send_metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._send(200, content_type, encoder(self.server.registry))

    def _send_health(self) -> None:
        health = self.server.health
        alive = health.alive()
        body = {"status": "ok" if alive else "stalled", "loop_delay_s": round(health.loop_delay_s(), 3)}
        self._send_json(200 if alive else 503, body)

    def _send_readiness(self) -> None:
        readiness = self.server.health.readiness()
        body = {
            "ready": readiness.ready,
            "model_loaded": readiness.model_loaded,
            "streaming_cameras": list(readiness.streaming_cameras),
            "sink_ready": readiness.sink_ready,
        }
        self._send_json(200 if readiness.ready else 503, body)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode("utf-8") + b"\n")

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # The base class writes every request to stderr; scrapes every few seconds belong at DEBUG.
        log.debug("HTTP %s: " + format, self.client_address[0], *args)


class StatusServer:
    """The HTTP endpoints of one App, on `host`:`port` (port 0 picks a free port).

    `start` binds the port and starts the accept thread; `stop` blocks until that thread has
    ended, so call it through `asyncio.to_thread` from the event loop.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health):
        self.host = host
        self.requested_port = port
        self.registry = registry
        self.health = health
        self.port: int | None = None  # the bound port, set by start
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the port and serve; raise ConfigError naming http.host or http.port when binding fails."""
        self._server = self._bind()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="vistream-http",
            daemon=True,
        )
        self._thread.start()
        log.debug("HTTP: listening on %s:%d", self.host, self.port)

    def _bind(self) -> _Server:
        server_class = _Server6 if ":" in self.host else _Server
        try:
            return server_class((self.host, self.requested_port), self.registry, self.health)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"http.port {self.requested_port} is already in use on {self.host}; stop the other "
                    "process, choose another port with http.port or --http-port, or use 0 for any free port"
                ) from None
            raise ConfigError(
                f"cannot serve HTTP on http.host {self.host!r}, http.port {self.requested_port}: "
                f"{exc.strerror or exc}; check both settings"
            ) from None

    def stop(self) -> None:
        """Stop accepting requests and close the port; requests in progress finish on their own threads."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None
        log.debug("HTTP: stopped listening on %s:%d", self.host, self.port)
