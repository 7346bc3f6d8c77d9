"""Benchmark of the `edges` CLI's queries on a 100,000-edge trail: database time per flag.

Builds a synthetic trail in a fresh schema (migrations applied, so the indexes
are the shipped ones), turns each command line into SQL through the CLI's own
parser and the store's query builders, and prints the median planning +
execution time reported by EXPLAIN (ANALYZE) over several runs, plus the
client's round trip through the same read-only transaction the CLI uses.

    python tests/bench/edge_queries.py [--database-url URL] [--edges 100000] [--runs 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.conninfo
from psycopg import sql

from aggregator.edges_cli import AllowlistRequest, EdgesRequest, parse_request
from aggregator.store.edge_queries import (
    EdgeReader,
    allowlist_statements,
    edges_sql,
    peers_sql,
)
from aggregator.store.migrations import migrate

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
BUDGET_MS = 50.0
NAMESPACES = 1500
# Shares of verdicts among edges: mostly allow, a tail of deny, little pass/unspecified.
ACTION_WEIGHTS = {"allow": 0.84, "deny": 0.11, "pass": 0.04, "unspecified": 0.01}
HISTORY_DAYS = 120

Statement = tuple[sql.Composed, dict[str, Any]]


@dataclass(frozen=True)
class Measurement:
    label: str
    rows: int
    planning_ms: float
    execution_ms: float
    round_trip_ms: float
    indexes: str

    @property
    def database_ms(self) -> float:
        return self.planning_ms + self.execution_ms


def namespace_names(count: int, rng: random.Random) -> list[str]:
    """Realistic-looking names; the first few are the hubs every cluster has."""
    hubs = ["kube-system", "monitoring", "ingress-nginx", "cert-manager", "logging", "dbaas"]
    teams = ["payments", "checkout", "search", "identity", "catalog", "orders", "ml", "data"]
    kinds = ["api", "web", "worker", "cache", "db", "jobs", "gateway", "stream"]
    names = list(hubs)
    while len(names) < count:
        name = f"{rng.choice(teams)}-{rng.choice(kinds)}-{len(names):04d}"
        names.append(name)
    return names


def synthetic_trail(count: int, now: datetime, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """`count` distinct edges with Zipf-like popularity: a few hubs touch thousands of edges."""
    rng = random.Random(seed)
    names = namespace_names(NAMESPACES, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(names))]
    actions = list(ACTION_WEIGHTS)
    action_weights = list(ACTION_WEIGHTS.values())
    seen: set[tuple[str, str, str]] = set()
    while len(seen) < count:
        for src, dst, action in zip(
            rng.choices(names, weights, k=4096),
            rng.choices(names, weights, k=4096),
            rng.choices(actions, action_weights, k=4096),
            strict=True,
        ):
            key = (src, dst, action)
            if src == dst or key in seen or len(seen) >= count:
                continue
            seen.add(key)
            # Most edges were established early; about a third has gone quiet since.
            age = timedelta(days=HISTORY_DAYS * rng.random() ** 2)
            first_seen = now - age
            if rng.random() < 0.35:
                last_seen = first_seen + (now - first_seen) * rng.random()
            else:
                last_seen = now - timedelta(seconds=rng.randrange(0, 3600))
            last_seen = max(last_seen, first_seen + timedelta(seconds=15))
            flow_count = max(1, int(rng.lognormvariate(4, 2.5)))
            yield src, dst, action, first_seen, last_seen, flow_count


def build_trail(url: str, count: int, now: datetime) -> None:
    with psycopg.connect(url) as conn:
        migrate(conn)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY edge (src_ns, dst_ns, action, first_seen, last_seen, flow_count) FROM STDIN"
            ) as copy,
        ):
            for row in synthetic_trail(count, now):
                copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        # A long-lived table has been vacuumed and analysed by autovacuum; match that.
        conn.execute("VACUUM ANALYZE edge")


def busiest_and_typical(url: str) -> tuple[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT ns, count(*) FROM (SELECT src_ns AS ns FROM edge UNION ALL"
            " SELECT dst_ns FROM edge) AS ends GROUP BY ns ORDER BY 2 DESC, 1"
        ).fetchall()
    return rows[0][0], rows[len(rows) // 2][0]


def statements_of(argv: Sequence[str], now: datetime) -> list[Statement]:
    """The SQL the CLI runs for this command line."""
    request = parse_request(argv, now)
    if isinstance(request, AllowlistRequest):
        return allowlist_statements(request.namespace, request.last_seen_since)
    assert isinstance(request, EdgesRequest)
    if request.peers_of is not None:
        return [peers_sql(request.peers_of, request.query, request.peer_sort)]
    return [edges_sql(request.query)]


def round_trip(reader: EdgeReader, argv: Sequence[str], now: datetime) -> int:
    """Run the command line's query as the CLI does; returns the rows."""
    request = parse_request(argv, now)
    if isinstance(request, AllowlistRequest):
        allowlist = reader.allowlist(request.namespace, last_seen_since=request.last_seen_since)
        return len(allowlist.destinations)
    if request.peers_of is not None:
        return len(reader.peers(request.peers_of, request.query, request.peer_sort).rows)
    return len(reader.edges(request.query).rows)


def _index_names(plan: dict[str, Any]) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= _index_names(child)
    return names


def measure(url: str, argv: Sequence[str], now: datetime, runs: int) -> Measurement:
    planning: list[float] = []
    execution: list[float] = []
    trips: list[float] = []
    indexes: set[str] = set()
    with psycopg.connect(url) as conn, EdgeReader.open(url) as reader:
        for run in range(runs + 1):
            plan_ms = exec_ms = 0.0
            for statement, params in statements_of(argv, now):
                explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(statement)
                row = conn.execute(explain, params).fetchone()
                assert row is not None
                report = row[0][0]
                plan_ms += report["Planning Time"]
                exec_ms += report["Execution Time"]
                indexes |= _index_names(report["Plan"])
            conn.rollback()
            started = time.perf_counter()
            rows = round_trip(reader, argv, now)
            trip_ms = (time.perf_counter() - started) * 1000
            if run:  # the first run warms the cache and is not counted
                planning.append(plan_ms)
                execution.append(exec_ms)
                trips.append(trip_ms)
    return Measurement(
        label="edges " + " ".join(argv),
        rows=rows,
        planning_ms=statistics.median(planning),
        execution_ms=statistics.median(execution),
        round_trip_ms=statistics.median(trips),
        indexes=", ".join(sorted(indexes)) or "(seq scan)",
    )


def command_lines(hub: str, typical: str) -> list[list[str]]:
    return [
        [],
        ["--ns", hub],
        ["--ns", typical],
        ["--src", hub],
        ["--src", typical],
        ["--dst", hub],
        ["--dst", typical],
        ["--peers-of", hub],
        ["--peers-of", typical],
        ["--new-since", "24h"],
        ["--new-since", "30d"],
        ["--seen-since", "1h"],
        ["--stale", "30d"],
        ["--denied"],
        ["--action", "pass"],
        ["--action", "unspecified"],
        ["--sort", "last_seen"],
        ["--sort", "flow_count"],
        ["--sort", "src"],
        ["--sort", "dst"],
        ["--limit", "5000"],
        ["--ns", hub, "--denied", "--new-since", "7d"],
        ["--src", hub, "--stale", "30d", "--sort", "flow_count"],
        ["--dst", hub, "--action", "deny", "--seen-since", "24h"],
        ["--peers-of", hub, "--denied", "--new-since", "30d"],
        ["--denied", "--new-since", "24h", "--format", "dot"],
        ["allowlist", "--ns", hub],
        ["allowlist", "--ns", typical, "--seen-since", "30d"],
    ]


def print_table(results: list[Measurement]) -> None:
    headers = ("command", "rows", "plan ms", "exec ms", "db ms", "round trip ms", "indexes used")
    cells = [
        (
            m.label,
            str(m.rows),
            f"{m.planning_ms:.2f}",
            f"{m.execution_ms:.2f}",
            f"{m.database_ms:.2f}",
            f"{m.round_trip_ms:.2f}",
            m.indexes,
        )
        for m in results
    ]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    for row in [headers, *cells]:
        print(
            "  ".join(
                cell.ljust(width) if i in (0, 6) else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--edges", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7, help="measured runs per query (median)")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = parser.parse_args(argv)

    schema = f"bench_edges_{uuid.uuid4().hex[:8]}"
    url = psycopg.conninfo.make_conninfo(args.database_url, options=f"-c search_path={schema}")
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        server = admin.execute("SHOW server_version").fetchone()
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        build_trail(url, args.edges, now)
        hub, typical = busiest_and_typical(url)
        print(
            f"trail: {args.edges} edges, {NAMESPACES} namespaces, built in"
            f" {time.perf_counter() - started:.1f} s; PostgreSQL {server[0] if server else '?'};"
            f" busiest namespace {hub}, a typical one {typical};"
            f" median of {args.runs} runs after one warm-up"
        )
        results = [measure(url, line, now, args.runs) for line in command_lines(hub, typical)]
        print_table(results)
    finally:
        if not args.keep:
            with psycopg.connect(args.database_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    slow = [m for m in results if m.database_ms >= BUDGET_MS]
    for m in slow:
        print(f"over the {BUDGET_MS:g} ms budget: {m.label} ({m.database_ms:.1f} ms)")
    print(f"slowest: {max(m.database_ms for m in results):.2f} ms of database time")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
