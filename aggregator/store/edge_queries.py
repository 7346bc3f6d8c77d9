"""The read side of the edge trail for the `edges` CLI: typed filters in, rows out.

Every query is assembled from fixed SQL fragments; every value is a bound
parameter. Each call runs in its own read-only transaction under a statement
timeout, so a query can neither change the trail nor hang a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, Literal, Self, TypeAlias, TypeVar, get_args

import psycopg
import psycopg.errors
from psycopg import sql

from aggregator.buffer import EdgeKey
from aggregator.store.connection import (
    Connection,
    DatabaseUrlRefused,
    StoreError,
    connect,
    describe_error,
)

Action = Literal["allow", "deny", "pass", "unspecified"]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)

SortKey = Literal["first_seen", "last_seen", "flow_count", "src", "dst"]
SORT_KEYS: Final[tuple[str, ...]] = get_args(SortKey)
PeerSortKey = Literal["peer", "first_seen", "last_seen", "flow_count"]
PEER_SORT_KEYS: Final[tuple[str, ...]] = get_args(PeerSortKey)

# A statement built from fixed fragments, and the values bound to its placeholders.
Statement: TypeAlias = tuple[sql.Composed, dict[str, Any]]

DEFAULT_LIMIT: Final = 200
DEFAULT_TIMEOUT_SECONDS: Final = 15.0


class DatabaseUnreachable(StoreError):
    """No answer from PostgreSQL: wrong host or port, down, or a network problem."""


class DatabaseRefused(StoreError):
    """PostgreSQL answered but refused us: authentication, role or database name."""


class NoEdgeTable(StoreError):
    """The database has no `edge` table: no aggregator has run against it yet."""


class QueryTimeout(StoreError):
    """A query ran longer than the statement timeout."""


@dataclass(frozen=True)
class EdgeQuery:
    """Filters on edges, all AND-combined; None means 'any'.

    `ns` matches either end. `first_seen_since`, `last_seen_since` and
    `last_seen_before` are inclusive, inclusive and exclusive bounds.
    """

    ns: str | None = None
    src: str | None = None
    dst: str | None = None
    action: Action | None = None
    first_seen_since: datetime | None = None
    last_seen_since: datetime | None = None
    last_seen_before: datetime | None = None
    sort: SortKey = "first_seen"
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        # The CLI validates too; this keeps any other caller from reaching SQL with junk.
        if self.action is not None and self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")
        if self.sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {self.sort!r}")
        if self.limit < 1:
            raise ValueError("limit must be at least 1")


@dataclass(frozen=True)
class Edge:
    """One row of the trail."""

    src_ns: str
    dst_ns: str
    action: str
    first_seen: datetime
    last_seen: datetime
    flow_count: int

    @property
    def key(self) -> EdgeKey:
        return (self.src_ns, self.dst_ns, self.action)


@dataclass(frozen=True)
class Peer:
    """A namespace that talks with the asked one, per action.

    `direction` is `out` (asked -> peer), `in` (peer -> asked) or `both`;
    times and counts are over the edges of both directions.
    """

    peer: str
    action: str
    direction: str
    first_seen: datetime
    last_seen: datetime
    flow_count: int


@dataclass(frozen=True)
class AllowedDestination:
    """A namespace that the asked one was seen reaching with `allow`."""

    namespace: str
    first_seen: datetime
    last_seen: datetime
    flow_count: int


@dataclass(frozen=True)
class Allowlist:
    """The observed internal egress of one namespace, and how long the trail has watched."""

    namespace: str
    destinations: list[AllowedDestination]
    observing_since: datetime | None
    namespace_seen: bool


RowT = TypeVar("RowT")


@dataclass(frozen=True)
class Page(Generic[RowT]):
    """Rows up to the limit; `more` says that the limit cut some off."""

    rows: list[RowT]
    more: bool


# Each filter is a fixed fragment naming its own bound parameter.
_FILTERS: Final[Mapping[str, sql.SQL]] = {
    "ns": sql.SQL("(src_ns = %(ns)s OR dst_ns = %(ns)s)"),
    "src": sql.SQL("src_ns = %(src)s"),
    "dst": sql.SQL("dst_ns = %(dst)s"),
    "action": sql.SQL("action = %(action)s"),
    "first_seen_since": sql.SQL("first_seen >= %(first_seen_since)s"),
    "last_seen_since": sql.SQL("last_seen >= %(last_seen_since)s"),
    # first_seen <= last_seen always, so the second half adds no condition; it lets the
    # planner walk the first_seen index from the cut-off instead of from the newest edge.
    "last_seen_before": sql.SQL(
        "last_seen < %(last_seen_before)s AND first_seen < %(last_seen_before)s"
    ),
}

# The key columns close every order, so equal times or counts come out the same each run.
_EDGE_ORDER: Final[Mapping[SortKey, sql.SQL]] = {
    "first_seen": sql.SQL("first_seen DESC, src_ns, dst_ns, action"),
    "last_seen": sql.SQL("last_seen DESC, src_ns, dst_ns, action"),
    "flow_count": sql.SQL("flow_count DESC, src_ns, dst_ns, action"),
    "src": sql.SQL("src_ns, dst_ns, action"),
    "dst": sql.SQL("dst_ns, src_ns, action"),
}

_PEER_ORDER: Final[Mapping[PeerSortKey, sql.SQL]] = {
    "peer": sql.SQL("peer, action"),
    "first_seen": sql.SQL("first_seen DESC, peer, action"),
    "last_seen": sql.SQL("last_seen DESC, peer, action"),
    "flow_count": sql.SQL("flow_count DESC, peer, action"),
}

# The cast: a table made by hand may count in integer or numeric (JSON has no Decimal).
_EDGE_COLUMNS: Final = sql.SQL(
    "src_ns, dst_ns, action, first_seen, last_seen, flow_count::bigint AS flow_count"
)


def _where(query: EdgeQuery) -> tuple[sql.Composable, dict[str, Any]]:
    params = {name: getattr(query, name) for name in _FILTERS if getattr(query, name) is not None}
    if not params:
        return sql.SQL("TRUE"), params
    return sql.SQL(" AND ").join(_FILTERS[name] for name in params), params


def edges_sql(query: EdgeQuery) -> Statement:
    """The statement and parameters that list edges; one more row than the limit, to see a cut."""
    where, params = _where(query)
    statement = sql.SQL("SELECT {columns} FROM edge WHERE {where} ORDER BY {order} LIMIT %(limit)s")
    params["limit"] = query.limit + 1
    return statement.format(
        columns=_EDGE_COLUMNS, where=where, order=_EDGE_ORDER[query.sort]
    ), params


def peers_sql(namespace: str, query: EdgeQuery, sort: PeerSortKey = "peer") -> Statement:
    """The statement and parameters that list a namespace's peers over the edges `query` keeps."""
    if sort not in _PEER_ORDER:
        raise ValueError(f"unknown peer sort key {sort!r}")
    where, params = _where(query)
    statement = sql.SQL(
        """
        SELECT peer, action,
               CASE WHEN bool_and(outgoing) THEN 'out'
                    WHEN bool_or(outgoing) THEN 'both'
                    ELSE 'in' END AS direction,
               min(first_seen) AS first_seen, max(last_seen) AS last_seen,
               sum(flow_count)::bigint AS flow_count
        FROM (
            SELECT CASE WHEN src_ns = %(peers_of)s THEN dst_ns ELSE src_ns END AS peer,
                   src_ns = %(peers_of)s AS outgoing,
                   action, first_seen, last_seen, flow_count
            FROM edge
            WHERE (src_ns = %(peers_of)s OR dst_ns = %(peers_of)s) AND {where}
        ) AS touching
        GROUP BY peer, action
        ORDER BY {order}
        LIMIT %(limit)s
        """
    )
    params["peers_of"] = namespace
    params["limit"] = query.limit + 1
    return statement.format(where=where, order=_PEER_ORDER[sort]), params


def allowlist_sql(namespace: str, last_seen_since: datetime | None = None) -> Statement:
    """The statement and parameters that list where a namespace was seen going with `allow`."""
    query = EdgeQuery(src=namespace, action="allow", last_seen_since=last_seen_since)
    where, params = _where(query)
    statement = sql.SQL(
        """
        SELECT dst_ns, min(first_seen), max(last_seen), sum(flow_count)::bigint
        FROM edge WHERE {where} GROUP BY dst_ns ORDER BY dst_ns
        """
    )
    return statement.format(where=where), params


def oldest_first_seen_sql() -> Statement:
    """How far back the trail reaches: the oldest first_seen of any edge."""
    return sql.Composed([sql.SQL("SELECT min(first_seen) FROM edge")]), {}


def namespace_seen_sql(namespace: str) -> Statement:
    """Whether a namespace appears at either end of any edge (a typo shows up as 'not seen')."""
    statement = sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM edge WHERE src_ns = %(ns)s)"
        " OR EXISTS (SELECT 1 FROM edge WHERE dst_ns = %(ns)s)"
    )
    return sql.Composed([statement]), {"ns": namespace}


def allowlist_statements(
    namespace: str, last_seen_since: datetime | None = None
) -> list[Statement]:
    """Every statement `EdgeReader.allowlist` runs, in order."""
    return [
        allowlist_sql(namespace, last_seen_since),
        oldest_first_seen_sql(),
        namespace_seen_sql(namespace),
    ]


# libpq reports these when the server answered and said no; anything else never got an answer.
_REFUSED = re.compile(
    r"authentication failed|no pg_hba\.conf entry|no password supplied"
    r"|role \S+ does not exist|database \S+ does not exist|permission denied",
    re.IGNORECASE,
)


class EdgeReader:
    """Read-only access to the trail; each call is one read-only transaction."""

    def __init__(
        self, conn: Connection, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        self._conn = conn
        self._timeout_ms = max(1, round(timeout_seconds * 1000))

    @classmethod
    def open(cls, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> Self:
        """Connect; a failure is DatabaseUrlRefused, DatabaseRefused or DatabaseUnreachable.

        None of them carries the password.
        """
        try:
            conn = connect(url, application_name="edges")
        except DatabaseUrlRefused:
            raise
        except StoreError as error:
            kind = DatabaseRefused if _REFUSED.search(str(error)) else DatabaseUnreachable
            raise kind(str(error)) from None
        return cls(conn, timeout_seconds=timeout_seconds)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def edges(self, query: EdgeQuery) -> Page[Edge]:
        statement, params = edges_sql(query)
        with self.read_only() as conn:
            rows = conn.execute(statement, params).fetchall()
        return Page([Edge(*row) for row in rows[: query.limit]], more=len(rows) > query.limit)

    def peers(self, namespace: str, query: EdgeQuery, sort: PeerSortKey = "peer") -> Page[Peer]:
        statement, params = peers_sql(namespace, query, sort)
        with self.read_only() as conn:
            rows = conn.execute(statement, params).fetchall()
        return Page([Peer(*row) for row in rows[: query.limit]], more=len(rows) > query.limit)

    def allowlist(self, namespace: str, *, last_seen_since: datetime | None = None) -> Allowlist:
        listing, oldest_first_seen, namespace_seen = allowlist_statements(
            namespace, last_seen_since
        )
        with self.read_only() as conn:
            rows = conn.execute(*listing).fetchall()
            oldest = conn.execute(*oldest_first_seen).fetchone()
            seen = conn.execute(*namespace_seen).fetchone()
        return Allowlist(
            namespace=namespace,
            destinations=[AllowedDestination(*row) for row in rows],
            observing_since=oldest[0] if oldest else None,
            namespace_seen=bool(seen and seen[0]),
        )

    @contextmanager
    def read_only(self) -> Iterator[Connection]:
        """A read-only transaction with a statement timeout; database errors become StoreErrors."""
        try:
            with self._conn.transaction():
                self._conn.execute("SET TRANSACTION READ ONLY")
                # SET cannot take a bound parameter; set_config can, and is_local=true is SET LOCAL.
                self._conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)", (f"{self._timeout_ms}ms",)
                )
                yield self._conn
        except psycopg.errors.UndefinedTable:
            raise NoEdgeTable(
                "no edge table in this database: has edge-aggregator run against it?"
            ) from None
        except psycopg.errors.QueryCanceled:
            raise QueryTimeout(
                f"the query took longer than {self._timeout_ms / 1000:g} s and was cancelled"
            ) from None
        except psycopg.OperationalError as error:
            raise DatabaseUnreachable(f"lost the database: {describe_error(error)}") from None
        except psycopg.Error as error:
            raise StoreError(f"the query failed: {describe_error(error)}") from None
