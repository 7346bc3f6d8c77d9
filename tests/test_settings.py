"""Settings are validated once, at start: one clear line and exit 2 for anything wrong."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from aggregator.logs import configure_logging
from aggregator.pki import Pki
from aggregator.settings import SettingsError, load_daemon_settings, redact_url


def env_for(pki: Pki, **overrides: str) -> dict[str, str]:
    env = {
        "GOLDMANE_HOST": "goldmane.calico-system.svc:7443",
        "GOLDMANE_CA_FILE": str(pki.ca_cert),
        "GOLDMANE_CERT_FILE": str(pki.client_cert),
        "GOLDMANE_KEY_FILE": str(pki.client_key),
        "DATABASE_URL": "postgresql://edges:s3cret@db.example:5432/edges",
    }
    env.update(overrides)
    return env


def test_defaults_follow_the_design(pki: Pki) -> None:
    settings = load_daemon_settings(env_for(pki))
    assert settings.goldmane.target == "goldmane.calico-system.svc:7443"
    assert settings.goldmane.server_name == "goldmane.calico-system.svc"
    assert settings.goldmane.insecure is False
    assert settings.http_port == 9090


def test_server_name_override_and_ipv6_host(pki: Pki) -> None:
    settings = load_daemon_settings(
        env_for(pki, GOLDMANE_HOST="[::1]:7443", GOLDMANE_SERVER_NAME="goldmane")
    )
    assert settings.goldmane.target == "[::1]:7443"
    assert settings.goldmane.server_name == "goldmane"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"GOLDMANE_HOST": "goldmane"}, "GOLDMANE_HOST must be host:port"),
        ({"GOLDMANE_HOST": "goldmane:http"}, "port number"),
        ({"GOLDMANE_HOST": "goldmane:70000"}, "port number"),
        ({"GOLDMANE_HOST": "bad host!:7443"}, "malformed host name"),
        ({"GOLDMANE_CA_FILE": "/nonexistent/ca.crt"}, "GOLDMANE_CA_FILE: no such file"),
        ({"GOLDMANE_KEY_FILE": "/nonexistent/tls.key"}, "GOLDMANE_KEY_FILE: no such file"),
        ({"GOLDMANE_TLS_INSECURE": "maybe"}, "GOLDMANE_TLS_INSECURE must be 1 or 0"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL must start with postgresql://"),
        ({"DATABASE_URL": "host=x port"}, "DATABASE_URL is malformed"),
        ({"FLUSH_INTERVAL_SECONDS": "soon"}, "FLUSH_INTERVAL_SECONDS must be a number"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be auto, json or text"),
    ],
)
def test_bad_settings_are_one_line_errors(
    pki: Pki, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load_daemon_settings(env_for(pki, **overrides))
    assert "\n" not in str(caught.value)


def test_plaintext_needs_no_certificate_files() -> None:
    settings = load_daemon_settings(
        {"GOLDMANE_TLS_INSECURE": "1", "GOLDMANE_HOST": "127.0.0.1:7443"}
    )
    assert settings.goldmane.insecure is True
    assert settings.database_url is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://edges:s3cret@db:5432/edges",
        "postgresql://edges:s3cret@db/edges?sslmode=require&password=s3cret",
        "host=db user=edges password=s3cret dbname=edges",
    ],
)
def test_redacted_urls_never_show_the_password(url: str) -> None:
    assert "s3cret" not in redact_url(url)


def run_daemon(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggregator.daemon", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_missing_cert_file_at_start_up_exits_2_with_one_line(pki: Pki) -> None:
    result = run_daemon(env_for(pki, GOLDMANE_CERT_FILE="/nonexistent/tls.crt"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "edge-aggregator: GOLDMANE_CERT_FILE: no such file: /nonexistent/tls.crt"
    ]


def test_a_malformed_database_url_exits_2_without_the_password(pki: Pki) -> None:
    result = run_daemon(env_for(pki, DATABASE_URL="postgresql://edges:s3cret@db:notaport/edges"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "s3cret" not in result.stderr


def test_flags_override_the_environment(pki: Pki) -> None:
    result = run_daemon(env_for(pki), "--goldmane-host", "no-port-here")
    assert result.returncode == 2
    assert "GOLDMANE_HOST must be host:port" in result.stderr


def test_logs_off_a_terminal_are_one_json_object_per_line() -> None:
    stream = StringIO()
    configure_logging("auto", stream=stream)
    try:
        logging.getLogger("aggregator").warning(
            "stream failed\nsecond line", extra={"step": "connect"}
        )
    finally:
        configure_logging("text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["level"] == "warning"
    assert event["step"] == "connect"


def test_logs_on_a_terminal_are_readable_text(tmp_path: Path) -> None:
    class Terminal(StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    configure_logging("auto", stream=stream)
    try:
        logging.getLogger("aggregator").info("connected", extra={"target": "goldmane:7443"})
    finally:
        configure_logging("text")
    assert stream.getvalue().rstrip().endswith("info    connected target=goldmane:7443")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://edges:S3cr?etPW@127.0.0.1:1/edges",
        "postgresql://edges:ab/S3cretPW@127.0.0.1:1/edges",
        "postgresql://edges:ab#S3cretPW@127.0.0.1:1/edges",
        "postgresql://edges:12/S3cretPW@host/db",
        "host=db user=edges password='my S3cretPW' dbname=edges",
        "postgresql://edges:S3cretPW@[::1:5432/db",
    ],
)
def test_passwords_with_url_special_characters_never_reach_messages(url: str) -> None:
    assert "S3cretPW" not in redact_url(url)
    try:
        load_daemon_settings({"GOLDMANE_TLS_INSECURE": "1", "DATABASE_URL": url})
    except SettingsError as error:
        assert "S3cretPW" not in str(error)
