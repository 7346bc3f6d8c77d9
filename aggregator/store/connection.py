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


class DatabaseUrlRefused(StoreError):
    """libpq refused a setting in the URL itself (`sslmode=bogus`): nothing was sent.

    A bad setting, not an outage: the programs exit with their usage status, and the
    daemon does not retry it.
    """


# libpq reports these about the URL's own settings, before it connects.
_BAD_URL_SETTING = re.compile(
    r"invalid \S+ value|invalid connection option|invalid integer value|invalid URI",
    re.IGNORECASE,
)


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
        message = f"cannot connect to PostgreSQL: {describe_error(error)}"
        if _BAD_URL_SETTING.search(message):
            raise DatabaseUrlRefused(message) from None
        raise StoreError(message) from None
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
    return _without_secrets(line)


# libpq quotes parts of a URL it cannot read: the whole URI, a token that is not valid
# percent-encoding (a password may hold a '%'), a "host" that took the tail of a password
# holding an '@'. Greedy to the last quote: a password may hold a quote too.
_QUOTED_URI = re.compile(r"""(["'])postgres(?:ql)?://.*\1""", re.IGNORECASE)
_BAD_PERCENT_TOKEN = re.compile(r"""(invalid percent-encoded token): (["']).*\2""")
_QUOTED_USERINFO = re.compile(r"""(["'])[^"']*@""")
_PASSWORD_SETTING = re.compile(r"password=\S+")


def _without_secrets(line: str) -> str:
    line = _QUOTED_URI.sub("<DATABASE_URL not shown>", line)
    line = _BAD_PERCENT_TOKEN.sub(
        r"\1 in DATABASE_URL (a '%' not followed by two hex digits)", line
    )
    line = _QUOTED_USERINFO.sub(r"\1***@", line)
    return _PASSWORD_SETTING.sub("password=***", line)
