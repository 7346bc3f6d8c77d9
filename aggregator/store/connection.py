"""Connecting to PostgreSQL and describing its errors without secrets."""

from __future__ import annotations

import re
from typing import Any, TypeAlias

import psycopg

_CONNECT_TIMEOUT_SECONDS = 5

Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]


class StoreError(RuntimeError):
    """A store operation failed; the message is one line and carries no secret."""


def connect(url: str, *, application_name: str, autocommit: bool = False) -> Connection:
    """Open a connection; failures become StoreError without the URL in the message."""
    try:
        return psycopg.connect(
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


def describe_error(error: BaseException) -> str:
    """One line about a database error; libpq messages name host and port, never the password."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return re.sub(r"password=\S+", "password=***", first)
