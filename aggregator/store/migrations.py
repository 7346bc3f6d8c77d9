"""Numbered migrations from `sql/`, applied once each, in order, under an advisory lock."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from aggregator.store.connection import Connection, StoreError, describe_error

# Any fixed number works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 0x6564676573  # "edges"
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
LOCK_WAIT_SECONDS = 10.0


def _describe(error: psycopg.Error) -> str:
    if isinstance(error, psycopg.errors.LockNotAvailable):
        return (
            f"{describe_error(error)}: another session holds a lock on a table this migration"
            " changes (an open transaction? see pg_stat_activity)"
        )
    return describe_error(error)


def migrations_dir() -> Path:
    """`sql/` as shipped in the wheel (aggregator/sql), or at the top of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "sql"
    return packaged if packaged.is_dir() else package.parent / "sql"


def migration_files(directory: Path | None = None) -> list[tuple[int, Path]]:
    """Numbered migrations in order; a misnamed file is an error, not silently skipped."""
    found = []
    for path in sorted((directory or migrations_dir()).glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise StoreError(f"migration file name must look like 0001_name.sql: {path.name}")
        found.append((int(match.group(1)), path))
    return found


def migrate(
    conn: Connection, directory: Path | None = None, *, lock_wait: float = LOCK_WAIT_SECONDS
) -> list[int]:
    """Apply the migrations not yet applied, in order, once each; returns the versions applied.

    One transaction under an advisory lock: two processes starting together
    apply each migration once, and a failing migration leaves nothing half-done.
    A lock not granted within `lock_wait` seconds (the migration lock, or a
    table's behind someone's open transaction) fails the attempt, with a line
    saying which; the daemon logs it and tries again.
    """
    try:
        return _apply_pending(conn, directory, lock_wait)
    except psycopg.Error as error:
        raise StoreError(f"cannot apply migrations: {_describe(error)}") from None


def _apply_pending(conn: Connection, directory: Path | None, lock_wait: float) -> list[int]:
    applied_now = []
    with conn.transaction():
        # Bounded, so that a stop at start-up is not stuck behind it; the daemon tries again.
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{max(1, round(lock_wait * 1000))}ms",)
        )
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise StoreError(
                "cannot apply migrations: another process has been applying them for over"
                f" {lock_wait:g} s"
            ) from None
        # Looked up first: CREATE ... IF NOT EXISTS needs the right to create in the schema even
        # when the table is there, and a role that may only read and write must still start.
        if conn.execute("SELECT to_regclass('edge_aggregator_migration')").fetchone() == (None,):
            conn.execute(
                """
                CREATE TABLE edge_aggregator_migration (
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
                raise StoreError(f"migration {path.name} failed: {_describe(error)}") from None
            conn.execute(
                "INSERT INTO edge_aggregator_migration (version, name) VALUES (%s, %s)",
                (version, path.name),
            )
            applied_now.append(version)
    return applied_now
