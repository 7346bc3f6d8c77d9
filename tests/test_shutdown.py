"""SIGTERM on the real `edge-aggregator` process: stop receiving, flush, record progress, exit 0."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from aggregator.goldmane_server import GoldmaneServer
from aggregator.pki import Pki
from tests.harness import BUCKET, edge_counts, progress, wait_until


@pytest.fixture
def live_goldmane(pki: Pki) -> Iterator[tuple[GoldmaneServer, int]]:
    server = GoldmaneServer(auto_rollover=False)  # wall clock, like the daemon process
    port = server.start(tls=pki)
    yield server, port
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(port: int, name: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return -1


def _start_daemon(
    live_goldmane: tuple[GoldmaneServer, int], pki: Pki, database_url: str
) -> tuple[subprocess.Popen[str], int]:
    """The real process, once it has received a backfill of two sealed buckets; and the bucket."""
    server, port = live_goldmane
    bucket = int(time.time()) // BUCKET * BUCKET - 10 * BUCKET
    for offset in (0, BUCKET):
        server.record_connection(
            src_ns="frontend",
            src_name="web-*",
            dst_ns="api",
            dst_name="api-*",
            dst_port=80,
            at=bucket + offset,
        )
    server.rollover()
    http_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "GOLDMANE_HOST": f"127.0.0.1:{port}",
        "GOLDMANE_SERVER_NAME": "goldmane",
        "GOLDMANE_CA_FILE": str(pki.ca_cert),
        "GOLDMANE_CERT_FILE": str(pki.client_cert),
        "GOLDMANE_KEY_FILE": str(pki.client_key),
        "DATABASE_URL": database_url,
        "HTTP_PORT": str(http_port),
        "FLUSH_INTERVAL_SECONDS": "300",  # only the shutdown flush can write
    }
    daemon = subprocess.Popen(
        [sys.executable, "-m", "aggregator.daemon"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: metric(http_port, "edge_aggregator_flows_received_total") == 4, what="backfill"
        )
    except BaseException:
        daemon.kill()
        daemon.communicate()
        raise
    return daemon, bucket


def _wait_for_exit(daemon: subprocess.Popen[str]) -> str:
    """Wait for the exit (at most 10 s, as the contract says); its stderr."""
    try:
        _, stderr = daemon.communicate(timeout=10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    return stderr


def test_sigterm_flushes_records_progress_and_exits_0(
    live_goldmane: tuple[GoldmaneServer, int], pki: Pki, database_url: str
) -> None:
    daemon, bucket = _start_daemon(live_goldmane, pki, database_url)
    assert edge_counts(database_url) == {}
    daemon.send_signal(signal.SIGTERM)
    stderr = _wait_for_exit(daemon)
    assert daemon.returncode == 0, stderr
    assert edge_counts(database_url)[("frontend", "api", "allow")] >= 1
    recorded = progress(database_url)
    assert recorded is not None and recorded >= bucket + BUCKET
    assert "Traceback" not in stderr
    assert all(line.startswith("{") for line in stderr.splitlines())  # JSON events off a terminal


def test_signals_until_it_exits_stop_the_daemon_as_one_does(
    live_goldmane: tuple[GoldmaneServer, int], pki: Pki, database_url: str
) -> None:
    # Ctrl-C pressed again and again, or a supervisor and a shell both signalling: during the
    # shutdown, and after it, up to the exit.
    daemon, bucket = _start_daemon(live_goldmane, pki, database_url)
    deadline = time.monotonic() + 10
    try:
        for signum in itertools.cycle((signal.SIGINT, signal.SIGTERM)):
            if daemon.poll() is not None or time.monotonic() > deadline:
                break
            daemon.send_signal(signum)
            time.sleep(0.002)
    finally:
        stderr = _wait_for_exit(daemon)
    assert daemon.returncode == 0, stderr
    assert stderr.count('"msg": "stopping"') == 1, stderr
    assert edge_counts(database_url)[("frontend", "api", "allow")] >= 1
    recorded = progress(database_url)
    assert recorded is not None and recorded >= bucket + BUCKET
    assert "Traceback" not in stderr
