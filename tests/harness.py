"""Running a real Daemon in-process against the Goldmane-compatible server, for end-to-end tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.conninfo

from aggregator.daemon import Daemon
from aggregator.pki import Pki
from aggregator.settings import DaemonSettings, GoldmaneSettings

T0 = 1_800_000_000  # a bucket boundary
BUCKET = 15


@dataclass
class ManualClock:
    """Flow time shared by the test server and the daemon; moves only when told."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


def daemon_settings(
    pki: Pki,
    port: int,
    database_url: str,
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    server_name: str = "goldmane",
) -> DaemonSettings:
    return DaemonSettings(
        goldmane=GoldmaneSettings(
            host="127.0.0.1",
            port=port,
            server_name=server_name,
            ca_file=ca_file or pki.ca_cert,
            cert_file=cert_file or pki.client_cert,
            key_file=key_file or pki.client_key,
            insecure=False,
        ),
        database_url=database_url,
        http_port=0,
        flush_interval=0.1,
        log_format="text",
    )


@dataclass
class RunningDaemon:
    """A Daemon whose run() is on a thread; `stop()` returns its exit status."""

    daemon: Daemon
    thread: threading.Thread
    result: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, settings: DaemonSettings, clock: Callable[[], float]) -> RunningDaemon:
        assert settings.database_url is not None
        daemon = Daemon(
            settings,
            database_url=settings.database_url,
            flow_clock=clock,
            http_host="127.0.0.1",
            quiet_seconds=0.3,
        )
        running = cls(daemon, threading.Thread(target=lambda: None))
        running.thread = threading.Thread(
            target=lambda: running.result.append(daemon.run()), daemon=True
        )
        running.thread.start()
        return running

    def stop(self) -> int:
        self.daemon.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.result[0]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.daemon.http_port}{path}", timeout=5)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample's value from /metrics (0 when absent)."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll until predicate() is truthy; generous timeout so a loaded machine still passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def edge_counts(database_url: str) -> dict[tuple[str, str, str], int]:
    with psycopg.connect(database_url) as conn:
        try:
            rows = conn.execute("SELECT src_ns, dst_ns, action, flow_count FROM edge").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {(src, dst, action): count for src, dst, action, count in rows}


def progress(database_url: str) -> int | None:
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute(
                "SELECT extract(epoch FROM max(sealed_until))::bigint FROM ingest_progress"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return None if row is None else row[0]


def unix_socket_or_tcp(database_url: str) -> dict[str, Any]:
    """Where the URL points, in the form TcpProxy takes."""
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(params.get("host") or "127.0.0.1")
    port = int(str(params.get("port") or 5432))
    if host.startswith("/"):
        return {"unix_path": f"{host}/.s.PGSQL.{port}"}
    return {"host": host, "port": port}


def via_proxy(database_url: str, proxy_port: int) -> str:
    return psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=str(proxy_port))
