"""Settings of every command, read from the environment in one place and validated once.

A bad value raises SettingsError with a one-line message; commands turn that
into exit status 2 before doing any work.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg.conninfo

from aggregator.timespec import duration_seconds

DEFAULT_GOLDMANE_HOST = "goldmane.calico-system.svc.cluster.local:7443"
DEFAULT_CA_FILE = "/etc/goldmane/ca.crt"
DEFAULT_CERT_FILE = "/etc/goldmane/tls.crt"
DEFAULT_KEY_FILE = "/etc/goldmane/tls.key"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line, safe to print."""


@dataclass(frozen=True)
class GoldmaneSettings:
    """Where Goldmane is and how to prove who we are to it."""

    host: str
    port: int
    server_name: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    insecure: bool

    @property
    def target(self) -> str:
        """The gRPC target, with IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class DaemonSettings:
    """Everything `edge-aggregator` needs, validated."""

    goldmane: GoldmaneSettings
    database_url: str | None
    http_port: int
    flush_interval: float
    log_format: str


def parse_bool(name: str, value: str) -> bool:
    """Parse a 1/0-style flag, rejecting anything else rather than guessing."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{name} must be 1 or 0, not {value!r}")


def parse_host_port(name: str, value: str) -> tuple[str, int]:
    """Split `host:port` (or `[v6]:port`) and check both halves."""
    match = re.fullmatch(
        r"\[(?P<v6>[^\]]+)\]:(?P<port>[^:]+)|(?P<host>[^:\[\]]+):(?P<port2>[^:]+)", value
    )
    if match is None:
        raise SettingsError(f"{name} must be host:port, not {value!r}")
    host = match.group("v6") or match.group("host")
    port_text = match.group("port") or match.group("port2")
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError(f"{name} has a malformed IPv6 address: {value!r}") from None
    elif not _HOSTNAME.match(host):
        raise SettingsError(f"{name} has a malformed host name: {value!r}")
    return host, parse_port(name, port_text)


def parse_port(name: str, value: str, *, allow_any: bool = False) -> int:
    """A TCP port number; with `allow_any`, 0 asks for any free port (to listen on)."""
    lowest = 0 if allow_any else 1
    if not value.isdigit() or not lowest <= int(value) <= 65535:
        raise SettingsError(f"{name} must be a port number from {lowest} to 65535, not {value!r}")
    return int(value)


def parse_seconds(name: str, value: str, *, minimum: float, maximum: float) -> float:
    """A positive number of seconds within a sane range."""
    try:
        seconds = float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {value!r}") from None
    if not minimum <= seconds <= maximum:
        raise SettingsError(f"{name} must be between {minimum:g} and {maximum:g} seconds")
    return seconds


def validate_database_url(value: str) -> str:
    """Check that a libpq URL or key=value string parses; errors never echo it."""
    scheme = value.split("://", 1)[0] if "://" in value else None
    if scheme is not None and scheme not in ("postgres", "postgresql"):
        raise SettingsError("DATABASE_URL must start with postgresql:// or postgres://")
    try:
        params = psycopg.conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        raise SettingsError(
            "DATABASE_URL is malformed (not shown: it may hold a password)"
        ) from None
    # libpq parses any port text and only fails at connect time, which looks like an outage.
    ports = str(params.get("port") or "")
    if ports and not all(part.isdigit() for part in ports.split(",")):
        raise SettingsError(
            "DATABASE_URL has a malformed port (not shown); in a URL, percent-encode "
            "the password's special characters (/ as %2F, @ as %40)"
        )
    if _looks_misparsed(params):
        raise SettingsError(
            "DATABASE_URL looks misparsed (not shown): percent-encode the password's "
            "special characters (/ as %2F, @ as %40)"
        )
    return value


def _looks_misparsed(params: Mapping[str, object]) -> bool:
    # An unencoded '/' or '@' in a URL's password shifts it into host or dbname.
    return any("@" in str(params.get(key) or "") for key in ("host", "dbname", "user"))


def redact_url(url: str) -> str:
    """Where a database URL points, for logs and errors, never with its password.

    Rebuilt from libpq's own parse of the URL (a password may hold '/', '?' or
    '#', which fool a generic URL parser); anything unparseable is not shown.
    """
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<DATABASE_URL not shown>"
    if _looks_misparsed(params):
        return "<DATABASE_URL not shown>"
    user = str(params.get("user") or "")
    secret = ":***" if params.get("password") else ""
    auth = f"{user}{secret}@" if user or secret else ""
    host = str(params.get("host") or "")
    port = f":{params['port']}" if params.get("port") else ""
    dbname = str(params.get("dbname") or "")
    if host.startswith("/"):
        return f"postgresql://{auth}/{dbname}?host={host}"
    host = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}{host}{port}/{dbname}"


def load_goldmane_settings(env: Mapping[str, str]) -> GoldmaneSettings:
    """GOLDMANE_* settings; certificate files must exist unless plaintext is asked for."""
    host, port = parse_host_port("GOLDMANE_HOST", env.get("GOLDMANE_HOST", DEFAULT_GOLDMANE_HOST))
    insecure = parse_bool("GOLDMANE_TLS_INSECURE", env.get("GOLDMANE_TLS_INSECURE", ""))
    server_name = env.get("GOLDMANE_SERVER_NAME", "").strip() or host
    if not _HOSTNAME.match(server_name):
        raise SettingsError(f"GOLDMANE_SERVER_NAME is not a valid host name: {server_name!r}")
    files = {
        name: Path(env.get(name, default))
        for name, default in (
            ("GOLDMANE_CA_FILE", DEFAULT_CA_FILE),
            ("GOLDMANE_CERT_FILE", DEFAULT_CERT_FILE),
            ("GOLDMANE_KEY_FILE", DEFAULT_KEY_FILE),
        )
    }
    if not insecure:
        for name, path in files.items():
            if not path.is_file():
                raise SettingsError(f"{name}: no such file: {path}")
            if not os.access(path, os.R_OK):
                raise SettingsError(f"{name}: file is not readable: {path}")
    return GoldmaneSettings(
        host=host,
        port=port,
        server_name=server_name,
        ca_file=files["GOLDMANE_CA_FILE"],
        cert_file=files["GOLDMANE_CERT_FILE"],
        key_file=files["GOLDMANE_KEY_FILE"],
        insecure=insecure,
    )


def load_database_url(env: Mapping[str, str]) -> str | None:
    """DATABASE_URL, validated; None means the embedded PostgreSQL."""
    value = env.get("DATABASE_URL", "").strip()
    return validate_database_url(value) if value else None


def load_log_format(env: Mapping[str, str]) -> str:
    """LOG_FORMAT: `json`, `text`, or `auto` (text on a terminal, JSON otherwise)."""
    log_format = env.get("LOG_FORMAT", "auto").strip().lower() or "auto"
    if log_format not in ("auto", "json", "text"):
        raise SettingsError(f"LOG_FORMAT must be auto, json or text, not {log_format!r}")
    return log_format


def load_daemon_settings(
    env: Mapping[str, str], *, goldmane: GoldmaneSettings | None = None
) -> DaemonSettings:
    """All settings of `edge-aggregator`; `goldmane` replaces GOLDMANE_* (the simulator's)."""
    log_format = load_log_format(env)
    return DaemonSettings(
        goldmane=goldmane or load_goldmane_settings(env),
        database_url=load_database_url(env),
        http_port=parse_port("HTTP_PORT", env.get("HTTP_PORT", "9090"), allow_any=True),
        flush_interval=parse_seconds(
            "FLUSH_INTERVAL_SECONDS",
            env.get("FLUSH_INTERVAL_SECONDS", "5"),
            minimum=0.05,
            maximum=300,
        ),
        log_format=log_format,
    )


# --- The digest (`edges-digest`) ------------------------------------------------------------

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True, repr=False)
class DigestSettings:
    """Everything `edges-digest` needs, validated."""

    webhook_url: str | None
    dry_run: bool
    database_url: str | None
    first_window: float
    max_edges: int
    http_timeout: float
    max_retry_after: float
    lock_wait: float
    log_format: str

    def __repr__(self) -> str:
        # The webhook URL is a credential: a logged or printed settings object must not show it.
        webhook = "<set>" if self.webhook_url else None
        return (
            f"DigestSettings(webhook_url={webhook!r}, dry_run={self.dry_run!r},"
            f" database_url={redact_url(self.database_url or '')!r},"
            f" first_window={self.first_window!r}, max_edges={self.max_edges!r})"
        )


def parse_duration(name: str, value: str, *, minimum: float, maximum: float) -> float:
    """A duration such as `90s`, `30m`, `24h` or `7d`, in seconds."""
    seconds = duration_seconds(value)
    if seconds is None:
        raise SettingsError(f"{name} must be a duration like 30m, 24h or 7d, not {value!r}")
    if not minimum <= seconds <= maximum:
        raise SettingsError(f"{name} must be between {minimum:g} and {maximum:g} seconds")
    return seconds


def validate_webhook_url(name: str, value: str) -> str:
    """An https URL (http only to this machine, for tests); errors never echo the URL."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError for a port that is not 0-65535
    except ValueError:
        raise SettingsError(f"{name} is not a valid URL (not shown: it is a secret)") from None
    if not value.isprintable():
        raise SettingsError(f"{name} holds a control character (not shown: it is a secret)")
    if parts.scheme == "http" and host in _LOCAL_HOSTS:
        return value
    if parts.scheme != "https" or not host or any(c.isspace() for c in value):
        raise SettingsError(f"{name} must be an https:// URL (not shown: it is a secret)")
    return value


def load_digest_settings(env: Mapping[str, str]) -> DigestSettings:
    """All settings of `edges-digest`; posting needs SLACK_WEBHOOK_URL unless DRY_RUN is on."""
    dry_run = parse_bool("DRY_RUN", env.get("DRY_RUN", ""))
    # Secrets mounted from files often end in a newline.
    raw_url = env.get("SLACK_WEBHOOK_URL", "").strip()
    webhook_url = validate_webhook_url("SLACK_WEBHOOK_URL", raw_url) if raw_url else None
    if webhook_url is None and not dry_run:
        raise SettingsError(
            "SLACK_WEBHOOK_URL is not set: set it to the Slack incoming webhook,"
            " or use --dry-run (DRY_RUN=1) to print the digest without posting"
        )
    log_format = load_log_format(env)
    max_edges_text = env.get("DIGEST_MAX_EDGES", "500").strip()
    if not max_edges_text.isdigit():
        raise SettingsError(
            f"DIGEST_MAX_EDGES must be a whole number (0 = no cap), not {max_edges_text!r}"
        )
    return DigestSettings(
        webhook_url=webhook_url,
        dry_run=dry_run,
        database_url=load_database_url(env),
        first_window=parse_duration(
            "DIGEST_FIRST_WINDOW",
            env.get("DIGEST_FIRST_WINDOW", "24h"),
            minimum=60,
            maximum=366 * 86400,
        ),
        max_edges=int(max_edges_text),
        http_timeout=parse_seconds(
            "DIGEST_HTTP_TIMEOUT_SECONDS",
            env.get("DIGEST_HTTP_TIMEOUT_SECONDS", "10"),
            minimum=0.05,
            maximum=120,
        ),
        max_retry_after=parse_seconds(
            "DIGEST_MAX_RETRY_AFTER_SECONDS",
            env.get("DIGEST_MAX_RETRY_AFTER_SECONDS", "60"),
            minimum=1,
            maximum=900,
        ),
        lock_wait=parse_seconds(
            "DIGEST_LOCK_WAIT_SECONDS",
            env.get("DIGEST_LOCK_WAIT_SECONDS", "600"),
            minimum=0.1,
            maximum=86400,
        ),
        log_format=log_format,
    )
