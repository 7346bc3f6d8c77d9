"""The health port: reachable over IPv4 and IPv6, and a clear error when it is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aggregator.health import HealthServer
from aggregator.pki import Pki


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_the_default_listener_answers_on_ipv4_and_ipv6() -> None:
    server = HealthServer(port=0, registry=CollectorRegistry(), readiness=lambda: [])
    server.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5).status_code == 200
        if _ipv6_loopback():
            assert httpx.get(f"http://[::1]:{server.port}/healthz", timeout=5).status_code == 200
    finally:
        server.close()


def test_readiness_names_every_reason() -> None:
    server = HealthServer(
        port=0, registry=CollectorRegistry(), readiness=lambda: ["a reason", "another"]
    )
    server.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
    finally:
        server.close()
    assert response.status_code == 503
    assert response.text == "not ready: a reason; another\n"


def test_a_taken_http_port_is_one_line_and_exit_2(pki: Pki, postgres_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "aggregator.daemon"],
            env={
                "PATH": os.environ.get("PATH", ""),
                "GOLDMANE_HOST": "127.0.0.1:1",
                "GOLDMANE_SERVER_NAME": "goldmane",
                "GOLDMANE_CA_FILE": str(pki.ca_cert),
                "GOLDMANE_CERT_FILE": str(pki.client_cert),
                "GOLDMANE_KEY_FILE": str(pki.client_key),
                "DATABASE_URL": postgres_url,
                "HTTP_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"edge-aggregator: cannot listen on HTTP_PORT {port}: Address already in use"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probe_paths_answer(path: str) -> None:
    server = HealthServer(port=0, registry=CollectorRegistry(), readiness=lambda: [])
    server.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{server.port}{path}", timeout=5).status_code == 200
    finally:
        server.close()
