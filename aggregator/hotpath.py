"""The receive loop's work per result, without decoding the result: in C when built, else Python.

The trail needs three things from each ~540-byte FlowResult: the FlowKey (which connection,
which verdict) and the flow's start and end time. Decoding the whole message, labels and
counters included, and then coalescing it in Python cost more than gRPC's own work per
result, and the receive rate is what decides whether a big cluster's trail is complete. So
`flow_head` finds the three by walking the protobuf wire format, the FlowKey stays raw bytes
(the buffer decodes each distinct key once and remembers its verdict), and `count_known`
counts a run of results whose keys are known into the open bucket.

Both functions exist twice with one meaning: in C (`_hotpath.c`, compiled at install when
a C compiler is there) and in Python below, the reference, used when it is not.
tests/test_hotpath.py checks that the two agree.

The layout rule of `flow_head`: the FlowResult holds field 2 (`flow`) exactly once, and that
Flow field 1 (`Key`) exactly once, both length-delimited; `start_time` and `end_time`
(fields 2 and 3 of Flow) are varints, the last occurrence wins and absent is 0, as protobuf
reads them. Anything else (a group, a wire type that does not exist, a field that runs past
its message) gives None, and the caller decodes the message the ordinary way: protobuf is the
authority on what an unusual message means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Final, NamedTuple

FlowHead = tuple[bytes, int, int]
"""(serialised FlowKey, start_time, end_time)"""


class KeyVerdict(NamedTuple):
    """What a flow key reports. A tuple, so that the C version reads it by position."""

    connection: str
    """The connection, as one string: Python computes a string's hash once, a tuple's each time."""
    rank: int
    """The verdict's rank: a connection counts with the highest rank any of its keys reported."""
    edge: tuple[str, str, str]
    """(src_ns, dst_ns, action): the edge the connection counts for with this verdict."""


_FLOW_FIELD: Final = 2  # FlowResult.flow
_KEY_FIELD: Final = 1  # Flow.Key
_START_FIELD: Final = 2  # Flow.start_time
_END_FIELD: Final = 3  # Flow.end_time
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES: Final = 10
_MAX_TAG: Final = 2**32 - 1


class _Malformed(Exception):
    pass


def _read_varint(data: bytes, position: int, end: int) -> tuple[int, int]:
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if position >= end:
            break
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, position
    raise _Malformed


def _as_int64(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _scan(data: bytes, position: int, end: int, wanted: int, times: list[int] | None) -> range:
    """Where the one occurrence of length-delimited field `wanted` lies in data[position:end].

    In `times`, when given, the last varint fields 2 and 3 (a Flow's start and end time).
    """
    found: range | None = None
    while position < end:
        tag, position = _read_varint(data, position, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0 or tag > _MAX_TAG:
            raise _Malformed
        if number == wanted:
            if wire_type != _LENGTH_DELIMITED or found is not None:
                raise _Malformed
            length, position = _read_varint(data, position, end)
            if length > end - position:
                raise _Malformed
            found = range(position, position + length)
            position += length
        elif times is not None and number in (_START_FIELD, _END_FIELD):
            if wire_type != _VARINT:
                raise _Malformed
            value, position = _read_varint(data, position, end)
            times[number - _START_FIELD] = _as_int64(value)
        elif wire_type == _VARINT:
            _, position = _read_varint(data, position, end)
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position, end)
            if length > end - position:
                raise _Malformed
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
            if position > end:
                raise _Malformed
        else:
            raise _Malformed
    if found is None:
        raise _Malformed
    return found


def flow_head_python(data: bytes) -> FlowHead | None:
    """The pure-Python `flow_head`: the reference the C helper is tested against."""
    try:
        flow = _scan(data, 0, len(data), _FLOW_FIELD, None)
        times = [0, 0]
        key = _scan(data, flow.start, flow.stop, _KEY_FIELD, times)
    except _Malformed:
        return None
    return data[key.start : key.stop], times[0], times[1]


def count_known_python(
    batch: list[bytes],
    index: int,
    verdicts: Mapping[bytes, KeyVerdict | str],
    open_start: int | None,
    open_end: int | None,
    open_verdicts: dict[str, KeyVerdict],
    skipped: dict[str, int],
) -> int:
    """Count batch[index:] while each result is simple; returns the index of the first that is not.

    Simple: `flow_head` reads it, `verdicts` knows its key, and the key's verdict is either a
    KeyVerdict for the open bucket [open_start, open_end), kept in `open_verdicts` when it is
    the highest its connection had there, or a skip reason, counted in `skipped`. The caller
    applies every rule to the result at the returned index and calls again after it.
    """
    while index < len(batch):
        head = flow_head_python(batch[index])
        if head is None:
            return index
        key, start, end = head
        verdict = verdicts.get(key)
        if isinstance(verdict, tuple):
            if open_start is None or start != open_start or end != open_end:
                return index
            best = open_verdicts.get(verdict.connection)
            if best is None or best.rank < verdict.rank:
                open_verdicts[verdict.connection] = verdict
        elif verdict is not None:
            skipped[verdict] = skipped.get(verdict, 0) + 1
        else:
            return index
        index += 1
    return index


_compiled: ModuleType | None
try:
    from aggregator import _hotpath as _compiled
except ImportError:  # no C compiler at install: the same rules, slower
    _compiled = None

flow_head: Final[Callable[[bytes], FlowHead | None]] = (
    _compiled.flow_head if _compiled else flow_head_python
)
count_known: Final[
    Callable[
        [
            list[bytes],
            int,
            Mapping[bytes, KeyVerdict | str],
            int | None,
            int | None,
            dict[str, KeyVerdict],
            dict[str, int],
        ],
        int,
    ]
] = _compiled.count_known if _compiled else count_known_python
COMPILED: Final = _compiled is not None
"""Whether the C versions are in use (the daemon logs it: it decides the receive rate)."""
