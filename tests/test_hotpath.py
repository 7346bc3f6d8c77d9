"""The receive loop's reading of results: the C helper agrees with protobuf and the fallback."""

from __future__ import annotations

import gc
import random
import shutil
import sys
import sysconfig
import weakref
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from google.protobuf.message import DecodeError

from aggregator import buffer as buffer_module
from aggregator import hotpath
from aggregator.buffer import MAX_RESULT_BYTES, EdgeBuffer
from aggregator.hotpath import (
    Connection,
    ConnectionPython,
    KeyVerdict,
    KeyVerdicts,
    count_known_python,
    flow_head_python,
    read_key_python,
    seal_bucket_python,
)
from aggregator.mapping import SKIP_UNDECODABLE, KeyFields, key_fields
from aggregator.wire import goldmane_pb2 as pb
from tests.flows import BUCKET, flow_result, use_receive_path

T0 = 1_800_000_000

compiled = pytest.mark.skipif(not hotpath.COMPILED, reason="the C helper is not built")


def _compiler_available() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is not None


def test_the_c_helper_is_built_wherever_a_compiler_is() -> None:
    if not _compiler_available():
        pytest.skip("no C compiler: the Python receive path is the one in use")
    assert hotpath.COMPILED, "pip install -e . should have compiled aggregator/_hotpath.c"


# --- inputs ------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2, _varint(len(payload)) + payload)


def _random_result(rng: random.Random) -> pb.FlowResult:
    result = flow_result(
        rng.choice(["frontend", "api", "-", "kube-system", "Bad_Name", ""]),
        rng.choice(["api", "dbaas", "-", "frontend"]),
        # Times read as varints of every length from 1 to 10 bytes (8 and 9 on either side of
        # 2**56), ports of up to 9.
        start=rng.choice(
            [T0, T0 + BUCKET, 0, -5, 2**13, 2**20, 2**27, 2**40, 2**45, 2**52, 2**56 - 16, 2**56]
        ),
        port=rng.randrange(2 ** rng.choice([16, 16, 45, 52, 63])),
        reporter=rng.choice([pb.Src, pb.Dst, 9]),
        action=rng.choice([pb.Allow, pb.Deny, pb.Pass, 7]),
        result_id=rng.choice([0, 1, 2**31, 2**55, 2**62]),
    )
    result.flow.source_labels.extend(["app=web"] * rng.randrange(3))
    # Varints of every length from 1 to 9 bytes.
    result.flow.bytes_in = rng.randrange(2 ** rng.randrange(1, 63))
    if rng.random() < 0.1:
        result.flow.ClearField("Key")
    if rng.random() < 0.1:
        result.ClearField("flow")
    return result


def _layouts(rng: random.Random, result: pb.FlowResult) -> Iterator[bytes]:
    """The canonical encoding and encodings of the same or other meaning that protobuf allows."""
    canonical = result.SerializeToString()
    flow = result.flow.SerializeToString()
    key = result.flow.Key.SerializeToString()
    yield canonical
    # Fields in another order, unknown fields of every wire type, times given twice.
    times = _field(2, 0, _varint(T0 - 15)) + _field(3, 0, _varint(T0))
    unknowns = (
        _field(99, 0, _varint(2**63 + 5))
        + _field(98, 1, b"\x01" * 8)
        + _field(97, 5, b"\x02" * 4)
        + _length_delimited(96, b"junk")
    )
    reordered_flow = times + unknowns + _length_delimited(1, key) + flow[len(key) + 2 :]
    yield _length_delimited(2, reordered_flow) + _field(1, 0, _varint(7))
    yield _length_delimited(2, flow + times)
    # Flow or Key twice: protobuf merges them, so the reader must step aside.
    yield canonical + _length_delimited(2, _field(2, 0, _varint(T0 + 30)))
    yield _length_delimited(2, _length_delimited(1, key) + flow)
    # A group, a wire type that does not exist, a field 0.
    yield canonical + _field(50, 3, b"") + _field(50, 4, b"")
    yield canonical + _field(51, 6, b"")
    yield b"\x00\x00" + canonical
    # Truncated anywhere, and bytes flipped anywhere.
    cut = rng.randrange(len(canonical) + 1)
    yield canonical[:cut]
    damaged = bytearray(canonical)
    for _ in range(rng.randrange(1, 4)):
        if damaged:
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    yield bytes(damaged)
    # Overlong and over-long varints.
    yield _field(1, 0, b"\xff" * 10 + b"\x01") + _length_delimited(2, flow)
    yield _field(1, 0, b"\x80" * 9 + b"\x00") + _length_delimited(2, flow)
    yield _field(1, 0, b"\x81" + b"\x80" * 6 + b"\x00") + _length_delimited(2, flow)
    yield _length_delimited(2, flow + _field(3, 0, b"\x81" + b"\x80" * 6 + b"\x00"))


_DAMAGED = 9  # the index of the layout with flipped bytes


def _inputs(count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        yield from _layouts(rng, _random_result(rng))


# --- flow_head ----------------------------------------------------------------------------------


@compiled
@pytest.mark.parametrize("seed", range(4))
def test_the_c_flow_head_reads_what_protobuf_reads(seed: int) -> None:
    for data in _inputs(300, seed):
        head = hotpath.flow_head(data)
        try:
            decoded = pb.FlowResult.FromString(data)
        except DecodeError:
            continue  # protobuf refuses it; the buffer counts it as undecodable if C does too
        if head is None:
            continue  # the buffer decodes it with protobuf
        key, start, end = head
        assert pb.FlowKey.FromString(key) == decoded.flow.Key, data.hex()
        assert (start, end) == (decoded.flow.start_time, decoded.flow.end_time), data.hex()


@compiled
def test_the_c_flow_head_reads_what_protobuf_writes() -> None:
    for data in _inputs(200, seed=9):
        decoded = pb.FlowResult.FromString(data) if flow_head_python(data) else None
        if decoded is None:
            continue
        decoded.DiscardUnknownFields()  # kept, a field 1 sent as a varint would step aside
        canonical = decoded.SerializeToString()
        flow = decoded.flow
        expected = (flow.Key.SerializeToString(), flow.start_time, flow.end_time)
        assert hotpath.flow_head(canonical) == expected


@compiled
def test_the_c_flow_head_steps_aside_when_protobuf_would_merge_fields() -> None:
    result = flow_result(start=T0)
    twice = result.SerializeToString() + result.SerializeToString()
    key_twice = _length_delimited(2, result.flow.SerializeToString() * 2)
    assert hotpath.flow_head(twice) is None
    assert hotpath.flow_head(key_twice) is None


@compiled
def test_the_c_flow_head_refuses_what_protobuf_refuses_in_the_fields_it_walks() -> None:
    flow = _length_delimited(2, flow_result(start=T0).flow.SerializeToString())
    six_byte_tag = b"\x88\x80\x80\x80\x80\x00" + b"\x07"  # field 1, varint, tag padded
    for refused in (six_byte_tag + flow, flow[:-1], _field(2, 3, b"") + flow):
        with pytest.raises(DecodeError):
            pb.FlowResult.FromString(refused)
        assert hotpath.flow_head(refused) is None, refused.hex()
    with pytest.raises(ValueError, match="negative"):
        hotpath.count_known(
            [flow], -1, hotpath.new_key_table(), None, None, 0, [], {}, MAX_RESULT_BYTES
        )


@compiled
def test_the_c_flow_head_does_not_judge_fields_it_does_not_read() -> None:
    flow = flow_result(start=T0).flow.SerializeToString()
    not_utf8 = _length_delimited(2, flow + _length_delimited(4, b"\xff"))
    with pytest.raises(DecodeError):
        pb.FlowResult.FromString(not_utf8)
    assert hotpath.flow_head(not_utf8) is not None


def test_the_python_flow_head_is_what_protobuf_decodes() -> None:
    result = flow_result(start=T0)
    flow = result.flow
    expected = (flow.Key.SerializeToString(), flow.start_time, flow.end_time)
    assert flow_head_python(result.SerializeToString()) == expected
    assert flow_head_python(pb.FlowResult(id=1).SerializeToString()) is None
    assert flow_head_python(b"\xff\xff") is None


# --- read_key -----------------------------------------------------------------------------------

_NAMES = ["api", "dbaas", "-", "", "café", "名前", "a" * 200]


def _random_policy_hit(rng: random.Random, depth: int) -> pb.PolicyHit:
    hit = pb.PolicyHit(
        kind=rng.choice([0, 1, 5, 2**31 - 1]),
        namespace=rng.choice(_NAMES),
        name=rng.choice(_NAMES),
        tier=rng.choice(["default", ""]),
        action=rng.choice([pb.Allow, pb.Deny, -1]),
        policy_index=rng.choice([0, 3, -1]),
        rule_index=rng.choice([0, 2**40]),
    )
    if depth < 3 and rng.random() < 0.5:
        hit.trigger.CopyFrom(_random_policy_hit(rng, depth + 1))
    return hit


def _random_key(rng: random.Random) -> pb.FlowKey:
    key = pb.FlowKey(
        source_name=rng.choice(_NAMES),
        source_namespace=rng.choice(_NAMES),
        source_type=rng.choice([0, 1, 3, 99]),
        dest_name=rng.choice(_NAMES),
        dest_namespace=rng.choice(_NAMES),
        dest_type=rng.choice([0, 2]),
        dest_port=rng.choice([0, 80, 65535, -1, 2**40]),
        dest_service_name=rng.choice(_NAMES),
        dest_service_port=rng.choice([0, 443]),
        proto=rng.choice(["tcp", "udp", ""]),
        reporter=rng.choice([pb.Src, pb.Dst, 0, 9, -7, 2**31 - 1]),
        action=rng.choice([pb.Allow, pb.Deny, pb.Pass, 0, 7, -1]),
    )
    for policies in (key.policies.enforced_policies, key.policies.pending_policies):
        policies.extend(_random_policy_hit(rng, 0) for _ in range(rng.randrange(3)))
    return key


def _fields_apart(message: pb.FlowKey) -> list[bytes]:
    """Each field of a message serialised on its own: concatenated in any order, the same key."""
    parts = []
    for descriptor, _ in message.ListFields():
        single = pb.FlowKey()
        single.MergeFrom(message)
        for other, _ in message.ListFields():
            if other is not descriptor:
                single.ClearField(other.name)
        parts.append(single.SerializeToString())
    return parts


def _key_layouts(rng: random.Random, key: pb.FlowKey) -> Iterator[tuple[bytes, bool]]:
    """Encodings of a key, each with whether protobuf could have written it (C must read it)."""
    canonical = key.SerializeToString()
    yield canonical, True
    parts = _fields_apart(key)
    rng.shuffle(parts)
    yield b"".join(parts), True
    # Every field given twice: the last occurrence wins, the policy traces merge.
    yield _random_key(rng).SerializeToString() + canonical, True
    unknowns = (
        _field(99, 0, _varint(2**63 + 5))
        + _field(98, 1, b"\x01" * 8)
        + _field(97, 5, b"\x02" * 4)
        + _length_delimited(96, b"\xff not UTF-8: unknown fields are not read")
    )
    yield unknowns + canonical + unknowns, True
    # Enums and ports written in 10 bytes, with bits past 64.
    yield (
        canonical + _field(14, 0, b"\xff" * 9 + b"\x7f") + _field(7, 0, b"\x81" * 9 + b"\x01"),
        True,
    )
    # Not UTF-8, surrogates, overlong: in each string field, in a policy hit, in a trigger.
    for bad in (b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"ok\xe2\x82"):
        number = rng.choice([1, 2, 4, 5, 8, 9, 10, 12])
        yield canonical + _length_delimited(number, bad), False
        hit = _length_delimited(rng.choice([2, 3, 4]), bad)
        trigger = _length_delimited(8, _length_delimited(8, hit))
        yield canonical + _length_delimited(15, _length_delimited(rng.choice([1, 2]), hit)), False
        yield canonical + _length_delimited(15, _length_delimited(1, trigger)), False
    # A known field with another wire type (protobuf keeps it as an unknown field), a group, a
    # wire type that does not exist, a field 0, a trigger nested deeper than Calico's.
    yield canonical + _field(rng.choice([2, 5, 12, 15]), 0, _varint(3)), False
    yield canonical + _length_delimited(13, b"\x01"), False
    yield canonical + _length_delimited(15, _field(7, 3, b"") + _field(7, 4, b"")), False
    yield canonical + _field(51, 6, b""), False
    yield b"\x00\x00" + canonical, False
    deep = _length_delimited(3, b"deep")
    for _ in range(12):
        deep = _length_delimited(8, deep)
    yield canonical + _length_delimited(15, _length_delimited(1, deep)), False
    # Truncated anywhere, and bytes flipped anywhere.
    yield canonical[: rng.randrange(len(canonical) + 1)], False
    damaged = bytearray(canonical)
    for _ in range(rng.randrange(1, 4)):
        if damaged:
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    yield bytes(damaged), False


@compiled
@pytest.mark.parametrize("seed", range(4))
def test_the_c_read_key_reads_what_protobuf_reads(seed: int) -> None:
    rng = random.Random(seed)
    read = stepped_aside = 0
    for _ in range(300):
        for data, protobuf_could_write_it in _key_layouts(rng, _random_key(rng)):
            fields = hotpath.read_key(data)
            expected = read_key_python(data)
            if protobuf_could_write_it:
                assert fields is not None, data.hex()
            if fields is None:
                stepped_aside += 1  # the buffer asks protobuf
                continue
            # Where protobuf refuses a key, the C reader must too: else it would count it.
            assert fields == expected, data.hex()
            read += 1
    assert read > 1_000 and stepped_aside > 1_000  # both sides of the reader were exercised


def test_a_new_keys_verdict_is_a_whole_key_verdict() -> None:
    fields = key_fields(flow_result("frontend", "api", action=pb.Deny).flow.Key)
    connection = hotpath.new_connection(fields[4])
    verdict = buffer_module._key_verdict(fields, 3, connection)
    assert type(verdict) is KeyVerdict
    assert verdict == KeyVerdict(connection, 3, ("frontend", "api", "deny"), "frontend api deny")


def test_a_connection_is_named_by_its_six_fields_and_nothing_else() -> None:
    key = pb.FlowKey(
        source_name="web-1",
        source_namespace="frontend",
        dest_name="db-0",
        dest_namespace="dbaas",
        dest_port=5432,
        proto="tcp",
        reporter=pb.Src,
        action=pb.Allow,
    )
    readers = [lambda k: key_fields(k)[4]]
    if hotpath.COMPILED:
        readers.append(lambda k: hotpath.read_key(k.SerializeToString())[4])
    for read_connection in readers:
        connection = read_connection(key)
        same = pb.FlowKey()
        same.CopyFrom(key)
        same.reporter, same.action, same.dest_service_name, same.source_type = (
            pb.Dst,
            pb.Deny,
            "db",
            3,
        )
        same.policies.enforced_policies.add(name="allow-db")
        assert read_connection(same) == connection
        for name, other_value in [
            ("source_name", "web-2"),
            ("source_namespace", "frontend2"),
            ("dest_name", ""),
            ("dest_namespace", "dbaas2"),
            ("dest_port", 5433),
            ("proto", "udp"),
        ]:
            other = pb.FlowKey()
            other.CopyFrom(key)
            setattr(other, name, other_value)
            assert read_connection(other) != connection, name
        # A value that runs into the next field's cannot make two connections one.
        left = pb.FlowKey(source_name="a", dest_name="bc")
        right = pb.FlowKey(source_name="ab", dest_name="c")
        assert read_connection(left) != read_connection(right)


# --- KeyTable -----------------------------------------------------------------------------------


def _random_keys(rng: random.Random, count: int) -> list[bytes]:
    """Keys of every length up to 40 (the hash reads 16 bytes at a time), many sharing prefixes."""
    keys = {b""}
    while len(keys) < count:
        length = rng.randrange(41)
        prefix = rng.choice(sorted(keys))[:length]
        keys.add(prefix + rng.randbytes(length - len(prefix)))
    return sorted(keys)


@compiled
@pytest.mark.parametrize("seed", range(4))
def test_the_key_table_holds_what_a_dict_holds(seed: int) -> None:
    rng = random.Random(seed)
    table = hotpath.new_key_table()
    expected: dict[bytes, str] = {}
    keys = _random_keys(rng, 3_000)  # past several doublings of the table
    for round_number in range(3):
        for key in rng.sample(keys, len(keys)):
            value = f"{key.hex()}/{rng.randrange(3)}"
            table[key] = expected[key] = value
            assert table.get(key) == value
        assert len(table) == len(expected)
        assert all(table.get(key) == value for key, value in expected.items())
        assert table.get(b"not a key of this table, longer than any of them") is None
        if round_number == 1:
            table.clear()
            expected.clear()
            assert len(table) == 0
            assert all(key not in table for key in keys)


@compiled
def test_a_key_table_in_a_reference_cycle_is_collected() -> None:
    class Marker:
        pass

    class Key(bytes):
        table: KeyVerdicts
        marker: Marker

    table = hotpath.new_key_table()
    through_key, through_value = Marker(), Marker()
    key = Key(b"serialised key")
    key.table, key.marker = table, through_key
    table[key] = "self_edge"
    table[b"loop"] = (table, through_value)  # type: ignore[assignment]
    watched = [weakref.ref(through_key), weakref.ref(through_value)]
    del table, key, through_key, through_value
    gc.collect()
    assert [ref() for ref in watched] == [None, None]


@compiled
def test_the_key_table_refuses_what_is_not_a_key() -> None:
    table = hotpath.new_key_table()
    table[b"k"] = "self_edge"
    with pytest.raises(TypeError, match="bytes, not str"):
        table.get("k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clear"):
        del table[b"k"]  # type: ignore[attr-defined]
    assert table.get(b"k") == "self_edge"


# --- count_known --------------------------------------------------------------------------------


def _connection_type(implementation: Callable[..., object]) -> Callable[[str], Connection]:
    """The Connection that goes with the C or the Python version of a function."""
    is_python = implementation.__name__.endswith("_python")
    return ConnectionPython if is_python else hotpath.new_connection


def _counted(counted: list[Connection]) -> list[tuple[object, ...]]:
    """What a bucket counted, comparable between the C and the Python Connection."""
    return [
        (c.name, None if c.best is None else (c.best.connection is c, *c.best[1:])) for c in counted
    ]


def _count_known_case(
    seed: int, connection_type: Callable[[str], Connection]
) -> tuple[list[bytes], dict[bytes, KeyVerdict | str]]:
    """A batch of results in every layout, and verdicts for most of their keys (as a dict)."""
    rng = random.Random(seed)
    results = [_random_result(rng) for _ in range(40)]
    batch = [data for result in results for data in list(_layouts(rng, result))[:3]]
    verdicts: dict[bytes, KeyVerdict | str] = {}
    # Keys of one connection share its Connection, as in the buffer.
    connections: dict[str, Connection] = {}
    for result in results:
        if rng.random() < 0.8:
            key = result.flow.Key
            name = repr((key.source_namespace, key.dest_namespace, key.dest_port))
            connection = connections.setdefault(name, connection_type(name))
            edge = (key.source_namespace, key.dest_namespace, "allow")
            verdicts[key.SerializeToString()] = rng.choice(
                [KeyVerdict(connection, rng.randrange(4), edge, repr(edge)), "self_edge"]
            )
    return batch, verdicts


def _key_table(verdicts: dict[bytes, KeyVerdict | str]) -> KeyVerdicts:
    table = hotpath.new_key_table()
    for key, verdict in verdicts.items():
        table[key] = verdict
    return table


def _run_count_known(
    count_known: Callable[..., int], seed: int
) -> tuple[list[int], list[tuple[object, ...]], dict[str, int]]:
    batch, verdict_dict = _count_known_case(seed, _connection_type(count_known))
    verdicts = verdict_dict if count_known is count_known_python else _key_table(verdict_dict)
    skipped: dict[str, int] = {}
    counted: list[Connection] = []
    stops = []
    index = 0
    while index < len(batch):
        index = count_known(
            batch, index, verdicts, T0, T0 + BUCKET, 1, counted, skipped, MAX_RESULT_BYTES
        )
        stops.append(index)
        index += 1
    return stops, _counted(counted), skipped


@compiled
@pytest.mark.parametrize("seed", range(8))
def test_the_c_count_known_agrees_with_the_python_one(seed: int) -> None:
    assert _run_count_known(hotpath.count_known, seed) == _run_count_known(count_known_python, seed)


@pytest.mark.parametrize("count", [hotpath.count_known, count_known_python])
def test_count_known_stops_where_the_buffer_must_apply_every_rule(
    count: Callable[..., int],
) -> None:
    known = flow_result(start=T0)
    key = known.flow.Key.SerializeToString()
    edge = ("frontend", "api", "allow")
    verdict = KeyVerdict(_connection_type(count)("c"), 2, edge, repr(edge))
    unknown = flow_result(src_ns="other", start=T0)
    later = flow_result(start=T0 + BUCKET)
    oversized = flow_result(start=T0)
    oversized.flow.source_labels.append("app=" + "x" * 100)
    limit = known.ByteSize() + 50
    batch = [
        known.SerializeToString(),
        unknown.SerializeToString(),
        later.SerializeToString(),
        b"\xff",
        oversized.SerializeToString(),
    ]
    counted: list[Connection] = []
    known_keys = _key_table({key: verdict})
    assert count(batch, 0, known_keys, T0, T0 + BUCKET, 1, counted, {}, limit) == 1
    assert counted == [verdict.connection]
    assert verdict.connection.best is verdict
    assert count(batch, 2, known_keys, T0, T0 + BUCKET, 1, counted, {}, limit) == 2
    assert count(batch, 3, known_keys, T0, T0 + BUCKET, 1, counted, {}, limit) == 3
    assert count(batch, 4, known_keys, T0, T0 + BUCKET, 1, counted, {}, limit) == 4
    assert count(batch, 4, known_keys, T0, T0 + BUCKET, 1, counted, {}, 2 * limit) == 5
    assert count(batch, 0, known_keys, None, None, 1, counted, {}, limit) == 0
    assert counted == [verdict.connection]  # the oversized one is the same key, same bucket


@pytest.mark.parametrize("count", [hotpath.count_known, count_known_python])
def test_count_known_counts_a_connection_once_per_bucket_with_its_highest_verdict(
    count: Callable[..., int],
) -> None:
    edge = ("frontend", "api", "allow")
    connection = _connection_type(count)("c")
    by_source = flow_result(start=T0, reporter=pb.Src)
    by_destination = flow_result(start=T0, reporter=pb.Dst)
    lower = KeyVerdict(connection, 1, edge, "lower")
    higher = KeyVerdict(connection, 3, edge, "higher")
    known_keys = _key_table(
        {
            by_source.flow.Key.SerializeToString(): lower,
            by_destination.flow.Key.SerializeToString(): higher,
        }
    )
    batch = [by_source.SerializeToString(), by_destination.SerializeToString()] * 2
    counted: list[Connection] = []
    assert count(batch, 0, known_keys, T0, T0 + BUCKET, 7, counted, {}, MAX_RESULT_BYTES) == 4
    assert counted == [connection]
    assert connection.best is higher and connection.generation == 7
    # The next bucket (another generation) counts it afresh, from its first verdict.
    counted = []
    assert count(batch[:1], 0, known_keys, T0, T0 + BUCKET, 8, counted, {}, MAX_RESULT_BYTES) == 1
    assert counted == [connection] and connection.best is lower


@compiled
def test_the_c_count_known_stops_at_the_first_result_it_cannot_count_whatever_it_read_ahead() -> (
    None
):
    known = flow_result(start=T0)
    edge = ("frontend", "api", "allow")
    verdict = KeyVerdict(hotpath.new_connection("c"), 2, edge, repr(edge))
    refused = flow_result(src_ns="refused", start=T0)
    no_connection = ("c", 1, edge, "no connection")
    known_keys = _key_table(
        {
            known.flow.Key.SerializeToString(): verdict,
            refused.flow.Key.SerializeToString(): no_connection,  # type: ignore[dict-item]
        }
    )
    # Distinct objects, so that a reference kept to any of them shows in its count.
    batch = [known.SerializeToString() for _ in range(60)]
    batch[37] = flow_result(src_ns="unknown", start=T0).SerializeToString()
    batch[45] = refused.SerializeToString()
    references = [sys.getrefcount(data) for data in batch]
    counted: list[Connection] = []
    assert hotpath.count_known(batch, 3, known_keys, T0, T0 + BUCKET, 1, counted, {}, 2_000) == 37
    assert counted == [verdict.connection]
    with pytest.raises(TypeError, match="Connection"):
        hotpath.count_known(batch, 38, known_keys, T0, T0 + BUCKET, 1, counted, {}, 2_000)
    assert [sys.getrefcount(data) for data in batch] == references


@compiled
def test_the_c_count_known_refuses_a_verdict_without_a_connection() -> None:
    result = flow_result(start=T0)
    no_connection = ("c", 1, ("a", "b", "allow"), "a b allow")
    known_keys = _key_table({result.flow.Key.SerializeToString(): no_connection})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="Connection"):
        hotpath.count_known(
            [result.SerializeToString()], 0, known_keys, T0, T0 + BUCKET, 1, [], {}, 1_000
        )


@compiled
def test_a_connection_in_a_reference_cycle_is_collected() -> None:
    class Marker:
        pass

    marker = Marker()
    connection = hotpath.new_connection("c")
    # Its verdict refers to it, as every verdict refers to its connection.
    connection.best = KeyVerdict(connection, 1, ("a", "b", "allow"), marker)  # type: ignore[arg-type]
    watched = weakref.ref(marker)
    del connection, marker
    gc.collect()
    assert watched() is None


# --- seal_bucket ---------------------------------------------------------------------------------


def _bucket_of(
    connection_type: Callable[[str], Connection],
    verdicts: dict[str, tuple[int, tuple[str, str, str]]],
) -> list[Connection]:
    """The counted list of a bucket: a Connection per name, holding its verdict."""
    counted = []
    for name, (rank, edge) in verdicts.items():
        connection = connection_type(name)
        connection.best = KeyVerdict(connection, rank, edge, " ".join(edge))
        counted.append(connection)
    return counted


def _sealed_counts(seal_bucket: Callable[..., None], seed: int) -> tuple[object, ...]:
    """Counts after sealing random buckets in time order, edges recurring from bucket to bucket."""
    rng = random.Random(seed)
    connections: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    edges: dict[str, tuple[str, str, str]] = {}
    for bucket in range(6):
        verdicts = {}
        for connection in rng.sample(range(30), rng.randrange(30)):
            edge = (f"ns-{connection % 7}", "api", rng.choice(["allow", "deny"]))
            verdicts[f"c{connection}"] = (rng.randrange(4), edge)
        counted = _bucket_of(_connection_type(seal_bucket), verdicts)
        start = T0 + bucket * BUCKET
        seal_bucket(counted, start, start + BUCKET, connections, first_seen, last_seen, edges)
    return connections, first_seen, last_seen, edges


@compiled
@pytest.mark.parametrize("seed", range(4))
def test_the_c_seal_bucket_counts_what_the_python_one_counts(seed: int) -> None:
    assert _sealed_counts(hotpath.seal_bucket, seed) == _sealed_counts(seal_bucket_python, seed)


@pytest.mark.parametrize("seal_bucket", [hotpath.seal_bucket, seal_bucket_python])
def test_seal_bucket_counts_each_connection_once_from_the_edges_first_bucket_to_its_last(
    seal_bucket: Callable[..., None],
) -> None:
    allowed, denied, new = ("web", "api", "allow"), ("web", "db", "deny"), ("job", "db", "allow")
    buckets = [
        {"c1": (1, allowed), "c2": (1, allowed), "c3": (1, denied)},
        {"c1": (1, allowed), "c4": (1, new)},
        {"c3": (1, denied)},
    ]
    connections: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    edges: dict[str, tuple[str, str, str]] = {}
    for number, verdicts in enumerate(buckets):
        start = T0 + number * BUCKET
        counted = _bucket_of(_connection_type(seal_bucket), verdicts)
        seal_bucket(counted, start, start + BUCKET, connections, first_seen, last_seen, edges)
        # Counted, a connection lets go of its verdict (which refers back to it).
        assert [connection.best for connection in counted] == [None] * len(counted)
    assert connections == {"web api allow": 3, "web db deny": 2, "job db allow": 1}
    assert first_seen == {"web api allow": T0, "web db deny": T0, "job db allow": T0 + BUCKET}
    assert last_seen == {
        "web api allow": T0 + 2 * BUCKET,
        "web db deny": T0 + 3 * BUCKET,
        "job db allow": T0 + 2 * BUCKET,
    }
    assert edges == {"web api allow": allowed, "web db deny": denied, "job db allow": new}


@pytest.mark.parametrize("seal_bucket", [hotpath.seal_bucket, seal_bucket_python])
def test_seal_bucket_refuses_a_connection_that_holds_no_key_verdict(
    seal_bucket: Callable[..., None],
) -> None:
    connection = _connection_type(seal_bucket)("c")
    with pytest.raises(TypeError, match="KeyVerdict"):
        seal_bucket([connection], T0, T0 + BUCKET, Counter(), {}, {}, {})


@compiled
def test_the_c_seal_bucket_refuses_what_is_not_a_counted_connection() -> None:
    connection = hotpath.new_connection("c")
    connection.best = ("c", 1)  # type: ignore[assignment]
    for counted in ([connection], [("c", 1)]):
        with pytest.raises(TypeError, match="KeyVerdict"):
            hotpath.seal_bucket(counted, T0, T0 + BUCKET, Counter(), {}, {}, {})


# --- the buffer on either implementation ---------------------------------------------------------


def _stream(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    stream = []
    for bucket in range(6):
        for _ in range(60):
            result = _random_result(rng)
            if result.flow.start_time in (T0, T0 + BUCKET):
                result.flow.start_time = T0 + bucket * BUCKET
                result.flow.end_time = result.flow.start_time + BUCKET
            layouts = list(_layouts(rng, result))
            # Not the damaged one: a flipped byte in a label is a difference of readers.
            del layouts[_DAMAGED]
            stream.extend(rng.sample(layouts, rng.randrange(1, 4)))
    return stream


def _outcome(stream: list[bytes]) -> tuple[object, ...]:
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0 + 6 * BUCKET)
    buffer.consume(stream)
    open_and_sealed = buffer.sizes()
    batch = buffer.take()
    return batch.edges, batch.sealed_until, buffer.skipped, buffer.received, open_and_sealed


@pytest.mark.parametrize("seed", range(3))
def test_the_buffer_counts_the_same_on_the_python_receive_path(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _stream(seed)
    in_use = _outcome(stream)
    use_receive_path("python", monkeypatch)
    assert _outcome(stream) == in_use


@pytest.mark.parametrize("receive_path", ["in use", "python"])
def test_the_buffer_counts_the_same_when_its_key_cache_fills_within_a_batch(
    receive_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_receive_path(receive_path, monkeypatch)
    stream = _stream(7)
    unbounded = _outcome(stream)
    # A batch's new keys are learnt in one pass: a cache this small fills within a batch,
    # and starts again from empty within others.
    monkeypatch.setattr(buffer_module, "_KEY_CACHE_LIMIT", 5)
    assert _outcome(stream) == unbounded


@pytest.mark.parametrize("length", [0, 1, 255, 256, 257, 600])
def test_consume_counts_a_whole_stream_while_the_flusher_drains_the_queue_between_results(
    length: int,
) -> None:
    stream = [
        flow_result(f"ns-{number}", "api", start=T0).SerializeToString() for number in range(length)
    ]
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0 + BUCKET)

    def delivered() -> Iterator[bytes]:
        for data in stream:
            yield data
            buffer.count_queued()  # as the flusher's thread may, in the middle of a batch

    buffer.consume(delivered())
    assert buffer.received == length
    assert buffer.sizes() == (length, 0)


def _counting_key_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The FlowKeys the buffer reads from now on (by the receive path in use)."""
    decoded: list[bytes] = []
    read_key = buffer_module.read_key

    def counting_read_key(key: bytes) -> KeyFields | None:
        decoded.append(key)
        return read_key(key)

    monkeypatch.setattr(buffer_module, "read_key", counting_read_key)
    return decoded


@pytest.mark.parametrize("batch_size", [256, 3])
@pytest.mark.parametrize("receive_path", ["in use", "python"])
def test_past_its_limit_the_key_cache_keeps_the_keys_it_holds(
    receive_path: str, batch_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_receive_path(receive_path, monkeypatch)
    # 3: a batch's new keys are learnt again and again once the cache is full.
    monkeypatch.setattr(buffer_module, "_BATCH_SIZE", batch_size)
    # Five connections report in each of eight buckets; the cache holds four keys.
    stream = [
        flow_result(f"ns-{connection}", "api", start=T0 + bucket * BUCKET).SerializeToString()
        for bucket in range(8)
        for connection in range(5)
    ]
    unbounded = _outcome(stream)
    monkeypatch.setattr(buffer_module, "_KEY_CACHE_LIMIT", 4)
    decoded = _counting_key_decodes(monkeypatch)
    assert _outcome(stream) == unbounded
    # The fifth key is decoded in every bucket; after four such decodes the cache starts
    # again from empty, so the first and fifth buckets decode all five keys: 5+1+1+1 twice.
    assert len(decoded) == 16
    # What the flow_keys_decoded metric reports.
    decoded.clear()
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0 + 6 * BUCKET)
    buffer.consume(stream)
    buffer.count_queued()
    assert buffer.keys_decoded == len(decoded) == 16


def test_a_key_protobuf_refuses_is_decoded_once_not_once_per_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = _counting_key_decodes(monkeypatch)
    # A key truncated inside: the C reader does not look into keys, protobuf refuses it.
    truncated_key = _length_delimited(1, b"\x0a\x05ab")
    times = _field(2, 0, _varint(T0)) + _field(3, 0, _varint(T0 + BUCKET))
    result = _length_delimited(2, truncated_key + times)
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0 + BUCKET)
    buffer.consume([result] * 1_000)
    buffer.count_queued()
    assert buffer.skipped == {SKIP_UNDECODABLE: 1_000}
    assert len(decoded) <= 1  # none where protobuf refuses the whole result (no C helper)


def test_a_result_protobuf_cannot_read_is_skipped_as_undecodable() -> None:
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0)
    bad_key = _length_delimited(2, _length_delimited(1, b"\x0a\x05ab"))
    buffer.consume([b"\xff\xff", bad_key, flow_result(start=T0).SerializeToString()])
    buffer.count_queued()
    assert buffer.skipped == {SKIP_UNDECODABLE: 2}
    assert buffer.received == 3
    assert buffer.sizes() == (1, 0)


def test_a_result_with_its_flow_sent_twice_counts_as_protobuf_merges_it() -> None:
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0 + 2 * BUCKET)
    first = flow_result(start=T0).SerializeToString()
    # Protobuf merges the second flow into the first: the bucket is the second's.
    moved = first + _length_delimited(
        2, _field(2, 0, _varint(T0 + BUCKET)) + _field(3, 0, _varint(T0 + 2 * BUCKET))
    )
    buffer.consume([moved, flow_result("zz", "yy", start=T0 + 2 * BUCKET).SerializeToString()])
    edges = buffer.take().edges
    assert edges[("frontend", "api", "allow")].first_seen == T0 + BUCKET
