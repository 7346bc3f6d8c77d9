"""A Slack incoming webhook on 127.0.0.1 for tests: scripted answers, every request recorded.

Answers are consumed one per request, in order; when the script runs out the
server answers 200 `ok`. Also here: FakeTime, a clock that moves only when
slept on, so pacing and retry waits are recorded instead of waited for.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The secret part of a webhook URL, distinctive enough to search for in any output.
SECRET_PATH = "/services/T0TESTTEAM/B0TESTHOOK/s3cr3tW3bh00kT0k3nXYZ"


@dataclass(frozen=True)
class Answer:
    """One scripted answer. `hang` delays it (past the client's timeout); `gate` holds it."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0
    gate: threading.Event | None = None


OK = Answer()


def slack_error(name: str, status: int = 404) -> Answer:
    return Answer(status=status, body=name)


def rate_limited(retry_after: str | None) -> Answer:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return Answer(status=429, body="rate_limited", headers=headers)


def server_error(status: int = 500) -> Answer:
    return Answer(status=status, body="internal_error")


def hang(seconds: float = 5.0) -> Answer:
    return Answer(hang=seconds)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON, or the raw text when it was not JSON


class SlackServer:
    """The server; `url` is the webhook URL to give the digest."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._script: list[Answer] = []
        self._default = OK
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # type: ignore[attr-defined]
        # A short poll interval: stop() waits up to one interval for the serving loop.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{SECRET_PATH}"

    def script(self, *answers: Answer, then: Answer = OK) -> None:
        """Answer the next requests with `answers`, then always with `then`."""
        with self._lock:
            self._script = list(answers)
            self._default = then

    @property
    def bodies(self) -> list[Any]:
        with self._lock:
            return [request.body for request in self.received]

    def wait_for_requests(self, count: int, timeout: float = 30) -> None:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {len(self.received)}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_answer(self, received: Received) -> Answer:
        with self._lock:
            self.received.append(received)
            self._lock.notify_all()
            return self._script.pop(0) if self._script else self._default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                answer = server._next_answer(Received(self.path, dict(self.headers), body))
                if answer.hang:
                    server._stopping.wait(answer.hang)
                if answer.gate is not None:
                    while not answer.gate.wait(0.05) and not server._stopping.is_set():
                        pass
                payload = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def slack_server() -> Iterator[SlackServer]:
    server = SlackServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class FakeTime:
    """A monotonic clock that advances only by what is slept; the sleeps are recorded."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
