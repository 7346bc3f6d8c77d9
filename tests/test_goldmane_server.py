"""Behaviour of the Goldmane-compatible server, driven over real mTLS by a raw gRPC client."""

from __future__ import annotations

import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from aggregator.goldmane_server import MAX_STREAMS, GoldmaneServer
from aggregator.pki import GOLDMANE_SERVER_NAMES, Pki, make_pki
from aggregator.wire import goldmane_pb2, goldmane_pb2_grpc

# A multiple of 15, so T0 + 15*i is the start of bucket i.
T0 = 15 * 113_333_333
# Backstop for every blocking read: a server bug fails the test instead of hanging the suite.
READ_TIMEOUT = 2.0


class ManualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = now


class StreamReader:
    """Pumps one Stream call into a queue from a thread, so every read can time out."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._items: queue.Queue[goldmane_pb2.FlowResult | grpc.RpcError | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for result in self._call:
                self._items.put(result)
            self._items.put(None)
        except grpc.RpcError as error:
            self._items.put(error)

    def take(self, count: int) -> list[goldmane_pb2.FlowResult]:
        results: list[goldmane_pb2.FlowResult] = []
        deadline = time.monotonic() + READ_TIMEOUT
        while len(results) < count:
            item = self._items.get(timeout=max(0.0, deadline - time.monotonic()))
            if not isinstance(item, goldmane_pb2.FlowResult):
                pytest.fail(f"stream ended ({item!r}) after {len(results)} of {count} results")
            results.append(item)
        return results

    def end(self) -> grpc.StatusCode:
        """The status the stream ends with, failing if it sends another result first."""
        item = self._items.get(timeout=READ_TIMEOUT)
        assert isinstance(item, grpc.RpcError), f"expected the stream to end, got {item!r}"
        code: grpc.StatusCode = item.code()
        return code

    def cancel(self) -> None:
        self._call.cancel()


@dataclass
class Harness:
    server: GoldmaneServer
    clock: ManualClock
    pki: Pki
    port: int
    readers: list[StreamReader] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, *, client: Pki | None = None, override: bool = True) -> grpc.Channel:
        identity = client or self.pki
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca_cert.read_bytes(),
            private_key=identity.client_key.read_bytes(),
            certificate_chain=identity.client_cert.read_bytes(),
        )
        options = [("grpc.ssl_target_name_override", "goldmane")] if override else []
        channel = grpc.secure_channel(f"127.0.0.1:{self.port}", credentials, options=options)
        self.channels.append(channel)
        return channel

    def call(self, start_time_gte: int = 0, **channel_args: Any) -> Any:
        stub = goldmane_pb2_grpc.FlowsStub(self.channel(**channel_args))
        request = goldmane_pb2.FlowStreamRequest(start_time_gte=start_time_gte)
        return stub.Stream(request, timeout=10 * READ_TIMEOUT)

    def open(self, start_time_gte: int = 0) -> StreamReader:
        """Open a stream and wait until the server has registered it for live pushes."""
        registered = len(self.server.requests) + 1
        reader = StreamReader(self.call(start_time_gte))
        self.readers.append(reader)
        wait_until(lambda: len(self.server.requests) >= registered)
        return reader

    def publish(self, names: list[str]) -> None:
        """Record one flow per name in consecutive buckets from T0 and publish them all."""
        for index, name in enumerate(names):
            self.server.record(flow_key(name), at=T0 + 15 * index + 1)
        self.clock.set(T0 + 15 * (len(names) + 1) + 1)
        assert self.server.rollover() == len(names)

    def push_live(self, name: str) -> None:
        """Record a flow in the current bucket and roll the clock until it is pushed."""
        bucket = int(self.clock.now) // 15 * 15
        self.server.record(flow_key(name), at=bucket + 1)
        self.clock.set(bucket + 30)
        assert self.server.rollover() == 1


HarnessFactory = Callable[..., Harness]


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[HarnessFactory]:
    harnesses: list[Harness] = []

    def make(**server_args: Any) -> Harness:
        clock = ManualClock(T0 + 1)
        pki = make_pki(tmp_path / f"pki{len(harnesses)}")
        server = GoldmaneServer(clock=clock, **{"auto_rollover": False, **server_args})
        harness = Harness(server, clock, pki, server.start(tls=pki))
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        for reader in harness.readers:
            reader.cancel()
        for channel in harness.channels:
            channel.close()
        harness.server.stop()


@pytest.fixture
def goldmane(make_harness: HarnessFactory) -> Harness:
    return make_harness()


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READ_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(0.005)


def flow_key(
    source: str, *, reporter: goldmane_pb2.Reporter = goldmane_pb2.Src
) -> goldmane_pb2.FlowKey:
    return goldmane_pb2.FlowKey(
        source_name=source,
        source_namespace="shop",
        source_type=goldmane_pb2.WorkloadEndpoint,
        dest_name="backend-*",
        dest_namespace="shop",
        dest_type=goldmane_pb2.WorkloadEndpoint,
        dest_port=8080,
        proto="tcp",
        reporter=reporter,
        action=goldmane_pb2.Allow,
    )


def sources(results: list[goldmane_pb2.FlowResult]) -> list[tuple[int, str]]:
    return [(r.flow.start_time - T0, r.flow.Key.source_name) for r in results]


def test_flows_are_bucketed_on_15_second_boundaries(goldmane: Harness) -> None:
    goldmane.server.record(flow_key("a"), at=T0)
    goldmane.server.record(flow_key("a"), at=T0 + 14.999)
    goldmane.server.record(flow_key("a"), at=T0 + 15)
    goldmane.clock.set(T0 + 45)
    assert goldmane.server.rollover() == 2

    first, second = goldmane.open(T0).take(2)

    assert (first.flow.start_time, first.flow.end_time) == (T0, T0 + 15)
    assert first.flow.packets_in == 2
    assert (second.flow.start_time, second.flow.end_time) == (T0 + 15, T0 + 30)
    assert second.flow.packets_in == 1


def test_one_result_per_key_per_bucket_sums_stats_and_keeps_common_labels(
    goldmane: Harness,
) -> None:
    server = goldmane.server
    server.record(
        flow_key("a"),
        at=T0 + 1,
        packets_in=3,
        bytes_out=500,
        connections_started=2,
        source_labels=["tier=web", "app=shop"],
        dest_labels=["app=db"],
    )
    server.record(
        flow_key("a"),
        at=T0 + 9,
        packets_in=4,
        bytes_out=1,
        connections_completed=1,
        source_labels=["app=shop", "team=x"],
        dest_labels=["app=db"],
    )
    server.record(flow_key("b"), at=T0 + 2)
    goldmane.clock.set(T0 + 30)
    server.rollover()

    a, b = goldmane.open(T0).take(2)

    assert sources([a, b]) == [(0, "a"), (0, "b")]
    assert (a.flow.packets_in, a.flow.packets_out, a.flow.bytes_in, a.flow.bytes_out) == (
        7,
        2,
        200,
        501,
    )
    assert a.flow.num_connections_started == 3
    assert a.flow.num_connections_completed == 1
    assert list(a.flow.source_labels) == ["app=shop"]
    assert list(a.flow.dest_labels) == ["app=db"]


def test_key_is_sent_for_every_bucket_with_an_id_counted_per_key(goldmane: Harness) -> None:
    server = goldmane.server
    server.record(flow_key("a"), at=T0 + 1)
    server.record(flow_key("a"), at=T0 + 16)
    server.record(flow_key("b"), at=T0 + 17)
    goldmane.clock.set(T0 + 45)
    server.rollover()

    results = goldmane.open(T0).take(3)

    assert sources(results) == [(0, "a"), (15, "a"), (15, "b")]
    assert [r.id for r in results] == [1, 2, 1]


def test_connection_is_reported_by_both_ends_unless_denied_at_source(goldmane: Harness) -> None:
    server = goldmane.server
    server.record_connection(
        src_ns="shop",
        src_name="frontend-*",
        dst_ns="db",
        dst_name="postgres-*",
        dst_port=5432,
        dst_action=goldmane_pb2.Deny,
        at=T0 + 1,
    )
    server.record_connection(
        src_ns="shop",
        src_name="crawler-*",
        dst_ns="db",
        dst_name="postgres-*",
        dst_port=5432,
        src_action=goldmane_pb2.Deny,
        at=T0 + 2,
    )
    goldmane.clock.set(T0 + 30)
    server.rollover()

    reader = goldmane.open(T0)
    goldmane.push_live("marker")
    *results, marker = reader.take(4)

    reports = [(r.flow.Key.source_name, r.flow.Key.reporter, r.flow.Key.action) for r in results]
    assert reports == [
        ("frontend-*", goldmane_pb2.Src, goldmane_pb2.Allow),
        ("frontend-*", goldmane_pb2.Dst, goldmane_pb2.Deny),
        ("crawler-*", goldmane_pb2.Src, goldmane_pb2.Deny),
    ]
    assert marker.flow.Key.source_name == "marker"
    for result in results:
        key = result.flow.Key
        assert (key.source_namespace, key.dest_namespace, key.dest_port) == ("shop", "db", 5432)
        assert key.source_type == key.dest_type == goldmane_pb2.WorkloadEndpoint
    with pytest.raises(ValueError):
        server.record_connection(
            src_ns="a",
            src_name="x-*",
            dst_ns="b",
            dst_name="y-*",
            dst_port=80,
            src_action=goldmane_pb2.Deny,
            dst_action=goldmane_pb2.Allow,
        )


def test_rollover_pushes_the_bucket_from_30_to_15_seconds_ago(goldmane: Harness) -> None:
    reader = goldmane.open()
    goldmane.server.record(flow_key("a"), at=T0 + 1)

    goldmane.clock.set(T0 + 15)
    assert goldmane.server.rollover() == 0
    goldmane.clock.set(T0 + 29.9)
    assert goldmane.server.rollover() == 0
    goldmane.clock.set(T0 + 30)
    assert goldmane.server.rollover() == 1

    assert sources(reader.take(1)) == [(0, "a")]


def test_late_data_for_a_published_bucket_is_never_streamed(goldmane: Harness) -> None:
    reader = goldmane.open()
    goldmane.server.record(flow_key("a"), at=T0 + 1)
    goldmane.clock.set(T0 + 30)
    goldmane.server.rollover()
    assert reader.take(1)[0].flow.packets_in == 1

    goldmane.server.record(flow_key("a"), at=T0 + 2, packets_in=1000)
    goldmane.push_live("marker")

    assert sources(reader.take(1)) == [(30, "marker")]
    assert goldmane.open(T0).take(1)[0].flow.packets_in == 1


def test_backfill_from_absolute_time_starts_at_the_bucket_containing_it(
    goldmane: Harness,
) -> None:
    goldmane.publish(["b0", "b1", "b2", "b3"])

    reader = goldmane.open(T0 + 15 + 7)
    goldmane.push_live("b5")

    assert sources(reader.take(4)) == [(15, "b1"), (30, "b2"), (45, "b3"), (75, "b5")]


def test_backfill_from_negative_start_is_relative_to_now(goldmane: Harness) -> None:
    goldmane.publish(["b0", "b1", "b2", "b3"])
    seconds_since_b2 = int(goldmane.clock.now) - (T0 + 30)

    reader = goldmane.open(-seconds_since_b2)
    goldmane.push_live("b5")

    assert sources(reader.take(3)) == [(30, "b2"), (45, "b3"), (75, "b5")]
    assert goldmane.server.requests[-1].start_time_gte == -seconds_since_b2


def test_zero_start_means_live_only(goldmane: Harness) -> None:
    goldmane.publish(["b0", "b1"])

    reader = goldmane.open(0)
    goldmane.push_live("b3")

    assert sources(reader.take(1)) == [(45, "b3")]


def test_backfill_still_replays_the_oldest_bucket_in_the_ring(
    make_harness: HarnessFactory,
) -> None:
    goldmane = make_harness(ring_buckets=4)
    goldmane.publish(["b0", "b1", "b2", "b3"])
    assert goldmane.server.oldest_bucket_start() == T0 + 30

    reader = goldmane.open(T0 + 30)
    goldmane.push_live("b5")

    assert sources(reader.take(3)) == [(30, "b2"), (45, "b3"), (75, "b5")]


@pytest.mark.parametrize(
    "start_time_gte",
    [
        pytest.param(lambda now, oldest: oldest - 1, id="absolute-older-than-ring"),
        pytest.param(lambda now, oldest: oldest - now - 15, id="relative-older-than-ring"),
        pytest.param(lambda now, oldest: now + 60, id="future"),
    ],
)
def test_backfill_outside_the_ring_is_silently_skipped(
    make_harness: HarnessFactory, start_time_gte: Callable[[int, int], int]
) -> None:
    goldmane = make_harness(ring_buckets=4)
    goldmane.publish(["b0", "b1", "b2", "b3"])
    now, oldest = int(goldmane.clock.now), goldmane.server.oldest_bucket_start()

    reader = goldmane.open(start_time_gte(now, oldest))
    goldmane.push_live("b5")

    assert sources(reader.take(1)) == [(75, "b5")]


def test_streams_opened_during_rollovers_get_every_bucket_exactly_once(
    goldmane: Harness,
) -> None:
    server, clock = goldmane.server, goldmane.clock
    buckets = 40

    def roll() -> None:
        for index in range(buckets):
            server.record(flow_key(f"b{index}"), at=T0 + 15 * index + 1)
            clock.set(T0 + 15 * (index + 1) + 1)
            server.rollover()
            time.sleep(0.005)

    roller = threading.Thread(target=roll)
    roller.start()
    readers = []
    while roller.is_alive():
        readers.append(goldmane.open(T0))
    roller.join()
    # The roller published buckets 0..38; bucket 39 goes out live with a final marker bucket.
    server.record(flow_key("last"), at=T0 + 15 * buckets + 1)
    clock.set(T0 + 15 * (buckets + 2))
    assert server.rollover() == 2

    expected = [(15 * i, f"b{i}") for i in range(buckets)] + [(15 * buckets, "last")]
    assert len(readers) > 1
    for reader in readers:
        assert sources(reader.take(buckets + 1)) == expected


def test_auto_rollover_pushes_when_the_clock_crosses_a_boundary(
    make_harness: HarnessFactory,
) -> None:
    goldmane = make_harness(auto_rollover=True)
    reader = goldmane.open()
    goldmane.server.record(flow_key("a"), at=T0 + 1)

    goldmane.clock.set(T0 + 30)

    assert sources(reader.take(1)) == [(0, "a")]


def test_slow_reader_loses_the_rest_of_a_bucket_but_keeps_streaming(
    make_harness: HarnessFactory,
) -> None:
    goldmane = make_harness(handoff_timeout=0.2)
    server = goldmane.server
    call = goldmane.call()
    wait_until(lambda: len(server.requests) == 1)
    # Far more than the stream's HTTP/2 window plus its hand-off queue can hold unread.
    flows = 10_000
    for index in range(flows):
        server.record(flow_key(f"pod-{index}"), at=T0 + 1)
    goldmane.clock.set(T0 + 30)
    server.rollover()
    goldmane.push_live("after")

    reader = StreamReader(call)
    goldmane.readers.append(reader)
    received = reader.take(1)
    while received[-1].flow.Key.source_name != "after":
        received += reader.take(1)

    assert 0 < len(received) - 1 < flows
    assert sources(received[:3]) == [(0, "pod-0"), (0, "pod-1"), (0, "pod-2")]


def test_drop_streams_fails_the_stream_after_n_more_results(goldmane: Harness) -> None:
    reader = goldmane.open()
    goldmane.server.drop_streams(after=2)
    for name in ["a", "b", "c", "d", "e"]:
        goldmane.server.record(flow_key(name), at=T0 + 1)
    goldmane.clock.set(T0 + 30)
    goldmane.server.rollover()

    assert sources(reader.take(2)) == [(0, "a"), (0, "b")]
    assert reader.end() == grpc.StatusCode.UNAVAILABLE
    assert goldmane.server.results_sent == 2


def test_drop_streams_only_affects_streams_open_at_the_time(goldmane: Harness) -> None:
    dropped = goldmane.open()
    goldmane.server.drop_streams(after=0, code=grpc.StatusCode.INTERNAL)
    assert dropped.end() == grpc.StatusCode.INTERNAL

    later = goldmane.open()
    goldmane.push_live("a")

    assert sources(later.take(1)) == [(0, "a")]


def test_client_certificate_from_another_ca_is_refused(goldmane: Harness, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "stranger")

    call = goldmane.call(client=stranger)

    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert goldmane.server.requests == []


def test_dialing_127_0_0_1_without_server_name_override_fails_verification(
    goldmane: Harness,
) -> None:
    call = goldmane.call(override=False)

    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert goldmane.server.requests == []


def test_streams_beyond_the_limit_are_resource_exhausted(goldmane: Harness) -> None:
    channel = goldmane.channel()
    stub = goldmane_pb2_grpc.FlowsStub(channel)
    request = goldmane_pb2.FlowStreamRequest()
    calls = [stub.Stream(request, timeout=10 * READ_TIMEOUT) for _ in range(MAX_STREAMS)]
    try:
        wait_until(lambda: len(goldmane.server.requests) == MAX_STREAMS)

        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Stream(request, timeout=READ_TIMEOUT))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call in calls:
            call.cancel()


def test_stop_ends_open_streams_promptly(goldmane: Harness) -> None:
    reader = goldmane.open()
    started = time.monotonic()

    goldmane.server.stop()

    assert time.monotonic() - started < 1
    assert reader.end() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def test_server_without_tls_serves_plaintext() -> None:
    clock = ManualClock(T0 + 1)
    server = GoldmaneServer(clock=clock, auto_rollover=False)
    port = server.start(tls=None)
    server.record(flow_key("a"), at=T0 + 1)
    clock.set(T0 + 30)
    server.rollover()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = goldmane_pb2_grpc.FlowsStub(channel).Stream(
                goldmane_pb2.FlowStreamRequest(start_time_gte=T0), timeout=READ_TIMEOUT
            )
            assert sources([next(call)]) == [(0, "a")]
            call.cancel()
    finally:
        server.stop()


def test_pki_serves_only_goldmane_names_and_keeps_keys_private(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    server_cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    names = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == list(GOLDMANE_SERVER_NAMES)
    assert not names.get_values_for_type(x509.IPAddress)
    for key in (pki.server_key, pki.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
