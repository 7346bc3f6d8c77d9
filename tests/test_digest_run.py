"""`edges-digest` end to end: real PostgreSQL, a real HTTP server playing Slack, exit codes.

Every edge is reported by exactly one successful run: across failed runs,
late backfills and overlapping runs. Every run's output is checked for the
webhook URL, which must never appear.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aggregator.store.connection import connect
from aggregator.store.digest_queries import DIGEST_LOCK_KEY
from aggregator.store.migrations import migrate
from digest.cli import main
from tests.slack_server import (
    OK,
    SECRET_PATH,
    Answer,
    FakeTime,
    SlackServer,
    hang,
    rate_limited,
    server_error,
    slack_error,
    slack_server,
)

Conn = psycopg.Connection[tuple[Any, ...]]
EdgeKey = tuple[str, str, str]
EDGE_LINE = re.compile(r"^• (?::no_entry: )?(\S+) → (\S+) · \*?(\w+)\*? · ", re.MULTILINE)


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with slack_server() as server:
        yield server


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, slack: SlackServer) -> None:
    """The digest's environment: this test's schema and Slack; the schema migrated."""
    for name in list(os.environ):
        if name.startswith("DIGEST_") or name in ("DRY_RUN", "SLACK_WEBHOOK_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LOG_FORMAT", "text")
    monkeypatch.setenv("DIGEST_HTTP_TIMEOUT_SECONDS", "0.3")
    with connect(database_url, application_name="test") as conn:
        migrate(conn)


def digest(capsys: pytest.CaptureFixture[str], *args: str, time: FakeTime | None = None) -> Result:
    """Run `edges-digest` in-process with paced sleeps recorded, not waited for."""
    fake = time or FakeTime()
    status = main(list(args), sleep=fake.sleep, clock=fake.clock)
    captured = capsys.readouterr()
    assert SECRET_PATH not in captured.out + captured.err
    assert "s3cr3t" not in captured.out + captured.err
    return Result(status, captured.out, captured.err)


def add_edge(
    db: Conn, src: str, dst: str, action: str = "allow", *, age: str = "2 hours", flows: int = 1
) -> None:
    db.execute(
        "INSERT INTO edge (src_ns, dst_ns, action, first_seen, last_seen, flow_count)"
        " VALUES (%s, %s, %s, now() - %s::interval, now(), %s)",
        (src, dst, action, age, flows),
    )


def add_many(db: Conn, count: int, *, age: str = "2 hours") -> None:
    db.execute(
        "INSERT INTO edge (src_ns, dst_ns, action, first_seen, last_seen, flow_count)"
        " SELECT 'team-' || lpad((i %% 40)::text, 2, '0'), 'svc-' || lpad(i::text, 5, '0'),"
        "        CASE WHEN i %% 10 = 0 THEN 'deny' ELSE 'allow' END,"
        "        now() - %s::interval, now(), i"
        " FROM generate_series(1, %s) AS i",
        (age, count),
    )


def posted_edges(bodies: list[Any]) -> list[EdgeKey]:
    """The edges listed in the received messages, in order, one entry per line."""
    found: list[EdgeKey] = []
    for body in bodies:
        for block in body["blocks"]:
            if block["type"] == "section":
                found.extend(m.groups() for m in EDGE_LINE.finditer(block["text"]["text"]))
    return found


def reported(db: Conn) -> dict[EdgeKey, str]:
    rows = db.execute("SELECT src_ns, dst_ns, action, how FROM digest_reported").fetchall()
    return {(src, dst, action): how for src, dst, action, how in rows}


def listed(db: Conn) -> set[EdgeKey]:
    return {key for key, how in reported(db).items() if how == "listed"}


def last_run_at(db: Conn) -> Any:
    row = db.execute("SELECT last_run_at FROM digest_state").fetchone()
    return None if row is None else row[0]


# --- Exactly once --------------------------------------------------------------------------


def test_the_first_run_reports_the_last_24_hours_and_takes_older_edges_as_known(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "legacy", "db", age="30 days")
    add_edge(db, "frontend", "api", flows=3120)
    add_edge(db, "frontend", "dbaas", "deny")

    first = digest(capsys)
    assert first.status == 0, first.err
    assert posted_edges(slack.bodies) == [
        ("frontend", "dbaas", "deny"),
        ("frontend", "api", "allow"),
    ]
    assert "First digest" in slack.bodies[0]["blocks"][1]["elements"][0]["text"]
    assert reported(db) == {
        ("legacy", "db", "allow"): "baseline",
        ("frontend", "api", "allow"): "listed",
        ("frontend", "dbaas", "deny"): "listed",
    }

    second = digest(capsys)
    assert second.status == 0
    assert len(slack.received) == 1  # quiet: nothing new, nothing posted
    assert "no new edges; nothing posted" in second.err


def test_a_failed_run_leaves_its_edges_to_the_next_successful_run(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api")
    slack.script(slack_error("channel_not_found", 404))

    failed = digest(capsys)
    assert failed.status == 3
    assert listed(db) == set()
    assert last_run_at(db) is None

    assert digest(capsys).status == 0
    assert posted_edges(slack.bodies) == [("web", "api", "allow")] * 2  # refused, then accepted
    assert listed(db) == {("web", "api", "allow")}

    assert digest(capsys).status == 0
    assert len(slack.received) == 2


def test_a_run_failing_midway_records_what_slack_took_and_the_next_run_posts_the_rest(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIGEST_MAX_EDGES", "0")
    add_many(db, 600)
    slack.script(OK, slack_error("channel_is_archived", 410))

    failed = digest(capsys)
    assert failed.status == 3
    assert "(message 2 of 3; the 1 before it were posted and recorded)" in failed.err
    first_message = set(posted_edges(slack.bodies[:1]))
    assert first_message and listed(db) == first_message
    assert last_run_at(db) is None

    slack.received.clear()
    assert digest(capsys).status == 0
    keys = posted_edges(slack.bodies)
    assert len(keys) == len(set(keys)) == 600 - len(first_message)
    assert not first_message & set(keys)
    assert len(listed(db)) == 600
    assert last_run_at(db) is not None


def test_a_failed_first_run_keeps_its_window_for_the_next_run(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api", age="20 hours")
    slack.script(server_error(503), then=server_error(503))
    assert digest(capsys).status == 4
    # A day passes before the next run: the edge is now 44 hours old.
    db.execute("UPDATE edge SET first_seen = first_seen - interval '24 hours'")
    slack.script()
    slack.received.clear()
    assert digest(capsys).status == 0
    assert posted_edges(slack.bodies) == [("web", "api", "allow")]


def test_an_edge_recorded_late_is_reported_once_by_the_next_run(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api")
    assert digest(capsys).status == 0
    # The aggregator was down and backfills: the new edge's first_seen is days old.
    add_edge(db, "batch", "warehouse", age="3 days")

    assert digest(capsys).status == 0
    assert posted_edges(slack.bodies[1:]) == [("batch", "warehouse", "allow")]
    assert "recorded late" in slack.bodies[1]["blocks"][2]["text"]["text"]
    assert listed(db) == {("web", "api", "allow"), ("batch", "warehouse", "allow")}

    assert digest(capsys).status == 0
    assert len(slack.received) == 2


def test_an_allowed_edge_that_is_later_denied_is_reported_again_as_denied(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "dbaas")
    assert digest(capsys).status == 0
    add_edge(db, "web", "dbaas", "deny")
    assert digest(capsys).status == 0
    assert posted_edges(slack.bodies) == [("web", "dbaas", "allow"), ("web", "dbaas", "deny")]
    assert ":no_entry:" in slack.bodies[1]["blocks"][2]["text"]["text"]


def _waiting_for_the_digest_lock(db: Conn) -> bool:
    row = db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
        (DIGEST_LOCK_KEY & 0xFFFFFFFF,),
    ).fetchone()
    return row is not None and row[0] > 0


def test_overlapping_runs_report_each_edge_exactly_once(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api")
    gate = threading.Event()
    slack.script(Answer(gate=gate))
    statuses: dict[str, int] = {}

    def run(name: str) -> None:
        statuses[name] = main([], sleep=FakeTime().sleep, clock=FakeTime().clock)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    slack.wait_for_requests(1)  # the first run selected its edges and is posting
    add_edge(db, "web", "cache")  # appears while the first run posts
    second = threading.Thread(target=run, args=("second",))
    second.start()
    for _ in range(1500):  # a bound, so that a bug fails the test instead of hanging it
        if _waiting_for_the_digest_lock(db):
            break
        second.join(0.02)
        assert second.is_alive(), "the second run should wait for the first"
    else:
        gate.set()
        raise AssertionError("the second run never waited for the digest lock")
    gate.set()
    first.join(30)
    second.join(30)

    assert statuses == {"first": 0, "second": 0}
    assert [posted_edges([body]) for body in slack.bodies] == [
        [("web", "api", "allow")],
        [("web", "cache", "allow")],
    ]
    runs = db.execute("SELECT count(DISTINCT run_id) FROM digest_reported").fetchone()
    assert runs == (2,)
    assert SECRET_PATH not in "".join(capsys.readouterr())


def test_a_run_that_cannot_get_the_lock_in_time_exits_6_and_posts_nothing(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIGEST_LOCK_WAIT_SECONDS", "0.2")
    add_edge(db, "web", "api")
    db.execute("SELECT pg_advisory_lock(%s)", (DIGEST_LOCK_KEY,))
    try:
        result = digest(capsys)
    finally:
        db.execute("SELECT pg_advisory_unlock(%s)", (DIGEST_LOCK_KEY,))
    assert result.status == 6
    assert "another edges-digest run has held the digest lock for over 0.2 s" in result.err
    assert slack.received == []
    assert reported(db) == {}


def run_losing_the_database_during_message(
    number: int, slack: SlackServer, db: Conn, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """A run whose database connection dies while Slack holds message `number` (then `ok`)."""
    gate = threading.Event()
    slack.script(*[OK] * (number - 1), Answer(gate=gate))
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(main([], sleep=FakeTime().sleep)))
    thread.start()
    slack.wait_for_requests(number)
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'edges-digest' AND datname = current_database()"
    )
    gate.set()
    thread.join(30)
    (exit_status,) = status
    return exit_status, capsys.readouterr().err


def test_when_the_database_fails_after_slack_accepted_the_run_says_it_will_repeat(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api")
    status, err = run_losing_the_database_during_message(1, slack, db, capsys)
    assert status == 5
    assert "Slack accepted the digest but recording it failed" in err
    assert "the next run will post its 1 edge again" in err
    assert listed(db) == set()


def test_when_recording_a_later_message_fails_the_run_stops_there(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIGEST_MAX_EDGES", "0")
    add_many(db, 600)
    status, err = run_losing_the_database_during_message(2, slack, db, capsys)
    assert status == 5
    assert "Slack accepted message 2 of 3 but recording it failed" in err
    assert len(slack.received) == 2  # not message 3
    first, second = (set(posted_edges([body])) for body in slack.bodies)
    assert listed(db) == first

    slack.received.clear()
    assert digest(capsys).status == 0
    again = posted_edges(slack.bodies)
    assert second <= set(again)  # as the run said: message 2's edges are posted again
    assert not first & set(again)
    assert len(listed(db)) == 600


# --- Failures: exit status, one line, nothing advanced --------------------------------------


@pytest.mark.parametrize(
    ("answers", "status", "message", "requests"),
    [
        ([slack_error("channel_not_found", 404)], 3, "channel_not_found (HTTP 404)", 1),
        ([slack_error("channel_is_archived", 410)], 3, "channel_is_archived (HTTP 410)", 1),
        ([slack_error("invalid_token", 403)], 3, "invalid_token (HTTP 403)", 1),
        ([slack_error("no_service", 404)], 3, "no_service (HTTP 404)", 1),
        ([slack_error("invalid_payload", 400)], 3, "invalid_payload (HTTP 400)", 1),
        ([server_error(500)] * 4, 4, "internal_error (HTTP 500), 4 attempts", 4),
        ([hang()] * 4, 4, "no answer from 127.0.0.1 within 0.3 s, 4 attempts", 4),
    ],
)
def test_a_failure_exits_non_zero_with_one_line_and_advances_nothing(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    answers: list[Answer],
    status: int,
    message: str,
    requests: int,
) -> None:
    add_edge(db, "web", "api")
    slack.script(*answers)
    result = digest(capsys)
    assert result.status == status
    error_lines = [line for line in result.err.splitlines() if line.startswith("edges-digest:")]
    assert len(error_lines) == 1
    assert message in error_lines[0]
    assert "Traceback" not in result.err
    assert len(slack.received) == requests
    assert listed(db) == set()
    assert last_run_at(db) is None


def test_channel_not_found_says_what_to_do(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api")
    slack.script(slack_error("channel_not_found", 404))
    result = digest(capsys)
    assert result.err.splitlines()[-1] == (
        "edges-digest: Slack rejected the digest: channel_not_found (HTTP 404); the webhook's"
        " channel is gone: create a new incoming webhook; not retried; the next run reports"
        " what was not posted"
    )


@pytest.mark.parametrize(
    "answers",
    [
        [rate_limited("3")],
        [server_error(503)],
        [hang()],
    ],
)
def test_a_passing_problem_is_retried_and_the_run_succeeds(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    answers: list[Answer],
) -> None:
    add_edge(db, "web", "api")
    slack.script(*answers)
    fake = FakeTime()
    assert digest(capsys, time=fake).status == 0
    assert len(slack.received) == 2
    assert listed(db) == {("web", "api", "allow")}
    if answers[0].status == 429:
        assert fake.sleeps == [3.0]


def test_an_unreachable_slack_exits_4(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_edge(db, "web", "api")
    slack.stop()
    result = digest(capsys)
    assert result.status == 4
    assert "cannot reach 127.0.0.1" in result.err


def test_an_unreachable_database_exits_5(
    env: None,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://edges:pw@127.0.0.1:1/edges")
    result = digest(capsys)
    assert result.status == 5
    assert result.err.startswith("edges-digest: database: cannot connect to PostgreSQL")
    assert slack.received == []


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://edges:s3cret@127.0.0.1:1/edges?sslmode=bogus", 'sslmode value: "bogus"'),
        ("postgresql://edges:s3cret%zz@127.0.0.1:1/edges", "DATABASE_URL is malformed"),
    ],
)
def test_a_database_url_libpq_refuses_is_a_bad_setting_exit_2(
    env: None,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    says: str,
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    result = digest(capsys)
    assert result.status == 2
    assert result.err.startswith("edges-digest: DATABASE_URL")
    assert says in result.err
    assert len(result.err.splitlines()) == 1
    assert "s3cret" not in result.err
    assert slack.received == []


def test_no_webhook_and_no_dry_run_exits_2_saying_so(
    env: None,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL")
    result = digest(capsys)
    assert result.status == 2
    assert result.err == (
        "edges-digest: SLACK_WEBHOOK_URL is not set: set it to the Slack incoming webhook,"
        " or use --dry-run (DRY_RUN=1) to print the digest without posting\n"
    )


def test_a_plain_http_webhook_elsewhere_exits_2_without_showing_it(
    env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"http://hooks.example.com{SECRET_PATH}")
    result = digest(capsys)
    assert result.status == 2
    assert "SLACK_WEBHOOK_URL must be an https:// URL" in result.err


def test_the_webhook_url_never_appears_in_json_logs_either(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    add_edge(db, "web", "api")
    slack.script(server_error(502), rate_limited("1"), slack_error("no_team", 404))
    result = digest(capsys)  # asserts the secret is absent from stdout and stderr
    assert result.status == 3
    assert '"msg": "Slack did not accept the message; retrying"' in result.err
    assert slack.received[0].path == SECRET_PATH  # the secret was really used


# --- Dry run, --since, --always ---------------------------------------------------------------


def test_a_dry_run_prints_preview_and_json_and_changes_nothing(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "legacy", "db", age="30 days")
    add_edge(db, "frontend", "dbaas", "deny")
    result = digest(capsys, "--dry-run")
    assert result.status == 0
    assert "dry run: 1 message would be posted; nothing is posted or recorded." in result.out
    assert "# 1 new edge · " in result.out
    assert "• :no_entry: frontend → dbaas · *deny* · 1 flow" in result.out
    assert '"type": "header"' in result.out
    assert "legacy" not in result.out  # the first real run takes it as known
    assert slack.received == []
    assert reported(db) == {}
    assert db.execute("SELECT count(*) FROM digest_state").fetchone() == (0,)


def test_dry_run_from_the_environment_needs_no_webhook(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL")
    monkeypatch.setenv("DRY_RUN", "1")
    add_edge(db, "web", "api")
    result = digest(capsys)
    assert result.status == 0
    assert "web → api" in result.out
    assert slack.received == []


def test_a_dry_run_with_nothing_new_says_so(
    env: None, db: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    result = digest(capsys, "--dry-run")
    assert result.status == 0
    assert result.out.startswith("dry run: no new edges: a real run would post nothing")


def test_since_re_sends_a_window_without_touching_progress(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_edge(db, "web", "api", age="30 hours")
    add_edge(db, "old", "thing", age="30 days")
    add_edge(db, "batch", "s3", age="3 hours")
    assert digest(capsys).status == 0  # reports batch → s3; the others are baseline
    db.execute(
        "UPDATE digest_reported SET how = 'listed', reported_at = now() - interval '1 hour'"
        " WHERE src_ns = 'web'"
    )  # as if a digest had reported web → api an hour ago, after a late backfill
    before = (reported(db), last_run_at(db))
    add_edge(db, "new", "since-last-run")

    result = digest(capsys, "--since", "12h")
    assert result.status == 0
    assert set(posted_edges(slack.bodies[1:])) == {
        ("web", "api", "allow"),
        ("batch", "s3", "allow"),
        ("new", "since-last-run", "allow"),
    }
    assert "Re-sent on request" in slack.bodies[1]["blocks"][1]["elements"][0]["text"]
    assert (reported(db), last_run_at(db)) == before

    assert digest(capsys).status == 0  # the regular run still reports the new edge, once
    assert posted_edges(slack.bodies[2:]) == [("new", "since-last-run", "allow")]


def test_a_bad_since_exits_2(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    result = digest(capsys, "--since", "last tuesday")
    assert result.status == 2
    assert "--since: 'last tuesday' is neither a duration" in result.err


def test_always_posts_even_when_nothing_is_new(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert digest(capsys, "--always").status == 0
    (body,) = slack.bodies
    assert body["blocks"][0]["text"]["text"].startswith("No new edges · ")


# --- Size ------------------------------------------------------------------------------------


def test_five_thousand_new_edges_are_numbered_paced_and_each_posted_once(
    env: None,
    db: Conn,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIGEST_MAX_EDGES", "0")
    add_many(db, 5000)
    fake = FakeTime()
    assert digest(capsys, time=fake).status == 0
    total = len(slack.received)
    assert total > 10
    assert [body["blocks"][0]["text"]["text"][-7:].strip(" ()") for body in slack.bodies] == [
        f"{n}/{total}" for n in range(1, total + 1)
    ]
    assert fake.sleeps == [1.0] * (total - 1)
    keys = posted_edges(slack.bodies)
    assert Counter(keys).most_common(1)[0][1] == 1
    assert len(keys) == 5000
    assert listed(db) == set(keys)


def test_past_the_cap_edges_are_counted_and_recorded_as_summarised(
    env: None, db: Conn, slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    add_many(db, 5000)
    assert digest(capsys).status == 0
    keys = posted_edges(slack.bodies)
    assert len(keys) == 500
    last_section = slack.bodies[-1]["blocks"][-1]["text"]["text"]
    assert last_section == "…and 4,500 more new edges not listed (4,500 allow)."
    assert Counter(reported(db).values()) == {"listed": 500, "summarised": 4500}
    assert digest(capsys).status == 0
    assert len(slack.received) == len(slack.bodies)  # nothing more posted


# --- The installed command --------------------------------------------------------------------


def run_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digest.cli", *args],
        env={"PATH": os.environ.get("PATH", ""), "LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_without_a_webhook_exits_2_with_one_line() -> None:
    result = run_command({"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "SLACK_WEBHOOK_URL is not set" in result.stderr


def test_an_embedded_database_that_cannot_be_made_is_a_bad_setting(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    result = run_command({"XDG_DATA_HOME": str(not_a_directory / "data")}, "--dry-run")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"edges-digest: cannot create {not_a_directory}")
    assert "set DATABASE_URL" in line


@pytest.mark.parametrize("edges", [3000, 1])
def test_a_dry_run_whose_reader_leaves_early_exits_quietly(
    database_url: str, db: Conn, edges: int
) -> None:
    with connect(database_url, application_name="test") as conn:
        migrate(conn)
    # 3,000: a preview far longer than a pipe holds; 1: one that only the final flush writes.
    add_many(db, edges)
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "digest.cli", "--dry-run"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        assert run.stdout is not None and run.stderr is not None
        run.stdout.close()  # `edges-digest --dry-run | true`
        err = run.stderr.read().decode()
    assert run.returncode == 0, err
    assert "rror" not in err


def test_the_command_posts_and_never_prints_the_webhook_url(
    database_url: str, db: Conn, slack: SlackServer
) -> None:
    with connect(database_url, application_name="test") as conn:
        migrate(conn)
    add_edge(db, "web", "api")
    result = run_command({"DATABASE_URL": database_url, "SLACK_WEBHOOK_URL": slack.url})
    assert result.returncode == 0, result.stderr
    assert posted_edges(slack.bodies) == [("web", "api", "allow")]
    assert SECRET_PATH not in result.stdout + result.stderr


def test_help_documents_the_exit_codes() -> None:
    result = run_command({}, "--help")
    assert result.returncode == 0
    for line in ("3  Slack refused", "4  Slack unreachable", "5  database error", "6  another"):
        assert line in result.stdout
