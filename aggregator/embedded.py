"""The embedded PostgreSQL used when DATABASE_URL is unset.

One per user, started on first use and left running for the next command.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from aggregator.settings import SettingsError

log = logging.getLogger(__name__)


def data_directory() -> Path:
    """Per-user data directory (XDG_DATA_HOME respected), shared by every command."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "goldmane-edge-aggregator" / "pgdata"


def embedded_database_url() -> str:
    """Start (or find running) the embedded server and return its URL (Unix socket, no password)."""
    directory = data_directory()
    with warnings.catch_warnings():
        # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            raise SettingsError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "set DATABASE_URL or pip install 'goldmane-edge-aggregator[embedded]'"
            ) from None
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SettingsError(
                f"cannot create {directory.parent} for the embedded PostgreSQL "
                f"({error.strerror}): set DATABASE_URL, or XDG_DATA_HOME to a writable directory"
            ) from None
        # cleanup_mode=None leaves it running after we exit, so the next command reuses it.
        try:
            server = pgserver.get_server(directory, cleanup_mode=None)
        except Exception as error:  # pgserver raises whatever initdb or pg_ctl did
            raise SettingsError(
                f"the embedded PostgreSQL in {directory} did not start ({type(error).__name__}); "
                f"see {directory / 'log'} or set DATABASE_URL"
            ) from None
    log.info("using the embedded PostgreSQL", extra={"data_directory": str(directory)})
    return str(server.get_uri())


def resolve_database_url(url: str | None) -> str:
    """The configured URL, or the embedded server's."""
    return url if url is not None else embedded_database_url()
