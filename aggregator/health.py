"""The daemon's one HTTP port: /healthz, /readyz and /metrics."""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], list[str]]
"""Returns the reasons the daemon is not ready; empty when it is."""


class _DualStackServer(ThreadingHTTPServer):
    """Listens on IPv6 and IPv4 at once: probes and scrapes come from either on a cluster."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class HealthServer:
    """Serves in a background thread until `close()`; the default host means every address."""

    def __init__(
        self,
        *,
        port: int,
        registry: CollectorRegistry,
        readiness: ReadinessCheck,
        host: str = "::",
    ) -> None:
        handler = _handler_class(registry, readiness)
        self._server = _listen(host, port, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _listen(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    if host != "::":
        return ThreadingHTTPServer((host, port), handler)
    try:
        return _DualStackServer((host, port), handler)
    except OSError as error:
        if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        return ThreadingHTTPServer(("0.0.0.0", port), handler)  # a host without IPv6


def _handler_class(
    registry: CollectorRegistry, readiness: ReadinessCheck
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._reply(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                reasons = readiness()
                body = (
                    "ready\n" if not reasons else "not ready: " + "; ".join(reasons) + "\n"
                ).encode()
                self._reply(503 if reasons else 200, body, "text/plain; charset=utf-8")
            elif path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit this every few seconds: not worth a log line each.
            pass

    return Handler
