"""From one Goldmane flow report to the connection it describes, or the reason to skip it.

The rule (README "Counting and verdict"): a connection is (source namespace,
source name, destination namespace, destination name, destination port,
protocol); `dest_service_*` never split it. Reports whose ends are not both
real, distinct namespaces are not edges.
"""

from __future__ import annotations

import re
from typing import Final

from aggregator.wire import goldmane_pb2

# Verdict ranks: when reports of one connection disagree, the highest wins.
RANK_UNSPECIFIED: Final = 0
RANK_PASS: Final = 1
RANK_ALLOW: Final = 2
RANK_DENY: Final = 3
ACTION_BY_RANK: Final = ("unspecified", "pass", "allow", "deny")
_RANK_BY_WIRE_ACTION: Final[dict[int, int]] = {
    goldmane_pb2.ActionUnspecified: RANK_UNSPECIFIED,
    goldmane_pb2.Allow: RANK_ALLOW,
    goldmane_pb2.Deny: RANK_DENY,
    goldmane_pb2.Pass: RANK_PASS,
}
_KNOWN_REPORTERS: Final[frozenset[int]] = frozenset(
    (goldmane_pb2.ReporterUnspecified, goldmane_pb2.Src, goldmane_pb2.Dst)
)

# Goldmane's namespace for host endpoints, global network sets and networks.
NOT_NAMESPACED: Final = "-"
# A Kubernetes namespace is an RFC 1123 label.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# Skip reasons, exported as the `reason` label of the skipped-flows metric.
SKIP_NO_KEY: Final = "no_key"
SKIP_NOT_NAMESPACED: Final = "not_namespaced"
SKIP_SELF_EDGE: Final = "self_edge"
SKIP_INVALID_NAMESPACE: Final = "invalid_namespace"
SKIP_UNKNOWN_ENUM: Final = "unknown_enum"
SKIP_BAD_TIME: Final = "bad_time"
SKIP_DUPLICATE: Final = "duplicate"
SKIP_LATE: Final = "late"
SKIP_UNDECODABLE: Final = "undecodable"
SKIP_OVERSIZED: Final = "oversized"
SKIP_REASONS: Final = (
    SKIP_NO_KEY,
    SKIP_NOT_NAMESPACED,
    SKIP_SELF_EDGE,
    SKIP_INVALID_NAMESPACE,
    SKIP_UNKNOWN_ENUM,
    SKIP_BAD_TIME,
    SKIP_DUPLICATE,
    SKIP_LATE,
    SKIP_UNDECODABLE,
    SKIP_OVERSIZED,
)

KeyFields = tuple[str, str, int, int, str]
"""What the trail reads of a FlowKey: (source_namespace, dest_namespace, reporter, action,
connection), the connection as `key_fields` names it."""


# Namespaces repeat endlessly; remembering the verdict keeps the regex off the hot path.
_namespace_verdicts: dict[str, bool] = {}
_NAMESPACE_CACHE_LIMIT: Final = 100_000


def is_namespace_name(name: str) -> bool:
    """True for a valid Kubernetes namespace name (an RFC 1123 label)."""
    return _NAMESPACE.fullmatch(name) is not None


def _is_namespace(name: str) -> bool:
    verdict = _namespace_verdicts.get(name)
    if verdict is None:
        verdict = is_namespace_name(name)
        if len(_namespace_verdicts) < _NAMESPACE_CACHE_LIMIT:
            _namespace_verdicts[name] = verdict
    return verdict


def key_fields(key: goldmane_pb2.FlowKey) -> KeyFields:
    """What the trail reads of a decoded FlowKey.

    The connection is named by a FlowKey that holds only the six fields that make it,
    serialised, each byte one character: a string, whose hash Python keeps, that two keys
    share exactly when they report on the same connection. The C `read_key` makes the same
    string without protobuf.
    """
    connection = goldmane_pb2.FlowKey(
        source_name=key.source_name,
        source_namespace=key.source_namespace,
        dest_name=key.dest_name,
        dest_namespace=key.dest_namespace,
        dest_port=key.dest_port,
        proto=key.proto,
    )
    return (
        key.source_namespace,
        key.dest_namespace,
        key.reporter,
        key.action,
        connection.SerializeToString().decode("latin-1"),
    )


def rank_of(fields: KeyFields) -> int | str:
    """The rank of the verdict a flow key reports on its connection, or why it is skipped."""
    src_ns, dst_ns, reporter, action, _ = fields
    if not src_ns or not dst_ns or src_ns == NOT_NAMESPACED or dst_ns == NOT_NAMESPACED:
        return SKIP_NOT_NAMESPACED
    if not _is_namespace(src_ns) or not _is_namespace(dst_ns):
        return SKIP_INVALID_NAMESPACE
    if src_ns == dst_ns:
        return SKIP_SELF_EDGE
    rank = _RANK_BY_WIRE_ACTION.get(action)
    if rank is None or reporter not in _KNOWN_REPORTERS:
        return SKIP_UNKNOWN_ENUM
    return rank


def is_bad_time(start: int, end: int) -> bool:
    """Bucket times no Goldmane sends (the buffer also checks them against its clock)."""
    return start <= 0 or end < start
