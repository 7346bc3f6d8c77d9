"""The receive loop's work per result, in C when built, else in Python with protobuf.

The trail needs three things from each ~540-byte FlowResult: the FlowKey (which connection,
which verdict) and the flow's start and end time. Decoding the whole message, labels and
counters included, and then coalescing it in Python cost more than gRPC's own work per
result, and the receive rate is what decides whether a big cluster's trail is complete. So
the C helper (`_hotpath.c`, compiled at install when a C compiler is there) finds the three
by walking the protobuf wire format, the FlowKey stays bytes (the buffer reads each distinct
key once, with `read_key`, and remembers its verdict in a `KeyTable`, which finds it by the
key's bytes where they lie in the message), `count_known` counts a run of results whose keys
are known into the open bucket, and `seal_bucket` counts a complete bucket's connections into
their edges. A verdict leads to its `Connection`, shared by all the keys of that connection,
which holds the connection's place in the open bucket: no lookup by name per result. Without
the C helper, the Python versions below (and a dict for the table) give the same counts at a
lower rate. tests/test_hotpath.py holds them to that.

The C `flow_head` reads only the simple layout, the one protobuf writes: the FlowResult holds
field 2 (`flow`) exactly once, and that Flow holds field 1 (`Key`) exactly once, both
length-delimited; `start_time` and `end_time` (fields 2 and 3 of Flow) are varints, the last
occurrence wins and absent is 0, as protobuf reads them. Anything else (a field protobuf
would merge, a group, a wire type that does not exist, a field that runs past its message)
gives None, and the caller decodes the message with protobuf, the authority on what an
unusual message means. It does not look inside fields it does not read: a label that is not
UTF-8, which protobuf refuses, does not stop it.

The C `read_key` reads a FlowKey as protobuf does, checking every field, the policy trace's
included, and gives None for a layout it leaves to protobuf (a known field with another wire
type, a group, a policy hit nested deeper than Calico nests them). The fields it returns are
`mapping.key_fields`'s, the connection's name byte for byte.
"""

from __future__ import annotations

import operator
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from google.protobuf.message import DecodeError

from aggregator.mapping import KeyFields, key_fields
from aggregator.wire import goldmane_pb2

FlowHead = tuple[bytes, int, int]
"""(serialised FlowKey, start_time, end_time)"""


class Connection(Protocol):
    """A connection's place in the open bucket: the C `Connection` where it is built.

    Every flow key of one connection must share one Connection (the buffer sees to it).
    """

    @property
    def name(self) -> str:
        """The connection, named as `mapping.key_fields` names it."""
        ...

    best: KeyVerdict | None
    """The highest verdict it reported in bucket `generation`, until that bucket is sealed."""
    generation: int
    """The open bucket that counted it last (buckets are numbered from 1)."""


class ConnectionPython:
    """`Connection` where the C helper is not built."""

    __slots__ = ("best", "generation", "name")

    def __init__(self, name: str) -> None:
        self.name: Final = name
        self.best: KeyVerdict | None = None
        self.generation = 0

    def __repr__(self) -> str:
        return f"Connection({self.name!r})"


class KeyVerdict(NamedTuple):
    """What a flow key reports. A tuple, so that the C version reads it by position."""

    connection: Connection
    """The connection: one object for all of its flow keys."""
    rank: int
    """The verdict's rank: a connection counts with the highest rank any of its keys reported."""
    edge: tuple[str, str, str]
    """(src_ns, dst_ns, action): the edge the connection counts for with this verdict."""
    edge_name: str
    """The edge as one string, the key it is counted under, for the same reason."""


class KeyVerdicts(Protocol):
    """Serialised FlowKey -> its verdict: the C `KeyTable` where it is built, else a dict."""

    def get(self, key: bytes, /) -> KeyVerdict | str | None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __setitem__(self, key: bytes, value: KeyVerdict | str, /) -> None: ...


def flow_head_python(data: bytes) -> FlowHead | None:
    """`flow_head` with protobuf doing the reading: the fallback where the C helper is not built.

    The key comes back re-serialised rather than as sent: it serves only to recognise a key
    seen before, and one key always serialises the same way.
    """
    try:
        flow = goldmane_pb2.FlowResult.FromString(data).flow
    except DecodeError:
        return None
    if not flow.HasField("Key"):
        return None
    return flow.Key.SerializeToString(), flow.start_time, flow.end_time


def read_key_python(key: bytes) -> KeyFields | None:
    """`read_key` with protobuf doing the reading; None where protobuf refuses the key."""
    try:
        return key_fields(goldmane_pb2.FlowKey.FromString(key))
    except DecodeError:
        return None


def keep_highest(verdict: KeyVerdict, generation: int, counted: list[Connection]) -> None:
    """Count `verdict` in the open bucket numbered `generation`, which has counted `counted`.

    Its connection joins `counted` the first time the bucket sees it, and keeps the verdict of
    the highest rank its keys reported there. The C `count_known` does the same.
    """
    connection = verdict.connection
    if connection.generation != generation:
        counted.append(connection)
        connection.generation = generation
        connection.best = verdict
    elif connection.best is None or connection.best.rank < verdict.rank:
        connection.best = verdict


def count_known_python(
    batch: list[bytes],
    index: int,
    verdicts: KeyVerdicts,
    open_start: int | None,
    open_end: int | None,
    generation: int,
    counted: list[Connection],
    skipped: dict[str, int],
    max_bytes: int,
) -> int:
    """Count batch[index:] while each result is simple; returns the index of the first that is not.

    Simple: it is at most `max_bytes` long, `flow_head` reads it, `verdicts` knows its key, it
    reports on the open bucket [open_start, open_end), numbered `generation`, and its key's
    verdict is either a KeyVerdict, counted by `keep_highest`, or a skip reason, counted in
    `skipped` (a skipped report of another bucket may open that bucket: the caller sees to
    it). The caller applies every rule to the result at the returned index and calls again
    after it.
    """
    while index < len(batch):
        if len(batch[index]) > max_bytes:
            return index
        head = flow_head_python(batch[index])
        if head is None:
            return index
        key, start, end = head
        verdict = verdicts.get(key)
        if verdict is None or open_start is None or start != open_start or end != open_end:
            return index
        if isinstance(verdict, tuple):
            keep_highest(verdict, generation, counted)
        else:
            skipped[verdict] = skipped.get(verdict, 0) + 1
        index += 1
    return index


_EDGE = operator.attrgetter("edge")
_EDGE_NAME = operator.attrgetter("edge_name")
_BEST = operator.attrgetter("best")


def seal_bucket_python(
    counted: list[Connection],
    start: int,
    end: int,
    connections: Counter[str],
    first_seen: dict[str, int],
    last_seen: dict[str, int],
    edges: dict[str, tuple[str, str, str]],
) -> None:
    """Count the sealed bucket [start, end): each connection once, for its highest verdict's edge.

    `counted` holds the bucket's connections, each with its highest verdict as `best`, which
    it lets go of once counted. Edges are counted under their names: `connections` gains one
    per connection, an edge not counted before gets `start` as its first_seen and its
    (src_ns, dst_ns, action) in `edges`, and every edge of the bucket gets `end` as its
    last_seen. Buckets are sealed in time order, so an edge's first bucket in these counts is
    its earliest and its last the latest. This version counts in a few collection operations
    per bucket.
    """
    verdicts: list[KeyVerdict] = list(map(_BEST, counted))
    if None in verdicts:
        raise TypeError("a counted Connection holds a KeyVerdict")
    for connection in counted:
        connection.best = None
    names = list(map(_EDGE_NAME, verdicts))
    known = len(connections)
    connections.update(names)
    if len(connections) > known:
        # Only a bucket that brings an edge new to these counts can set a first_seen.
        for name in names:
            first_seen.setdefault(name, start)
        edges.update(zip(names, map(_EDGE, verdicts), strict=True))
    last_seen.update(dict.fromkeys(names, end))


def new_key_table() -> KeyVerdicts:
    """An empty table of key verdicts, of the kind `count_known` takes."""
    if _KeyTable is None:
        return {}
    # Keyed by a random seed, so that flow keys made to collide cannot be worked out.
    return _KeyTable(secrets.randbits(64))


# The C helper's signatures are in _hotpath.pyi; the fallbacks above must match them.
try:
    from aggregator._hotpath import Connection as _Connection
    from aggregator._hotpath import KeyTable as _KeyTable
    from aggregator._hotpath import count_known as count_known
    from aggregator._hotpath import flow_head as flow_head
    from aggregator._hotpath import read_key as read_key
    from aggregator._hotpath import seal_bucket as seal_bucket
except ImportError:  # no C compiler at install: the same counts, slower
    _KeyTable = None  # type: ignore[assignment,misc]
    _Connection = ConnectionPython  # type: ignore[assignment,misc]
    count_known, flow_head = count_known_python, flow_head_python
    read_key = read_key_python
    seal_bucket = seal_bucket_python
new_connection: Final[Callable[[str], Connection]] = _Connection
"""new_connection(name): the Connection of that name, counted in no bucket yet."""
COMPILED: Final = _KeyTable is not None
"""Whether the C helper is in use (the daemon logs it: it decides the receive rate)."""
