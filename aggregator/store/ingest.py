"""The daemon's writes: the batched edge upsert and ingest progress, one transaction per flush."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Self

from aggregator.buffer import Batch
from aggregator.store.connection import Connection, connect
from aggregator.store.migrations import migrate


@dataclass(frozen=True)
class FlushResult:
    upserted: int
    created: int


# The progress row's key. One database holds one cluster's trail, so it is a
# constant: respelling GOLDMANE_HOST must not look like a first start.
DEFAULT_SOURCE = "goldmane"


class IngestStore:
    """The daemon's writes: one batched upsert plus progress, in one transaction per flush."""

    def __init__(self, conn: Connection, *, source: str = DEFAULT_SOURCE) -> None:
        self._conn = conn
        self._source = source

    @classmethod
    def open(cls, url: str, *, source: str = DEFAULT_SOURCE) -> Self:
        conn = connect(url, application_name="edge-aggregator")
        # If this connection dies mid-flush, its server side must not keep holding
        # the progress row's lock (and so block the retry) for hours.
        conn.execute("SET idle_in_transaction_session_timeout = '60s'")
        conn.commit()
        return cls(conn, source=source)

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
        """Upsert a batch's edges and advance progress atomically: a constant four statements.

        The edge arrays go in binary format: psycopg writes them in a third of the time of
        text, and the flusher shares its core with the receive loop.
        """
        rows = sorted(batch.edges.items())  # a fixed lock order: concurrent writers cannot deadlock
        result = FlushResult(0, 0)
        with self._conn.transaction():
            # A flush that cannot get its locks fails and is retried, rather than hanging.
            self._conn.execute(
                "SELECT set_config('lock_timeout', '10s', true),"
                " set_config('statement_timeout', '120s', true)"
            )
            if batch.sealed_until is not None and self._already_written(batch.sealed_until):
                return result
            if rows:
                counts = self._conn.execute(
                    """
                    WITH incoming AS (
                        SELECT * FROM unnest(%b::text[], %b::text[], %b::text[],
                                             %b::bigint[], %b::bigint[], %b::bigint[])
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
