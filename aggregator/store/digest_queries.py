"""The digest's SQL: which edges no digest has reported yet, and recording what a run reported.

An edge is new while it has no row in `digest_reported`; a run writes a message's
rows once Slack has accepted that message. Runs serialise on an advisory lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import psycopg
import psycopg.errors

from aggregator.buffer import EdgeKey
from aggregator.store.connection import Connection, StoreError, connect, describe_error
from aggregator.store.edge_queries import Edge
from aggregator.store.migrations import migrate

# Any fixed number works; it must differ from the migration lock's key.
DIGEST_LOCK_KEY = 0x646967657374  # "digest"


# The cast: a table made by hand may count in integer or numeric.
_EDGE_COLUMNS = "e.src_ns, e.dst_ns, e.action, e.first_seen, e.last_seen, e.flow_count::bigint"
# Denied edges first: they are the ones people must read.
_EDGE_ORDER = "ORDER BY (e.action <> 'deny'), e.src_ns, e.dst_ns, e.action"


@dataclass(frozen=True)
class Selection:
    """The edges a run reports and the window that labels them (database time)."""

    edges: list[Edge]
    window_start: datetime
    window_end: datetime
    first_run: bool


class DigestBusy(StoreError):
    """Another digest run held the digest lock for longer than this one would wait."""


@contextmanager
def _store_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as error:
        raise StoreError(f"{doing}: {describe_error(error)}") from None


def _edges(rows: Sequence[tuple[Any, ...]]) -> list[Edge]:
    return [Edge(*row[:6]) for row in rows]


class DigestStore:
    """The digest's reads and writes; every method is its own short transaction.

    The connection is in autocommit mode so that no transaction (and no table
    lock) can stay open while a run waits on Slack.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, url: str) -> Self:
        return cls(connect(url, application_name="edges-digest", autocommit=True))

    def close(self) -> None:
        self._conn.close()

    def migrate(self) -> list[int]:
        return migrate(self._conn)

    @contextmanager
    def exclusive(self, wait: float) -> Iterator[None]:
        """Hold the digest lock for the block; wait at most `wait` seconds for it.

        A session-level lock: it outlives the short transactions of one run
        (select, then record) and goes away with the connection if we die.
        """
        try:
            with self._conn.transaction():
                self._conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{max(1, round(wait * 1000))}ms",),
                )
                self._conn.execute("SELECT pg_advisory_lock(%s)", (DIGEST_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable:
            raise DigestBusy(
                f"another edges-digest run has held the digest lock for over {wait:g} s"
                " (DIGEST_LOCK_WAIT_SECONDS); if no run is going, look for a stuck one in"
                " pg_stat_activity (application_name = 'edges-digest')"
            ) from None
        except psycopg.Error as error:
            raise StoreError(f"cannot take the digest lock: {describe_error(error)}") from None
        try:
            yield
        finally:
            # A broken connection cannot unlock, but closing it releases the lock anyway.
            with suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (DIGEST_LOCK_KEY,))

    def ensure_baseline(self, first_window: float) -> int:
        """On the very first run, take edges first seen before the window as already known.

        Committed on its own, before anything is posted: if the first run then
        fails, the next one reports the same window instead of a later one.
        Returns how many edges were baselined (0 when the baseline exists).
        """
        with _store_errors("cannot record the digest baseline"), self._conn.transaction():
            if self._conn.execute("SELECT 1 FROM digest_state").fetchone() is not None:
                return 0
            row = self._conn.execute(
                "SELECT now() - make_interval(secs => %s)", (first_window,)
            ).fetchone()
            assert row is not None
            cutoff = row[0]
            cursor = self._conn.execute(
                """
                INSERT INTO digest_reported (src_ns, dst_ns, action, run_id, how)
                SELECT e.src_ns, e.dst_ns, e.action, %s, 'baseline'
                FROM edge e
                WHERE e.first_seen < %s
                ON CONFLICT DO NOTHING
                """,
                (uuid.uuid4(), cutoff),
            )
            self._conn.execute(
                "INSERT INTO digest_state (baseline_at, baseline_cutoff) VALUES (now(), %s)",
                (cutoff,),
            )
            return cursor.rowcount

    def unreported(self, first_window: float) -> Selection:
        """Edges no digest has reported; before any baseline, only those in the first window."""
        with _store_errors("cannot read new edges"), self._conn.transaction():
            state = self._conn.execute(
                "SELECT baseline_cutoff, last_run_at, now() FROM digest_state"
            ).fetchone()
            if state is not None:
                baseline_cutoff, last_run_at, now = state
                window_start = last_run_at or baseline_cutoff
                first_run = last_run_at is None
                min_first_seen = None
            else:
                # A dry run before the first real run: show what that run would post.
                row = self._conn.execute(
                    "SELECT now() - make_interval(secs => %s), now()", (first_window,)
                ).fetchone()
                assert row is not None
                window_start, now = row
                first_run = True
                min_first_seen = window_start
            rows = self._conn.execute(
                f"""
                SELECT {_EDGE_COLUMNS}
                FROM edge e
                WHERE NOT EXISTS (
                    SELECT 1 FROM digest_reported r
                    WHERE r.src_ns = e.src_ns AND r.dst_ns = e.dst_ns AND r.action = e.action
                )
                AND (%(min)s::timestamptz IS NULL OR e.first_seen >= %(min)s)
                {_EDGE_ORDER}
                """,
                {"min": min_first_seen},
            ).fetchall()
        return Selection(_edges(rows), window_start, now, first_run)

    def record_reported(
        self, run_id: uuid.UUID, *, listed: Sequence[EdgeKey], summarised: Sequence[EdgeKey]
    ) -> None:
        """Mark edges reported (those of one message Slack accepted), in one transaction."""
        keys = [(*key, "listed") for key in listed] + [(*key, "summarised") for key in summarised]
        if not keys:
            return
        with _store_errors("cannot record what the digest reported"), self._conn.transaction():
            self._conn.execute(
                """
                INSERT INTO digest_reported (src_ns, dst_ns, action, run_id, how)
                SELECT src_ns, dst_ns, action, %s, how
                FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
                    AS t(src_ns, dst_ns, action, how)
                ON CONFLICT DO NOTHING
                """,
                (
                    run_id,
                    [key[0] for key in keys],
                    [key[1] for key in keys],
                    [key[2] for key in keys],
                    [key[3] for key in keys],
                ),
            )

    def finish_run(self, selection: Selection, run_id: uuid.UUID) -> None:
        """Move the window on: the next run's message says "new since" this run's end."""
        with _store_errors("cannot record the digest's progress"), self._conn.transaction():
            updated = self._conn.execute(
                "UPDATE digest_state SET last_run_at = %s, last_run_id = %s",
                (selection.window_end, run_id),
            ).rowcount
            if updated != 1:
                raise StoreError("the digest_state row is missing: no baseline was recorded")

    def edges_since(self, since: datetime) -> Selection:
        """Edges first seen at or after `since`, or reported by a digest since then.

        The second half catches edges recorded late (an old first_seen) that a
        digest reported inside the window: a re-send must include them too.
        """
        with _store_errors("cannot read edges"), self._conn.transaction():
            rows = self._conn.execute(
                f"""
                SELECT {_EDGE_COLUMNS}, now()
                FROM edge e
                LEFT JOIN digest_reported r
                    ON r.src_ns = e.src_ns AND r.dst_ns = e.dst_ns AND r.action = e.action
                WHERE e.first_seen >= %(since)s
                   OR (r.how <> 'baseline' AND r.reported_at >= %(since)s)
                {_EDGE_ORDER}
                """,
                {"since": since},
            ).fetchall()
            if rows:
                now = rows[0][6]
            else:
                row = self._conn.execute("SELECT now()").fetchone()
                assert row is not None
                now = row[0]
        return Selection(_edges(rows), since, now, first_run=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
