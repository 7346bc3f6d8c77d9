"""`edges`: answer who-talks-to-whom questions about the trail in one command.

Parses flags into a typed query for the store's read side and prints the rows
as an aligned table, JSON, CSV, a Graphviz or Mermaid graph, or (for
`edges allowlist`) a namespace's observed egress as a Kubernetes NetworkPolicy.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, NoReturn

from aggregator.edges_output import (
    observation_note,
    render_allowlist,
    render_edges,
    render_peers,
)
from aggregator.embedded import resolve_database_url
from aggregator.logs import stdout_reader_gone
from aggregator.mapping import is_namespace_name
from aggregator.settings import SettingsError, load_database_url, redact_url
from aggregator.store.connection import DatabaseUrlRefused, StoreError, describe_error
from aggregator.store.edge_queries import (
    ACTIONS,
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT_SECONDS,
    SORT_KEYS,
    Action,
    DatabaseRefused,
    DatabaseUnreachable,
    EdgeQuery,
    EdgeReader,
    NoEdgeTable,
    PeerSortKey,
    QueryTimeout,
    SortKey,
)
from aggregator.timespec import parse_time_spec

PROG: Final = "edges"

EXIT_OK: Final = 0
EXIT_UNEXPECTED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_REFUSED: Final = 4
EXIT_NO_EDGE_TABLE: Final = 5
EXIT_TIMEOUT: Final = 6
EXIT_QUERY_FAILED: Final = 7

EDGE_FORMATS: Final = ("table", "json", "csv", "dot", "mermaid")
GRAPH_FORMATS: Final = ("dot", "mermaid")
ALLOWLIST_FORMATS: Final = ("table", "json", "networkpolicy")
MAX_LIMIT: Final = 1_000_000
# An allowlist drawn from less than a week misses weekly jobs; the policy says so.

# Same rule as aggregator/mapping.py (a Kubernetes namespace is an RFC 1123 label);
# kept separate for now, to be unified there.

EXIT_CODES_HELP: Final = f"""\
exit status:
  {EXIT_OK}  ok, including when no edge matches
  {EXIT_UNEXPECTED}  an unexpected error (a bug: please report it)
  {EXIT_USAGE}  usage: unknown flag, bad duration or date, bad namespace name, bad DATABASE_URL
  {EXIT_UNREACHABLE}  the database did not answer (host, port, network, server down)
  {EXIT_REFUSED}  the database refused the connection (password, role, database name)
  {EXIT_NO_EDGE_TABLE}  no edge table in the database: edge-aggregator has not run against it
  {EXIT_TIMEOUT}  the query ran longer than --timeout
  {EXIT_QUERY_FAILED}  any other database error (e.g. no SELECT permission on edge)

The database is DATABASE_URL (libpq URL), or the embedded PostgreSQL when unset."""

EDGES_EPILOG: Final = f"""\
examples:
  edges --peers-of dbaas                    who talks with dbaas, and how
  edges --ns payments --denied              denied traffic into or out of payments
  edges --new-since 24h                     relationships that appeared today
  edges --src frontend --stale 30d          frontend egress not seen for a month
  edges --ns payments --format dot | dot -Tsvg > payments.svg
  edges allowlist --ns frontend --format networkpolicy

Filters are AND-combined. Rows come newest first by first_seen (--peers-of: by
peer name). Times are UTC. See `edges allowlist --help` for allowlists.

{EXIT_CODES_HELP}"""

ALLOWLIST_EPILOG: Final = f"""\
examples:
  edges allowlist --ns frontend
  edges allowlist --ns frontend --seen-since 30d --format networkpolicy > netpol.yaml

The allowlist is the destination namespaces the namespace was seen reaching with
`allow`. The NetworkPolicy adds DNS to kube-system and says how long the trail
has been observing; fewer than 7 days is flagged as incomplete.

{EXIT_CODES_HELP}"""


_EXAMPLE: Final = re.compile(r"e\.g\. \S+( \S+)?$")
# textwrap breaks only at ASCII whitespace, so a no-break space holds an example together.
_NO_BREAK: Final = "\xa0"


class UsageError(Exception):
    """A command line that cannot be run; the message is one line."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps flags, dates and each trailing example whole when wrapping help text.

    The default wrapping splits `--seen-since` at its hyphen and can part an
    example's flag from its value.
    """

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = _EXAMPLE.sub(lambda m: m.group(0).replace(" ", _NO_BREAK), " ".join(text.split()))
        lines = textwrap.wrap(text, width, break_on_hyphens=False)
        return [line.replace(_NO_BREAK, " ") for line in lines]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and an exception rather than a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass(frozen=True)
class EdgesRequest:
    """What `edges` was asked: a filter, optionally a peers view, and how to print."""

    query: EdgeQuery
    peers_of: str | None
    peer_sort: PeerSortKey
    output: str
    timeout: float


@dataclass(frozen=True)
class AllowlistRequest:
    """What `edges allowlist` was asked."""

    namespace: str
    last_seen_since: datetime | None
    output: str
    timeout: float
    now: datetime


# ---------------------------------------------------------------- argument values


def namespace_arg(value: str) -> str:
    if not is_namespace_name(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a Kubernetes namespace name (lowercase letters, digits and '-',"
            " starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def _time_arg(now: datetime) -> Callable[[str], datetime]:
    def parse(value: str) -> datetime:
        try:
            return parse_time_spec(value, now)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _limit_arg(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def _timeout_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds from 0.1 to 3600")
    return seconds


# ---------------------------------------------------------------- command lines


def _add_common(parser: argparse.ArgumentParser, formats: Sequence[str], json_shape: str) -> None:
    parser.add_argument(
        "--format",
        choices=formats,
        help=f"output: {', '.join(formats)} (default: table), e.g. --format {formats[1]}",
    )
    parser.add_argument(
        "--json", action="store_true", help=f"short for --format json: {json_shape}, e.g. --json"
    )
    parser.add_argument(
        "--timeout",
        type=_timeout_arg,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up on a query after this long (default: {DEFAULT_TIMEOUT_SECONDS:g}),"
        " e.g. --timeout 5",
    )


def edges_parser(now: datetime) -> argparse.ArgumentParser:
    """The `edges` command line; time specs are resolved against `now`."""
    parser = _Parser(
        prog=PROG,
        description="Query the namespace edge trail: who talks to whom, since when, allowed or "
        "denied.",
        epilog=EDGES_EPILOG,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    since = _time_arg(now)
    parser.add_argument(
        "--ns", type=namespace_arg, metavar="NAME", help="NAME at either end, e.g. --ns payments"
    )
    parser.add_argument(
        "--src", type=namespace_arg, metavar="NAME", help="from NAME, e.g. --src frontend"
    )
    parser.add_argument("--dst", type=namespace_arg, metavar="NAME", help="to NAME, e.g. --dst api")
    parser.add_argument(
        "--peers-of",
        type=namespace_arg,
        metavar="NAME",
        help="the namespaces NAME talks with in either direction, one row per peer and action,"
        " e.g. --peers-of dbaas",
    )
    parser.add_argument(
        "--new-since",
        type=since,
        metavar="SPEC",
        help="first seen since SPEC: 90s, 30m, 24h, 7d or YYYY-MM-DD[ HH:MM[:SS]] UTC,"
        " e.g. --new-since 24h",
    )
    parser.add_argument(
        "--seen-since",
        type=since,
        metavar="SPEC",
        help="last seen since SPEC (still active), e.g. --seen-since 1h",
    )
    parser.add_argument(
        "--stale",
        type=since,
        metavar="SPEC",
        help="not seen since SPEC (allowlist entries to drop), e.g. --stale 30d",
    )
    parser.add_argument("--denied", action="store_true", help="only deny, e.g. --denied")
    parser.add_argument("--action", choices=ACTIONS, help="only this verdict, e.g. --action pass")
    parser.add_argument(
        "--sort",
        choices=SORT_KEYS,
        help="order: first_seen, last_seen, flow_count (largest first), src or dst"
        " (default: first_seen), e.g. --sort flow_count",
    )
    parser.add_argument(
        "--limit",
        type=_limit_arg,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N rows (default: {DEFAULT_LIMIT}), e.g. --limit 20",
    )
    _add_common(parser, EDGE_FORMATS, "one JSON array")
    return parser


def allowlist_parser(now: datetime) -> argparse.ArgumentParser:
    """The `edges allowlist` command line."""
    parser = _Parser(
        prog=f"{PROG} allowlist",
        description="The internal egress allowlist of a namespace: the destination namespaces "
        "it was seen reaching with allow.",
        epilog=ALLOWLIST_EPILOG,
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--ns",
        type=namespace_arg,
        metavar="NAME",
        required=True,
        help="the namespace whose egress to list, e.g. --ns frontend",
    )
    parser.add_argument(
        "--seen-since",
        type=_time_arg(now),
        metavar="SPEC",
        help="only destinations last seen since SPEC, e.g. --seen-since 30d",
    )
    _add_common(parser, ALLOWLIST_FORMATS, "one JSON object")
    return parser


def _output(args: argparse.Namespace) -> str:
    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json and --format {args.format} ask for different outputs")
    return "json" if args.json else args.format or "table"


def parse_request(argv: Sequence[str], now: datetime) -> EdgesRequest | AllowlistRequest:
    """The request a command line makes; raises UsageError, or SystemExit(0) for --help."""
    if argv and argv[0] == "allowlist":
        args = allowlist_parser(now).parse_args(argv[1:])
        return AllowlistRequest(args.ns, args.seen_since, _output(args), args.timeout, now)
    args = edges_parser(now).parse_args(argv)
    output = _output(args)
    action: Action | None = args.action
    if args.denied:
        if action not in (None, "deny"):
            raise UsageError(f"--denied and --action {action} contradict each other")
        action = "deny"
    query = EdgeQuery(
        ns=args.ns,
        src=args.src,
        dst=args.dst,
        action=action,
        first_seen_since=args.new_since,
        last_seen_since=args.seen_since,
        last_seen_before=args.stale,
        limit=args.limit,
    )
    if args.peers_of is None:
        sort: SortKey = args.sort or "first_seen"
        return EdgesRequest(replace(query, sort=sort), None, "peer", output, args.timeout)
    if output in GRAPH_FORMATS:
        raise UsageError(
            f"--peers-of lists peers, not edges; to draw a namespace's edges use"
            f" --ns {args.peers_of} --format {output}"
        )
    if args.sort in ("src", "dst"):
        raise UsageError(f"--sort {args.sort} does not apply to --peers-of (rows are peers)")
    return EdgesRequest(query, args.peers_of, args.sort or "peer", output, args.timeout)


# ---------------------------------------------------------------- running


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _first_line(error: BaseException) -> str:
    # Last-resort messages come from code we do not control: strip anything password-like.
    line = describe_error(error)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", line)


def _run_edges(reader: EdgeReader, request: EdgesRequest, human: bool) -> str:
    if request.peers_of is not None:
        peers = reader.peers(request.peers_of, request.query, request.peer_sort)
        more = peers.more
        text = render_peers(peers, request.output, human=human)
    else:
        edges = reader.edges(request.query)
        more = edges.more
        text = render_edges(edges, request.output, human=human)
    if more:
        _say(f"showing the first {request.query.limit} rows; more match (raise --limit)")
    return text


def _run_allowlist(reader: EdgeReader, request: AllowlistRequest, human: bool) -> str:
    allowlist = reader.allowlist(request.namespace, last_seen_since=request.last_seen_since)
    if not allowlist.namespace_seen:
        _say(f"namespace {request.namespace} does not appear in the trail")
    if request.output != "networkpolicy":
        for line in observation_note(allowlist, request.now):
            _say(line)
    return render_allowlist(
        allowlist,
        request.output,
        now=request.now,
        last_seen_since=request.last_seen_since,
        human=human,
    )


def _run(argv: Sequence[str]) -> int:
    now = datetime.now(UTC)
    try:
        request = parse_request(argv, now)
    except UsageError as error:
        _say(f"{error} (see '{PROG} --help')")
        return EXIT_USAGE
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else EXIT_OK
    try:
        url = resolve_database_url(load_database_url(os.environ))
    except SettingsError as error:
        _say(str(error))
        return EXIT_USAGE
    where = redact_url(url)
    if sys.stderr.isatty():
        _say(f"reading {where}")
    human = sys.stdout.isatty()
    try:
        with EdgeReader.open(url, timeout_seconds=request.timeout) as reader:
            if isinstance(request, AllowlistRequest):
                text = _run_allowlist(reader, request, human)
            else:
                text = _run_edges(reader, request, human)
    except DatabaseUnreachable as error:
        _say(f"{error} ({where})")
        return EXIT_UNREACHABLE
    except DatabaseUrlRefused as error:
        _say(f"DATABASE_URL: {error} ({where})")
        return EXIT_USAGE
    except DatabaseRefused as error:
        _say(f"{error} ({where})")
        return EXIT_REFUSED
    except NoEdgeTable as error:
        _say(f"{error} ({where})")
        return EXIT_NO_EDGE_TABLE
    except QueryTimeout as error:
        _say(f"{error}; narrow the filters or raise --timeout")
        return EXIT_TIMEOUT
    except StoreError as error:
        _say(str(error))
        return EXIT_QUERY_FAILED
    sys.stdout.write(text)
    sys.stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run `edges`; returns the exit status and never lets a traceback reach the terminal."""
    try:
        return _run(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        stdout_reader_gone()  # `edges | head`
        return EXIT_OK
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as error:
        _say(f"unexpected error: {type(error).__name__}: {_first_line(error)}")
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
