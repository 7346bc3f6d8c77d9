"""The `edges` CLI against real PostgreSQL: every flag, every format, every error's exit code."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.conninfo
import pytest
import yaml

from aggregator.edges_cli import (
    EXIT_NO_EDGE_TABLE,
    EXIT_OK,
    EXIT_QUERY_FAILED,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    EXIT_UNEXPECTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)
from aggregator.edges_output import edges_table, human_time, iso_time, to_mermaid, to_yaml
from aggregator.store.connection import connect
from aggregator.store.edge_queries import Edge, EdgeQuery, EdgeReader, edges_sql
from aggregator.store.migrations import migrate
from aggregator.timespec import parse_time_spec

Conn = psycopg.Connection[tuple[Any, ...]]
NOW = datetime.now(UTC).replace(microsecond=0)
ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

# (src, dst, action, first_seen age, last_seen age, flow_count): a small cluster's trail.
TRAIL = [
    ("frontend", "api", "allow", timedelta(days=10), timedelta(minutes=1), 3120),
    ("frontend", "dbaas", "deny", timedelta(hours=2), timedelta(hours=1), 1),
    ("api", "dbaas", "allow", timedelta(days=20), timedelta(minutes=5), 900),
    ("batch", "dbaas", "allow", timedelta(days=40), timedelta(days=35), 12),
    ("monitoring", "api", "pass", timedelta(days=3), timedelta(minutes=2), 40),
    ("monitoring", "frontend", "unspecified", timedelta(minutes=30), timedelta(minutes=20), 2),
    ("dbaas", "kube-system", "allow", timedelta(days=30), timedelta(minutes=1), 500),
    ("dbaas", "frontend", "deny", timedelta(days=5), timedelta(days=4), 7),
]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def pairs(self) -> list[tuple[str, str, str]]:
        return [(row["src_ns"], row["dst_ns"], row["action"]) for row in self.json()]


def insert(db: Conn, rows: list[tuple[str, str, str, timedelta, timedelta, int]]) -> None:
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO edge VALUES (%s, %s, %s, %s, %s, %s)",
            [(s, d, a, NOW - first, NOW - last, n) for s, d, a, first, last, n in rows],
        )


@pytest.fixture
def schema(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's schema, migrated, with DATABASE_URL pointing at it."""
    with connect(database_url, application_name="test") as conn:
        migrate(conn)
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


@pytest.fixture
def trail(schema: str, db: Conn) -> Conn:
    insert(db, TRAIL)
    return db


@pytest.fixture
def edges(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    def run(*argv: str) -> Run:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    yield run


def expected(
    keep: Any, order: Any = lambda row: (-(NOW - row[3]).timestamp(),)
) -> list[tuple[str, str, str]]:
    """The TRAIL rows `keep` accepts, newest first_seen first unless told otherwise."""
    rows = sorted((row for row in TRAIL if keep(row)), key=order)
    return [(s, d, a) for s, d, a, *_ in rows]


# ---------------------------------------------------------------- each flag alone


def test_no_flags_lists_every_edge_newest_first_seen_first(trail: Conn, edges: Any) -> None:
    run = edges("--json")
    assert run.code == EXIT_OK
    assert run.pairs() == expected(lambda row: True)


def test_ns_matches_either_direction(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "dbaas", "--json")
    assert run.pairs() == expected(lambda row: "dbaas" in row[:2])


def test_src_matches_the_source_only(trail: Conn, edges: Any) -> None:
    assert edges("--src", "dbaas", "--json").pairs() == expected(lambda row: row[0] == "dbaas")


def test_dst_matches_the_destination_only(trail: Conn, edges: Any) -> None:
    assert edges("--dst", "dbaas", "--json").pairs() == expected(lambda row: row[1] == "dbaas")


def test_peers_of_gives_one_row_per_peer_and_action_ordered_by_peer(
    trail: Conn, edges: Any
) -> None:
    run = edges("--peers-of", "dbaas", "--json")
    assert run.code == EXIT_OK
    rows = run.json()
    assert [(r["peer"], r["action"], r["direction"]) for r in rows] == [
        ("api", "allow", "in"),
        ("batch", "allow", "in"),
        ("frontend", "deny", "both"),
        ("kube-system", "allow", "out"),
    ]
    frontend = rows[2]
    # Both directions of frontend<->dbaas deny: earliest first_seen, latest last_seen, summed flows.
    assert frontend["flow_count"] == 1 + 7
    assert frontend["first_seen"] == iso_time(NOW - timedelta(days=5))
    assert frontend["last_seen"] == iso_time(NOW - timedelta(hours=1))


def test_new_since_a_duration_keeps_edges_first_seen_since_then(trail: Conn, edges: Any) -> None:
    run = edges("--new-since", "24h", "--json")
    assert run.pairs() == expected(lambda row: row[3] <= timedelta(hours=24))
    assert run.pairs() == [("monitoring", "frontend", "unspecified"), ("frontend", "dbaas", "deny")]


@pytest.mark.parametrize("unit, amount", [("s", 5400), ("m", 90), ("h", 4), ("d", 4)])
def test_new_since_accepts_seconds_minutes_hours_and_days(
    trail: Conn, edges: Any, unit: str, amount: int
) -> None:
    window = timedelta(
        **{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: amount}
    )
    run = edges("--new-since", f"{amount}{unit}", "--json")
    assert run.pairs() == expected(lambda row: row[3] <= window)


def test_new_since_a_date_and_a_date_with_time(trail: Conn, edges: Any) -> None:
    cut = NOW - timedelta(days=6)
    by_day = edges("--new-since", cut.strftime("%Y-%m-%d"), "--json").pairs()
    midnight = cut.replace(hour=0, minute=0, second=0)
    assert by_day == expected(lambda row: NOW - row[3] >= midnight)
    by_minute = edges("--new-since", cut.strftime("%Y-%m-%d %H:%M"), "--json").pairs()
    assert by_minute == expected(lambda row: NOW - row[3] >= cut.replace(second=0))
    by_second = edges(f"--new-since={cut:%Y-%m-%d %H:%M:%S}", "--json").pairs()
    assert by_second == expected(lambda row: NOW - row[3] >= cut)


def test_seen_since_keeps_edges_last_seen_since_then(trail: Conn, edges: Any) -> None:
    run = edges("--seen-since", "10m", "--json")
    assert run.pairs() == expected(lambda row: row[4] <= timedelta(minutes=10))


def test_stale_keeps_edges_not_seen_since_then(trail: Conn, edges: Any) -> None:
    run = edges("--stale", "3d", "--json")
    assert run.pairs() == [("dbaas", "frontend", "deny"), ("batch", "dbaas", "allow")]


def test_denied_keeps_deny_only(trail: Conn, edges: Any) -> None:
    assert edges("--denied", "--json").pairs() == expected(lambda row: row[2] == "deny")


@pytest.mark.parametrize("action", ["allow", "deny", "pass", "unspecified"])
def test_action_keeps_that_verdict_only(trail: Conn, edges: Any, action: str) -> None:
    run = edges("--action", action, "--json")
    assert run.pairs() == expected(lambda row: row[2] == action)
    assert run.pairs()


def test_denied_with_action_deny_is_the_same_question(trail: Conn, edges: Any) -> None:
    assert (
        edges("--denied", "--action", "deny", "--json").pairs()
        == edges("--denied", "--json").pairs()
    )


def test_limit_cuts_the_list_and_says_so_on_stderr(trail: Conn, edges: Any) -> None:
    run = edges("--limit", "2", "--json")
    assert run.pairs() == expected(lambda row: True)[:2]
    assert "showing the first 2 rows" in run.err


def test_limit_that_cuts_nothing_says_nothing(trail: Conn, edges: Any) -> None:
    run = edges("--limit", str(len(TRAIL)), "--json")
    assert len(run.json()) == len(TRAIL)
    assert run.err == ""


def test_the_default_limit_is_200(schema: str, db: Conn, edges: Any) -> None:
    db.execute(
        "INSERT INTO edge SELECT 'a', 'b' || i, 'allow', now() - i * interval '1 s', now(), 1"
        " FROM generate_series(1, 250) AS i"
    )
    run = edges("--json")
    assert len(run.json()) == 200
    assert run.json()[0]["dst_ns"] == "b1"


@pytest.mark.parametrize(
    "key, order",
    [
        ("first_seen", lambda row: (row[3], row[0], row[1], row[2])),
        ("last_seen", lambda row: (row[4], row[0], row[1], row[2])),
        ("flow_count", lambda row: (-row[5], row[0], row[1], row[2])),
        ("src", lambda row: (row[0], row[1], row[2])),
        ("dst", lambda row: (row[1], row[0], row[2])),
    ],
)
def test_sort_orders_by_the_key_asked(trail: Conn, edges: Any, key: str, order: Any) -> None:
    assert edges("--sort", key, "--json").pairs() == expected(lambda row: True, order)


def test_peers_of_can_sort_by_flow_count(trail: Conn, edges: Any) -> None:
    rows = edges("--peers-of", "dbaas", "--sort", "flow_count", "--json").json()
    assert [r["peer"] for r in rows] == ["api", "kube-system", "batch", "frontend"]


# ---------------------------------------------------------------- flags combined


def test_ns_denied_and_new_since_combine_with_and(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "dbaas", "--denied", "--new-since", "24h", "--json")
    assert run.pairs() == [("frontend", "dbaas", "deny")]


def test_src_and_dst_pick_one_pair(trail: Conn, edges: Any) -> None:
    run = edges("--src", "frontend", "--dst", "dbaas", "--json")
    assert run.pairs() == [("frontend", "dbaas", "deny")]


def test_ns_with_src_means_src_and_either_end(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "api", "--src", "monitoring", "--json")
    assert run.pairs() == [("monitoring", "api", "pass")]


def test_peers_of_with_denied_keeps_denied_peers(trail: Conn, edges: Any) -> None:
    rows = edges("--peers-of", "dbaas", "--denied", "--json").json()
    assert [(r["peer"], r["action"]) for r in rows] == [("frontend", "deny")]


def test_peers_of_with_new_since_counts_only_new_edges(trail: Conn, edges: Any) -> None:
    rows = edges("--peers-of", "dbaas", "--new-since", "24h", "--json").json()
    assert [(r["peer"], r["direction"], r["flow_count"]) for r in rows] == [("frontend", "in", 1)]


def test_stale_and_seen_since_make_a_window(trail: Conn, edges: Any) -> None:
    run = edges("--seen-since", "5d", "--stale", "1d", "--json")
    assert run.pairs() == [("dbaas", "frontend", "deny")]


def test_action_src_sort_and_limit_combine(trail: Conn, edges: Any) -> None:
    run = edges("--action", "allow", "--dst", "dbaas", "--sort", "flow_count", "--limit", "1")
    assert run.code == EXIT_OK
    assert run.out.splitlines()[1].split()[:3] == ["api", "dbaas", "allow"]


def test_flag_equals_value_works_like_flag_space_value(trail: Conn, edges: Any) -> None:
    spaced = edges("--ns", "dbaas", "--new-since", "30d", "--limit", "3", "--json").out
    joined = edges("--ns=dbaas", "--new-since=30d", "--limit=3", "--json").out
    assert spaced == joined
    assert len(json.loads(joined)) == 3


def test_json_is_short_for_format_json(trail: Conn, edges: Any) -> None:
    assert edges("--json").out == edges("--format", "json").out


def test_a_hand_made_trail_counting_in_numeric_gives_json_numbers(
    database_url: str, db: Conn, edges: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute(
        "CREATE TABLE edge (src_ns text, dst_ns text, action text,"
        " first_seen timestamptz, last_seen timestamptz, flow_count numeric)"
    )
    insert(db, [("web", "api", "allow", timedelta(hours=2), timedelta(hours=1), 12)])
    monkeypatch.setenv("DATABASE_URL", database_url)
    run = edges("--json")
    assert run.code == 0, run.err
    assert [row["flow_count"] for row in run.json()] == [12]


# ---------------------------------------------------------------- output formats


def test_table_has_aligned_columns_and_stable_times_off_a_terminal(trail: Conn, edges: Any) -> None:
    run = edges("--src", "frontend")
    lines = run.out.splitlines()
    assert lines[0].split() == [
        "SRC_NS",
        "DST_NS",
        "ACTION",
        "FIRST_SEEN",
        "LAST_SEEN",
        "FLOW_COUNT",
    ]
    assert len(lines) == 3
    # Every column but the count starts at the same offset; counts are right-aligned.
    starts = {tuple(m.start() for m in re.finditer(r"\S+", line))[:-1] for line in lines}
    assert len(starts) == 1
    assert len({len(line) for line in lines}) == 1
    assert lines[1].split()[:3] == ["frontend", "dbaas", "deny"]
    assert ISO.fullmatch(lines[1].split()[3])


def test_table_on_a_terminal_shows_short_human_times() -> None:
    moment = datetime(2026, 6, 28, 8, 0, 42, tzinfo=UTC)
    text = edges_table([Edge("a", "b", "allow", moment, moment, 12)], human=True)
    assert "2026-06-28 08:00Z" in text
    assert human_time(moment) == "2026-06-28 08:00Z"
    assert iso_time(moment) == "2026-06-28T08:00:42Z"


def test_no_rows_is_not_an_error_and_the_table_says_so(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "nobody")
    assert (run.code, run.out) == (EXIT_OK, "no edges match\n")
    assert edges("--peers-of", "nobody").out == "no edges match\n"


def test_json_is_an_empty_array_when_nothing_matches(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "nobody", "--json")
    assert (run.code, run.json()) == (EXIT_OK, [])


def test_json_rows_carry_the_six_columns_with_iso_times(trail: Conn, edges: Any) -> None:
    row = edges("--src", "batch", "--json").json()[0]
    assert row == {
        "src_ns": "batch",
        "dst_ns": "dbaas",
        "action": "allow",
        "first_seen": iso_time(NOW - timedelta(days=40)),
        "last_seen": iso_time(NOW - timedelta(days=35)),
        "flow_count": 12,
    }


def test_csv_parses_with_a_header_and_iso_times(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "dbaas", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(run.out)))
    assert [(r["src_ns"], r["dst_ns"], r["action"]) for r in rows] == expected(
        lambda row: "dbaas" in row[:2]
    )
    assert all(ISO.fullmatch(r["first_seen"]) and ISO.fullmatch(r["last_seen"]) for r in rows)
    assert all(r["flow_count"].isdigit() for r in rows)


def test_csv_of_peers_and_of_nothing(trail: Conn, edges: Any) -> None:
    peers = list(csv.DictReader(io.StringIO(edges("--peers-of", "api", "--format=csv").out)))
    assert [(p["peer"], p["action"], p["direction"]) for p in peers] == [
        ("dbaas", "allow", "out"),
        ("frontend", "allow", "in"),
        ("monitoring", "pass", "in"),
    ]
    empty = edges("--ns", "nobody", "--format", "csv").out
    assert empty == "src_ns,dst_ns,action,first_seen,last_seen,flow_count\n"


DOT_EDGE = re.compile(
    r'  "(?P<src>[^"]+)" -> "(?P<dst>[^"]+)" \[label="(?P<action>[a-z]+) (?P<count>\d+)",'
    r" penwidth=(?P<pen>\d+(\.\d+)?), (?P<style>[^\]]+)\];"
)


def test_dot_is_a_digraph_with_one_styled_arrow_per_edge(trail: Conn, edges: Any) -> None:
    run = edges("--ns", "dbaas", "--format", "dot")
    lines = run.out.splitlines()
    assert lines[0] == "digraph edges {" and lines[-1] == "}"
    assert run.out.count("{") == run.out.count("}") == 1
    body = [line for line in lines[1:-1] if "->" in line]
    assert all(line.rstrip().endswith(";") for line in lines[1:-1])
    matches = [DOT_EDGE.fullmatch(line) for line in body]
    assert all(matches), body
    arrows = {(m["src"], m["dst"], m["action"]): m for m in matches if m}
    assert set(arrows) == set(expected(lambda row: "dbaas" in row[:2]))
    deny = arrows[("frontend", "dbaas", "deny")]
    assert "style=dashed" in deny["style"] and "c62828" in deny["style"]
    allow = arrows[("api", "dbaas", "allow")]
    assert "dashed" not in allow["style"] and allow["count"] == "900"
    assert float(allow["pen"]) > float(deny["pen"])


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_graphviz_renders_the_dot_output(trail: Conn, edges: Any) -> None:
    dot = edges("--format", "dot").out
    rendered = subprocess.run(
        ["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True
    )
    assert "<svg" in rendered.stdout


MERMAID_NODE = re.compile(r'    (?P<id>n\d+)\["(?P<name>[^"]+)"\]')
MERMAID_EDGE = re.compile(
    r'    (?P<src>n\d+) (?P<arrow>-->|-\.->)\|"(?P<action>[a-z]+) (?P<count>\d+)"\| (?P<dst>n\d+)'
)
MERMAID_STYLE = re.compile(
    r"    linkStyle (?P<indexes>\d+(,\d+)*) stroke:(?P<color>#[0-9a-f]{6}),.*"
)


def test_mermaid_is_a_flowchart_with_nodes_arrows_and_deny_styled(trail: Conn, edges: Any) -> None:
    lines = edges("--format", "mermaid").out.splitlines()
    assert lines[0] == "flowchart LR"
    nodes: dict[str, str] = {}
    arrows: list[re.Match[str]] = []
    styles: dict[str, set[int]] = {}
    for line in lines[1:]:
        if node := MERMAID_NODE.fullmatch(line):
            nodes[node["id"]] = node["name"]
        elif arrow := MERMAID_EDGE.fullmatch(line):
            arrows.append(arrow)
        elif style := MERMAID_STYLE.fullmatch(line):
            styles[style["color"]] = {int(i) for i in style["indexes"].split(",")}
        else:
            pytest.fail(f"not a node, arrow or linkStyle line: {line!r}")
    assert all(a["src"] in nodes and a["dst"] in nodes for a in arrows)
    drawn = [(nodes[a["src"]], nodes[a["dst"]], a["action"]) for a in arrows]
    assert drawn == expected(lambda row: True)
    denied = {i for i, a in enumerate(arrows) if a["action"] == "deny"}
    assert styles["#c62828"] == denied
    assert all(arrows[i]["arrow"] == "-.->" for i in denied)
    assert all(a["arrow"] == "-->" for a in arrows if a["action"] == "allow")


def test_mermaid_node_ids_are_safe_for_keyword_names() -> None:
    now = datetime(2026, 6, 28, tzinfo=UTC)
    text = to_mermaid([Edge("end", "graph", "allow", now, now, 1)])
    assert text.splitlines()[1:] == ['    n0["end"]', '    n1["graph"]', '    n0 -->|"allow 1"| n1']


def test_empty_graphs_are_still_valid(trail: Conn, edges: Any) -> None:
    assert edges("--ns", "nobody", "--format", "dot").out.splitlines()[0] == "digraph edges {"
    assert edges("--ns", "nobody", "--format", "mermaid").out == "flowchart LR\n"


def test_peers_of_cannot_be_drawn_and_says_what_to_use(trail: Conn, edges: Any) -> None:
    run = edges("--peers-of", "dbaas", "--format", "dot")
    assert run.code == EXIT_USAGE
    assert "--ns dbaas --format dot" in run.err


# ---------------------------------------------------------------- allowlists


def allowlist_trail(db: Conn, observed: timedelta) -> None:
    insert(
        db,
        [
            ("frontend", "api", "allow", observed, timedelta(minutes=1), 3120),
            ("frontend", "search", "allow", timedelta(days=2), timedelta(days=1), 8),
            ("frontend", "dbaas", "deny", timedelta(hours=2), timedelta(hours=1), 1),
            ("frontend", "metrics", "pass", timedelta(days=1), timedelta(hours=1), 4),
            ("api", "frontend", "allow", timedelta(days=1), timedelta(hours=1), 5),
        ],
    )


def test_allowlist_lists_allowed_destinations_only(schema: str, db: Conn, edges: Any) -> None:
    allowlist_trail(db, timedelta(days=10))
    run = edges("allowlist", "--ns", "frontend")
    assert run.code == EXIT_OK
    assert [line.split()[0] for line in run.out.splitlines()] == ["DST_NS", "api", "search"]
    assert "(10 days)" in run.err and "INCOMPLETE" not in run.err


def test_allowlist_json_reports_observation_and_completeness(
    schema: str, db: Conn, edges: Any
) -> None:
    allowlist_trail(db, timedelta(days=10))
    document = edges("allowlist", "--ns=frontend", "--json").json()
    assert document["namespace"] == "frontend"
    assert document["observed_days"] == 10 and document["complete"] is True
    assert document["observing_since"] == iso_time(NOW - timedelta(days=10))
    assert [d["namespace"] for d in document["destinations"]] == ["api", "search"]


def test_allowlist_seen_since_drops_destinations_gone_quiet(
    schema: str, db: Conn, edges: Any
) -> None:
    allowlist_trail(db, timedelta(days=10))
    document = edges("allowlist", "--ns", "frontend", "--seen-since", "12h", "--json").json()
    assert [d["namespace"] for d in document["destinations"]] == ["api"]


def network_policy_of(run: Run) -> dict[str, Any]:
    assert run.code == EXIT_OK, run.err
    document = yaml.safe_load(run.out)
    assert isinstance(document, dict)
    return document


def test_networkpolicy_is_valid_yaml_with_egress_per_destination_and_dns(
    schema: str, db: Conn, edges: Any
) -> None:
    allowlist_trail(db, timedelta(days=10))
    run = edges("allowlist", "--ns", "frontend", "--format", "networkpolicy")
    policy = network_policy_of(run)
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"] == {"name": "egress-allowlist", "namespace": "frontend"}
    spec = policy["spec"]
    assert spec["podSelector"] == {}
    assert spec["policyTypes"] == ["Egress"]
    *namespaces, dns = spec["egress"]
    assert namespaces == [
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}]}
        for name in ("api", "search")
    ]
    assert dns == {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    comments = [line for line in run.out.splitlines() if line.startswith("#")]
    assert any(
        f"observing since {iso_time(NOW - timedelta(days=10))} (10 days)" in c for c in comments
    )
    assert not any("INCOMPLETE" in c for c in comments)


def test_networkpolicy_from_less_than_a_week_is_flagged_incomplete(
    schema: str, db: Conn, edges: Any
) -> None:
    allowlist_trail(db, timedelta(days=6, hours=23))
    run = edges("allowlist", "--ns", "frontend", "--format", "networkpolicy")
    network_policy_of(run)
    assert "# INCOMPLETE: fewer than 7 days observed" in run.out
    assert "(6 days)" in run.out


def test_networkpolicy_without_observed_egress_still_allows_dns(
    schema: str, db: Conn, edges: Any
) -> None:
    allowlist_trail(db, timedelta(days=10))
    run = edges("allowlist", "--ns", "search", "--format", "networkpolicy")
    policy = network_policy_of(run)
    assert len(policy["spec"]["egress"]) == 1
    assert policy["spec"]["egress"][0]["ports"][0]["port"] == 53
    assert "No allowed egress" in run.out


def test_networkpolicy_of_an_empty_trail_is_incomplete(schema: str, edges: Any) -> None:
    run = edges("allowlist", "--ns", "frontend", "--format", "networkpolicy")
    network_policy_of(run)
    assert "INCOMPLETE" in run.out
    assert "does not appear in the trail" in run.err


def test_allowlist_table_says_when_nothing_is_allowed(schema: str, db: Conn, edges: Any) -> None:
    allowlist_trail(db, timedelta(days=10))
    run = edges("allowlist", "--ns", "dbaas")
    assert (run.code, run.out) == (EXIT_OK, "no allowed egress observed from dbaas\n")


@pytest.mark.parametrize("name", ["yes", "no", "on", "off", "y", "n", "true", "null", "123"])
def test_yaml_keeps_namespace_names_that_look_like_other_types_as_strings(name: str) -> None:
    document = {"metadata": {"namespace": name}, "list": [name, {"k": name}], "empty": {}}
    assert yaml.safe_load(to_yaml(document)) == document


@pytest.mark.parametrize("name", ["0x1f", "1e3", "0o17", "12-30", "2026-01-01"])
def test_yaml_keeps_number_and_date_lookalikes_as_strings(name: str) -> None:
    assert yaml.safe_load(to_yaml({"ns": name})) == {"ns": name}


def test_yaml_emits_nested_lists_and_empty_collections() -> None:
    document = {"a": [{"b": [1, 2], "c": {"d": "e"}}, "f"], "g": [], "h": {}, "i": True}
    assert yaml.safe_load(to_yaml(document)) == document


# ---------------------------------------------------------------- time specs


@pytest.mark.parametrize(
    "spec, since",
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-06-28", datetime(2026, 6, 28, tzinfo=UTC)),
        ("2026-06-28 08:15", datetime(2026, 6, 28, 8, 15, tzinfo=UTC)),
        ("2026-06-28 08:15:30", datetime(2026, 6, 28, 8, 15, 30, tzinfo=UTC)),
        ("2026-06-28T08:15:30", datetime(2026, 6, 28, 8, 15, 30, tzinfo=UTC)),
    ],
)
def test_time_specs_are_durations_before_now_or_utc_dates(spec: str, since: datetime) -> None:
    assert parse_time_spec(spec, NOW) == since


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "5",
        "5x",
        "1w",
        "-3d",
        "0s",
        "3 d",
        "1.5h",
        "2026-02-30",
        "2026-06-28 25:00",
        "yesterday",
    ],
)
def test_bad_time_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_time_spec(spec, NOW)


def test_a_duration_reaching_before_year_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="before year 1"):
        parse_time_spec("999999999d", NOW)


# ---------------------------------------------------------------- safety


@pytest.mark.parametrize("flag", ["--ns", "--src", "--dst", "--peers-of"])
@pytest.mark.parametrize(
    "value",
    ["a'; DROP TABLE edge;--", "a b", "../x", "Frontend", "-a", "a" * 64, "", "a\nb"],
)
def test_bad_namespace_names_are_rejected_and_the_table_is_intact(
    trail: Conn, edges: Any, flag: str, value: str
) -> None:
    run = edges(f"{flag}={value}", "--json")
    assert run.code == EXIT_USAGE
    assert run.out == ""
    assert run.err.startswith(f"edges: argument {flag}: ")
    assert "is not a Kubernetes namespace name" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert trail.execute("SELECT count(*) FROM edge").fetchone() == (len(TRAIL),)


def test_allowlist_rejects_bad_namespace_names(trail: Conn, edges: Any) -> None:
    run = edges("allowlist", "--ns", "a'; DROP TABLE edge;--")
    assert run.code == EXIT_USAGE
    assert trail.execute("SELECT count(*) FROM edge").fetchone() == (len(TRAIL),)


def test_values_reach_postgres_as_parameters_even_without_validation(
    trail: Conn, schema: str
) -> None:
    hostile = "a'; DROP TABLE edge;--"
    query = EdgeQuery(ns=hostile, src=hostile, dst=hostile)
    statement, params = edges_sql(query)
    text = statement.as_string(None)
    assert hostile not in text
    assert set(params) == {"ns", "src", "dst", "limit"}
    with EdgeReader.open(schema) as reader:
        assert reader.edges(query).rows == []
        assert reader.peers(hostile, query).rows == []
        assert reader.allowlist(hostile).destinations == []
    assert trail.execute("SELECT count(*) FROM edge").fetchone() == (len(TRAIL),)


def test_queries_run_in_a_read_only_transaction_with_a_statement_timeout(schema: str) -> None:
    with EdgeReader.open(schema, timeout_seconds=2.5) as reader, reader.read_only() as conn:
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("2500ms",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM edge")


# ---------------------------------------------------------------- errors


def one_line(run: Run) -> str:
    assert run.out == ""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert "Traceback" not in run.err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus"], "edges: unrecognized arguments: --bogus"),
        (["--new-since", "5x"], "edges: argument --new-since: '5x' is neither a duration"),
        (["--stale", "2026-13-01"], "edges: argument --stale: '2026-13-01' is neither"),
        (["--seen-since="], "edges: argument --seen-since: '' is neither"),
        (["--limit", "0"], "edges: argument --limit: '0' is not a whole number"),
        (["--limit", "ten"], "edges: argument --limit: 'ten' is not a whole number"),
        (["--limit", "²"], "edges: argument --limit: '²' is not a whole number"),
        (["--limit", "٣"], "edges: argument --limit: '٣' is not a whole number"),
        (["--action", "drop"], "edges: argument --action: invalid choice: 'drop'"),
        (["--format", "xml"], "edges: argument --format: invalid choice: 'xml'"),
        (["--sort", "size"], "edges: argument --sort: invalid choice: 'size'"),
        (["--ns"], "edges: argument --ns: expected one argument"),
        (["--denied", "--action", "allow"], "edges: --denied and --action allow contradict"),
        (["--json", "--format", "csv"], "edges: --json and --format csv ask for different"),
        (["--peers-of", "a", "--sort", "src"], "edges: --sort src does not apply to --peers-of"),
        (["--timeout", "0"], "edges: argument --timeout: '0' is not a number of seconds"),
        (["allowlist"], "edges: the following arguments are required: --ns"),
        (["allowlist", "--ns", "a", "--format", "dot"], "edges: argument --format: invalid"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    edges: Any, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    # No database is needed to reject a command line: point at one that cannot answer.
    monkeypatch.setenv("DATABASE_URL", "postgresql://edges:s3cret@127.0.0.1:1/edges")
    run = edges(*argv)
    assert run.code == EXIT_USAGE
    assert one_line(run).startswith(message)


EDGES_FLAGS = (
    "--ns",
    "--src",
    "--dst",
    "--peers-of",
    "--new-since",
    "--seen-since",
    "--stale",
    "--denied",
    "--action",
    "--sort",
    "--limit",
    "--format",
    "--json",
    "--timeout",
)


def test_help_shows_every_flag_with_an_example_and_the_exit_codes(edges: Any) -> None:
    run = edges("--help")
    assert run.code == EXIT_OK
    documented = set(re.findall(r"^  (--[a-z-]+)", run.out, re.MULTILINE))
    assert documented == set(EDGES_FLAGS)
    for flag in EDGES_FLAGS:
        assert re.search(rf"e\.g\.\s+{flag}\b", run.out), flag
    for code in (EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NO_EDGE_TABLE, EXIT_TIMEOUT):
        assert re.search(rf"^  {code}  ", run.out, re.MULTILINE)
    assert "edges allowlist" in run.out


def test_allowlist_help_shows_its_flags_with_examples(edges: Any) -> None:
    run = edges("allowlist", "--help")
    assert run.code == EXIT_OK
    for flag in ("--ns", "--seen-since", "--format", "--json", "--timeout"):
        assert re.search(rf"e\.g\.\s+{flag}\b", run.out), flag
    assert "networkpolicy" in run.out


def test_an_unreachable_database_exits_3_without_the_password(
    edges: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://edges:s3cret@127.0.0.1:1/edges")
    run = edges("--ns", "dbaas")
    assert run.code == EXIT_UNREACHABLE
    line = one_line(run)
    assert line.startswith("edges: cannot connect to PostgreSQL")
    assert "edges:***@127.0.0.1:1" in line
    assert "s3cret" not in run.err


def test_a_refused_login_exits_4_without_the_password(
    edges: Any, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    url = psycopg.conninfo.make_conninfo(postgres_url, user="no_such_role", password="s3cret")
    monkeypatch.setenv("DATABASE_URL", url)
    run = edges("--denied")
    assert run.code == EXIT_REFUSED
    assert "no_such_role" in one_line(run)
    assert "s3cret" not in run.err


def test_a_setting_libpq_refuses_in_the_database_url_is_a_usage_error(
    edges: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://edges:s3cret@127.0.0.1:1/edges?sslmode=bogus")
    run = edges("--denied")
    assert run.code == EXIT_USAGE
    line = one_line(run)
    assert line.startswith("edges: DATABASE_URL: cannot connect to PostgreSQL")
    assert 'invalid sslmode value: "bogus"' in line
    assert "s3cret" not in run.err


def test_a_malformed_database_url_is_a_usage_error(
    edges: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u:s3cret@h/db")
    run = edges("--denied")
    assert run.code == EXIT_USAGE
    assert "DATABASE_URL" in one_line(run)
    assert "s3cret" not in run.err


def test_a_database_without_the_edge_table_exits_5(
    database_url: str, edges: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    run = edges("--ns", "dbaas")
    assert run.code == EXIT_NO_EDGE_TABLE
    assert one_line(run).startswith(
        "edges: no edge table in this database: has edge-aggregator run against it?"
    )
    assert edges("allowlist", "--ns", "dbaas").code == EXIT_NO_EDGE_TABLE


def test_a_query_longer_than_the_timeout_exits_6(trail: Conn, edges: Any) -> None:
    # A migration holding the table's lock makes any read wait: the timeout must end it.
    with trail.transaction():
        trail.execute("LOCK TABLE edge IN ACCESS EXCLUSIVE MODE")
        run = edges("--ns", "dbaas", "--timeout", "0.3")
    assert run.code == EXIT_TIMEOUT
    assert "longer than 0.3 s" in one_line(run)


def test_other_database_errors_exit_7(schema: str, db: Conn, edges: Any) -> None:
    db.execute("ALTER TABLE edge DROP COLUMN flow_count")
    run = edges("--src", "frontend")
    assert run.code == EXIT_QUERY_FAILED
    assert "flow_count" in one_line(run)


def test_an_unexpected_error_is_one_line_without_secrets(
    trail: Conn, edges: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: Any) -> Any:
        raise RuntimeError("boom at postgresql://edges:s3cret@db:5432/edges\nsecond line")

    monkeypatch.setattr(EdgeReader, "edges", explode)
    run = edges("--ns", "dbaas")
    assert run.code == EXIT_UNEXPECTED
    assert one_line(run) == (
        "edges: unexpected error: RuntimeError: boom at postgresql://edges:***@db:5432/edges"
    )


def test_stdout_never_names_the_database(trail: Conn, edges: Any, schema: str) -> None:
    run = edges("--json")
    assert "search_path" not in run.out and "127.0.0.1" not in run.out
    json.loads(run.out)


# ---------------------------------------------------------------- the installed command


def edges_command() -> list[str]:
    installed = shutil.which("edges", path=os.path.dirname(sys.executable))
    return [installed] if installed else [sys.executable, "-m", "aggregator.edges_cli"]


def test_the_installed_command_prints_parseable_json(trail: Conn, schema: str) -> None:
    done = subprocess.run(
        [*edges_command(), "--peers-of", "dbaas", "--json"],
        env={**os.environ, "DATABASE_URL": schema},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert [row["peer"] for row in json.loads(done.stdout)] == [
        "api",
        "batch",
        "frontend",
        "kube-system",
    ]


def test_the_installed_command_fails_in_one_line_with_its_exit_code() -> None:
    done = subprocess.run(
        [*edges_command(), "--ns", "dbaas"],
        env={**os.environ, "DATABASE_URL": "postgresql://edges:s3cret@127.0.0.1:1/edges"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_UNREACHABLE
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "s3cret" not in done.stderr and "Traceback" not in done.stderr
