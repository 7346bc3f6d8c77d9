"""Connecting to PostgreSQL and describing its errors without secrets."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypeAlias

import psycopg
from psycopg.abc import Buffer
from psycopg.types.datetime import TimestampBinaryLoader, TimestampLoader

_CONNECT_TIMEOUT_SECONDS = 5

Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]


class StoreError(RuntimeError):
    """A store operation failed; the message is one line and carries no secret."""


def connect(url: str, *, application_name: str, autocommit: bool = False) -> Connection:
    """Open a connection in UTC; failures become StoreError without the URL in the message."""
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            application_name=application_name,
            # A database that vanishes without closing the connection (a partition, a
            # dead node) is noticed in about a minute instead of the kernel's two hours.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to PostgreSQL: {describe_error(error)}") from None
    try:
        # Set here, not in libpq's `options`: that would override PGOPTIONS and a service file's.
        conn.execute("SET TIME ZONE 'UTC'")
        if not autocommit:
            conn.commit()
    except psycopg.Error as error:
        conn.close()
        raise StoreError(f"cannot set up the PostgreSQL session: {describe_error(error)}") from None
    # A trail kept by hand may use `timestamp` (no zone) columns: their times are UTC, as the
    # session's, and come back as aware datetimes like timestamptz's.
    conn.adapters.register_loader("timestamp", _UtcTimestampLoader)
    conn.adapters.register_loader("timestamp", _UtcTimestampBinaryLoader)
    return conn


class _UtcTimestampLoader(TimestampLoader):
    def load(self, data: Buffer) -> datetime:
        return super().load(data).replace(tzinfo=UTC)


class _UtcTimestampBinaryLoader(TimestampBinaryLoader):
    def load(self, data: Buffer) -> datetime:
        return super().load(data).replace(tzinfo=UTC)


def describe_error(error: BaseException) -> str:
    """One line about a database error; libpq messages name host and port, never the password.

    The server's DETAIL is kept: it names what to fix (the duplicated key, say).
    """
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    detail = error.diag.message_detail if isinstance(error, psycopg.Error) else None
    if detail:
        line = f"{line} ({' '.join(detail.split())})"
    return re.sub(r"password=\S+", "password=***", line)
