"""The store against real PostgreSQL: migrations, the batched upsert, progress."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aggregator.buffer import Batch, EdgeTotals
from aggregator.store.connection import DatabaseUrlRefused, StoreError, connect
from aggregator.store.edge_queries import EdgeQuery, EdgeReader
from aggregator.store.ingest import IngestStore
from aggregator.store.migrations import _MIGRATION_LOCK_KEY, migrate, migration_files

T0 = 1_800_000_000
Conn = psycopg.Connection[tuple[Any, ...]]


def open_store(url: str) -> IngestStore:
    store = IngestStore.open(url)
    store.migrate()
    return store


def create_hand_made_edge(db: Conn, *, times: str = "timestamptz", count: str = "bigint") -> None:
    """An `edge` table as a user made it before the daemon: no key, columns that allow NULL."""
    db.execute(
        "CREATE TABLE edge (src_ns text, dst_ns text, action text,"
        f" first_seen {times}, last_seen {times}, flow_count {count})"
    )


def edges(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT src_ns, dst_ns, action, extract(epoch FROM first_seen)::bigint,"
        " extract(epoch FROM last_seen)::bigint, flow_count FROM edge ORDER BY 1, 2, 3"
    ).fetchall()


def test_migrations_are_numbered_and_start_with_the_edge_table() -> None:
    files = migration_files()
    assert [version for version, _ in files] == sorted({version for version, _ in files})
    assert files[0][1].name == "0001_edge.sql"


def test_migrations_apply_once_in_order(database_url: str, db: Conn) -> None:
    with connect(database_url, application_name="test") as conn:
        first = migrate(conn)
        second = migrate(conn)
    assert first == [version for version, _ in migration_files()]
    assert second == []
    columns = db.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'edge' AND table_schema = current_schema() ORDER BY ordinal_position"
    ).fetchall()
    assert columns == [
        ("src_ns", "text"),
        ("dst_ns", "text"),
        ("action", "text"),
        ("first_seen", "timestamp with time zone"),
        ("last_seen", "timestamp with time zone"),
        ("flow_count", "bigint"),
    ]


def test_two_processes_migrating_at_once_apply_each_migration_once(
    database_url: str, db: Conn
) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(database_url, application_name="test") as conn:
                barrier.wait()
                migrate(conn)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = db.execute(
        "SELECT version, count(*) FROM edge_aggregator_migration GROUP BY 1"
    ).fetchall()
    assert all(count == 1 for _, count in rows)
    assert len(rows) == len(migration_files())


def test_an_existing_edge_table_keeps_its_rows_and_gains_the_upsert_key(
    database_url: str, db: Conn
) -> None:
    create_hand_made_edge(db)
    db.execute(
        "INSERT INTO edge VALUES ('a', 'b', 'allow', to_timestamp(%s), to_timestamp(%s), 7)",
        (T0, T0 + 15),
    )
    with open_store(database_url) as store:
        store.write(Batch({("a", "b", "allow"): EdgeTotals(T0 + 15, T0 + 30, 1)}, T0 + 30))
    assert edges(db) == [("a", "b", "allow", T0, T0 + 30, 8)]


def test_nulls_in_a_hand_made_edge_table_are_filled_and_then_forbidden(
    database_url: str, db: Conn
) -> None:
    create_hand_made_edge(db)
    db.execute("INSERT INTO edge VALUES ('a', 'b', 'allow', NULL, to_timestamp(%s), NULL)", (T0,))
    with open_store(database_url):
        pass
    assert edges(db) == [("a", "b", "allow", T0, T0, 0)]
    with pytest.raises(psycopg.errors.NotNullViolation):
        db.execute("INSERT INTO edge VALUES ('c', 'd', 'allow', NULL, now(), 1)")


def test_a_hand_made_table_without_time_zones_is_written_and_read_as_utc(
    database_url: str, db: Conn
) -> None:
    db.execute("SET TimeZone = 'Asia/Tokyo'")  # the zone of whoever made the table
    create_hand_made_edge(db, times="timestamp", count="integer")
    db.execute(
        "INSERT INTO edge VALUES ('a', 'b', 'allow', '2027-01-15 08:00', '2027-01-15 08:15', 7)"
    )
    t0 = int(datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp())
    with open_store(database_url) as store:
        store.write(Batch({("a", "b", "allow"): EdgeTotals(t0 + 900, t0 + 1800, 1)}, t0 + 1800))
    assert db.execute("SELECT first_seen::text, last_seen::text FROM edge").fetchall() == [
        ("2027-01-15 08:00:00", "2027-01-15 08:30:00")
    ]
    with EdgeReader.open(database_url) as reader:
        (edge,) = reader.edges(EdgeQuery(first_seen_since=datetime(2027, 1, 15, tzinfo=UTC))).rows
    assert edge.first_seen == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    assert edge.last_seen == datetime(2027, 1, 15, 8, 30, tzinfo=UTC)


def test_a_connection_keeps_the_urls_options_and_runs_in_utc(database_url: str) -> None:
    with connect(database_url, application_name="test") as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        (search_path,) = conn.execute("SHOW search_path").fetchone() or ("",)
    assert search_path.startswith("t_")  # the fixture's schema, set in the URL's options


def test_a_connection_keeps_the_settings_of_pgoptions_and_runs_in_utc(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c TimeZone=Asia/Tokyo -c work_mem=4321kB")
    with connect(postgres_url, application_name="test") as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",)
        assert conn.execute("SHOW work_mem").fetchone() == ("4321kB",)


def test_a_migration_error_says_what_the_server_said_to_fix(database_url: str, db: Conn) -> None:
    create_hand_made_edge(db)
    db.execute("INSERT INTO edge VALUES ('a', 'b', 'allow', now(), now(), 1)")
    db.execute("INSERT INTO edge VALUES ('a', 'b', 'allow', now(), now(), 2)")
    with pytest.raises(StoreError) as caught, IngestStore.open(database_url) as store:
        store.migrate()
    assert "Key (src_ns, dst_ns, action)=(a, b, allow) is duplicated" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_rows_without_a_namespace_or_action_are_moved_aside_not_lost(
    database_url: str, db: Conn
) -> None:
    create_hand_made_edge(db)
    db.execute(
        "INSERT INTO edge VALUES ('a', 'b', 'allow', to_timestamp(%(t)s), to_timestamp(%(t)s), 1),"
        " (NULL, 'b', 'allow', to_timestamp(%(t)s), to_timestamp(%(t)s), 2),"
        " ('a', 'b', NULL, to_timestamp(%(t)s), to_timestamp(%(t)s), 3)",
        {"t": T0},
    )
    with open_store(database_url):
        pass
    assert edges(db) == [("a", "b", "allow", T0, T0, 1)]
    aside = db.execute("SELECT src_ns, action, flow_count FROM edge_without_key ORDER BY 3")
    assert aside.fetchall() == [(None, "allow", 2), ("a", None, 3)]
    with pytest.raises(psycopg.errors.NotNullViolation):
        db.execute("INSERT INTO edge VALUES ('c', NULL, 'allow', now(), now(), 1)")


def test_a_hand_made_partial_key_gets_one_the_upsert_can_use(database_url: str, db: Conn) -> None:
    create_hand_made_edge(db)
    db.execute("CREATE UNIQUE INDEX partial ON edge (src_ns, dst_ns, action) WHERE flow_count > 0")
    with open_store(database_url) as store:
        store.write(Batch({("a", "b", "allow"): EdgeTotals(T0, T0 + 15, 1)}, T0 + 15))
        store.write(Batch({("a", "b", "allow"): EdgeTotals(T0 + 15, T0 + 30, 2)}, T0 + 30))
    assert edges(db) == [("a", "b", "allow", T0, T0 + 30, 3)]


def test_a_failing_migration_applies_nothing(database_url: str, db: Conn, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE broken (;")
    with (
        connect(database_url, application_name="test") as conn,
        pytest.raises(StoreError, match=r"0002_bad\.sql"),
    ):
        migrate(conn, tmp_path)
    assert db.execute("SELECT to_regclass('ok')").fetchone() == (None,)


def test_a_role_that_may_only_read_and_write_starts_on_a_migrated_database(
    database_url: str, db: Conn
) -> None:
    with open_store(database_url):
        pass
    schema = db.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    role = f"writer_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        db.execute(f'GRANT USAGE ON SCHEMA "{schema[0]}" TO {role}')
        db.execute(f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{schema[0]}" TO {role}')
        with open_store(psycopg.conninfo.make_conninfo(database_url, user=role)) as store:
            store.write(Batch({("a", "b", "allow"): EdgeTotals(T0, T0 + 15, 1)}, T0 + 15))
        assert edges(db) == [("a", "b", "allow", T0, T0 + 15, 1)]
    finally:
        db.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema[0]}" FROM {role}')
        db.execute(f'REVOKE ALL ON SCHEMA "{schema[0]}" FROM {role}')
        db.execute(f"DROP ROLE {role}")


def test_a_migration_behind_another_process_migrating_too_long_fails_and_says_so(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_table.sql").write_text("CREATE TABLE t (id int);")
    with (
        psycopg.connect(database_url) as other,
        connect(database_url, application_name="test") as conn,
    ):
        other.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        with pytest.raises(StoreError, match="another process has been applying them for over"):
            migrate(conn, tmp_path, lock_wait=0.2)
        other.commit()
        assert migrate(conn, tmp_path, lock_wait=0.2) == [1]


def test_a_migration_that_waits_on_a_lock_fails_and_says_why(
    database_url: str, db: Conn, tmp_path: Path
) -> None:
    (tmp_path / "0001_table.sql").write_text("CREATE TABLE t (id int);")
    with connect(database_url, application_name="test") as conn:
        migrate(conn, tmp_path)
    (tmp_path / "0002_column.sql").write_text("ALTER TABLE t ADD COLUMN name text;")
    with psycopg.connect(database_url) as reader:
        reader.execute("SELECT * FROM t")  # an open transaction holds a lock on t
        with (
            connect(database_url, application_name="test") as conn,
            pytest.raises(StoreError, match=r"0002_column\.sql failed: .*lock timeout.*another"),
        ):
            migrate(conn, tmp_path, lock_wait=0.2)
    with connect(database_url, application_name="test") as conn:
        assert migrate(conn, tmp_path) == [2]


def test_a_misnamed_migration_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "1_edge.sql").write_text("SELECT 1;")
    with pytest.raises(StoreError, match=r"0001_name\.sql"):
        migration_files(tmp_path)


def test_write_upserts_edges_and_records_progress(database_url: str, db: Conn) -> None:
    with open_store(database_url) as store:
        first = store.write(
            Batch(
                {
                    ("a", "b", "allow"): EdgeTotals(T0, T0 + 15, 2),
                    ("a", "c", "deny"): EdgeTotals(T0, T0 + 15, 1),
                },
                T0 + 15,
            )
        )
        second = store.write(Batch({("a", "b", "allow"): EdgeTotals(T0 + 15, T0 + 30, 3)}, T0 + 30))
        progress = store.load_progress()
    assert (first.upserted, first.created) == (2, 2)
    assert (second.upserted, second.created) == (1, 0)
    assert edges(db) == [("a", "b", "allow", T0, T0 + 30, 5), ("a", "c", "deny", T0, T0 + 15, 1)]
    assert progress == T0 + 30


def test_first_seen_never_moves_later_and_last_seen_never_earlier(
    database_url: str, db: Conn
) -> None:
    with open_store(database_url) as store:
        store.write(Batch({("a", "b", "allow"): EdgeTotals(T0 + 60, T0 + 75, 1)}, T0 + 75))
        store.write(Batch({("a", "b", "allow"): EdgeTotals(T0, T0 + 15, 1)}, T0 + 90))
    assert edges(db) == [("a", "b", "allow", T0, T0 + 75, 2)]


def test_retrying_a_batch_that_was_already_committed_counts_nothing_twice(
    database_url: str, db: Conn
) -> None:
    batch = Batch({("a", "b", "allow"): EdgeTotals(T0, T0 + 15, 4)}, T0 + 15)
    with open_store(database_url) as store:
        store.write(batch)
        retried = store.write(batch)
    assert (retried.upserted, retried.created) == (0, 0)
    assert edges(db) == [("a", "b", "allow", T0, T0 + 15, 4)]


def test_progress_starts_empty_and_is_kept_per_goldmane(database_url: str) -> None:
    with open_store(database_url) as store:
        assert store.load_progress() is None
        store.write(Batch({}, T0 + 15))
    with IngestStore.open(database_url, source="other:7443") as other:
        assert other.load_progress() is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://edges:s3cret@[::1/edges", "<DATABASE_URL not shown>"),
        ("postgresql://edges:s3cret%zz@127.0.0.1/edges", "invalid percent-encoded token"),
        ('postgresql://edges:s3"cret%zz@127.0.0.1/edges', "not followed by two hex digits"),
        ("postgresql://edges:se@s3cret@127.0.0.1:1/edges", "***@127.0.0.1"),
        ("host=127.0.0.1 port=1 password=s3cret sslmode=bogus", 'invalid sslmode value: "bogus"'),
    ],
)
def test_a_url_libpq_cannot_read_is_named_without_the_password(url: str, says: str) -> None:
    with pytest.raises(StoreError) as caught:
        connect(url, application_name="test")
    message = str(caught.value)
    assert says in message
    assert "s3cret" not in message and 's3"cret' not in message


def test_a_setting_libpq_refuses_is_told_apart_from_an_outage() -> None:
    with pytest.raises(DatabaseUrlRefused, match="invalid sslmode value"):
        connect("postgresql://edges@127.0.0.1:1/edges?sslmode=bogus", application_name="test")
    with pytest.raises(StoreError) as caught:
        connect("postgresql://edges@127.0.0.1:1/edges", application_name="test")
    assert not isinstance(caught.value, DatabaseUrlRefused)


def test_an_unreachable_database_is_a_one_line_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        connect("postgresql://edges:s3cret@127.0.0.1:1/edges", application_name="test")
    assert "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)
