"""The PostgreSQL store: the only code that writes SQL.

Migrations from `sql/`, the daemon's batched edge upsert and its progress.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeAlias

import psycopg

from aggregator.buffer import Batch

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 0x6564676573  # "edges"
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_CONNECT_TIMEOUT_SECONDS = 5

Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]


class StoreError(RuntimeError):
    """A store operation failed; the message is one line and carries no secret."""


@dataclass(frozen=True)
class FlushResult:
    upserted: int
    created: int


def migrations_dir() -> Path:
    """`sql/` as shipped in the wheel, or at the top of a source checkout."""
    packaged = Path(__file__).resolve().parent / "sql"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "sql"


def migration_files(directory: Path | None = None) -> list[tuple[int, Path]]:
    """Numbered migrations in order; a misnamed file is an error, not silently skipped."""
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise StoreError(f"migration file name must look like 0001_name.sql: {path.name}")
        found.append((int(match.group(1)), path))
    return found


def connect(url: str, *, application_name: str, autocommit: bool = False) -> Connection:
    """Open a connection; failures become StoreError without the URL in the message."""
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=_CONNECT_TIMEOUT_SECONDS,
            application_name=application_name,
        )
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to PostgreSQL: {describe_error(error)}") from None


def describe_error(error: BaseException) -> str:
    """One line about a database error; libpq messages name host and port, never the password."""
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    return re.sub(r"password=\S+", "password=***", first)


def migrate(conn: Connection, directory: Path | None = None) -> list[int]:
    """Apply the migrations not yet applied, in order, once each; returns the versions applied.

    One transaction under an advisory lock: two processes starting together
    apply each migration once, and a failing migration leaves nothing half-done.
    """
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS edge_aggregator_migration (
                version    integer     PRIMARY KEY,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {row[0] for row in conn.execute("SELECT version FROM edge_aggregator_migration")}
        for version, path in migration_files(directory):
            if version in done:
                continue
            try:
                conn.execute(path.read_text(encoding="utf-8").encode())
            except psycopg.Error as error:
                raise StoreError(f"migration {path.name} failed: {describe_error(error)}") from None
            conn.execute(
                "INSERT INTO edge_aggregator_migration (version, name) VALUES (%s, %s)",
                (version, path.name),
            )
            applied_now.append(version)
    return applied_now


class IngestStore:
    """The daemon's writes: one batched upsert plus progress, in one transaction per flush."""

    def __init__(self, conn: Connection, *, source: str) -> None:
        self._conn = conn
        self._source = source

    @classmethod
    def open(cls, url: str, *, source: str) -> Self:
        return cls(connect(url, application_name="edge-aggregator"), source=source)

    def close(self) -> None:
        self._conn.close()

    def migrate(self) -> list[int]:
        return migrate(self._conn)

    def ping(self) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT 1")

    def load_progress(self) -> int | None:
        """Epoch seconds up to which every bucket is counted, or None on a first start."""
        with self._conn.transaction():
            row = self._conn.execute(
                "SELECT sealed_until FROM ingest_progress WHERE source = %s", (self._source,)
            ).fetchone()
        if row is None:
            return None
        sealed_until = row[0]
        assert isinstance(sealed_until, datetime)
        return int(sealed_until.timestamp())

    def write(self, batch: Batch) -> FlushResult:
        """Upsert a batch's edges and advance progress atomically: a constant two statements."""
        rows = sorted(batch.edges.items())  # a fixed lock order: concurrent writers cannot deadlock
        result = FlushResult(0, 0)
        with self._conn.transaction():
            if batch.sealed_until is not None and self._already_written(batch.sealed_until):
                return result
            if rows:
                counts = self._conn.execute(
                    """
                    WITH incoming AS (
                        SELECT * FROM unnest(%s::text[], %s::text[], %s::text[],
                                             %s::bigint[], %s::bigint[], %s::bigint[])
                            AS t(src_ns, dst_ns, action, first_seen, last_seen, flow_count)
                    ), upserted AS (
                        INSERT INTO edge AS e
                            (src_ns, dst_ns, action, first_seen, last_seen, flow_count)
                        SELECT src_ns, dst_ns, action, to_timestamp(first_seen),
                               to_timestamp(last_seen), flow_count
                        FROM incoming
                        ON CONFLICT (src_ns, dst_ns, action) DO UPDATE SET
                            first_seen = LEAST(e.first_seen, EXCLUDED.first_seen),
                            last_seen = GREATEST(e.last_seen, EXCLUDED.last_seen),
                            flow_count = e.flow_count + EXCLUDED.flow_count
                        RETURNING (xmax = 0) AS created
                    )
                    SELECT count(*), count(*) FILTER (WHERE created) FROM upserted
                    """,
                    (
                        [key[0] for key, _ in rows],
                        [key[1] for key, _ in rows],
                        [key[2] for key, _ in rows],
                        [totals.first_seen for _, totals in rows],
                        [totals.last_seen for _, totals in rows],
                        [totals.flow_count for _, totals in rows],
                    ),
                ).fetchone()
                assert counts is not None
                result = FlushResult(upserted=counts[0], created=counts[1])
            if batch.sealed_until is not None:
                self._conn.execute(
                    """
                    INSERT INTO ingest_progress AS p (source, sealed_until)
                    VALUES (%s, to_timestamp(%s))
                    ON CONFLICT (source) DO UPDATE SET
                        sealed_until = GREATEST(p.sealed_until, EXCLUDED.sealed_until),
                        updated_at = now()
                    """,
                    (self._source, batch.sealed_until),
                )
        return result

    def _already_written(self, sealed_until: int) -> bool:
        """True when progress already covers this batch.

        A commit whose acknowledgement was lost looks like a failure; the
        flusher retries the same batch, and this makes the retry a no-op
        instead of a double count.
        """
        row = self._conn.execute(
            "SELECT extract(epoch FROM sealed_until)::bigint FROM ingest_progress"
            " WHERE source = %s FOR UPDATE",
            (self._source,),
        ).fetchone()
        return row is not None and row[0] >= sealed_until

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
