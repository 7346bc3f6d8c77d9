"""The flow-to-edge rule: what becomes an edge, how reports merge, how buckets seal."""

from __future__ import annotations

import pytest

from aggregator import buffer as buffer_module
from aggregator.buffer import EdgeBuffer, EdgeTotals
from aggregator.mapping import (
    SKIP_BAD_TIME,
    SKIP_DUPLICATE,
    SKIP_INVALID_NAMESPACE,
    SKIP_LATE,
    SKIP_NO_KEY,
    SKIP_NOT_NAMESPACED,
    SKIP_SELF_EDGE,
    SKIP_UNKNOWN_ENUM,
)
from aggregator.wire import goldmane_pb2 as pb
from tests.flows import BUCKET, flow_result, use_receive_path

T0 = 1_800_000_000  # a bucket start (multiple of 15)


def sealed_edges(buffer: EdgeBuffer) -> dict[tuple[str, str, str], EdgeTotals]:
    """Seal whatever is open by sending a flow of a much later bucket, then take the batch."""
    add(buffer, flow_result("zz-later", "zz-other", start=T0 + 100 * BUCKET))
    edges = buffer.take().edges
    edges.pop(("zz-later", "zz-other", "allow"), None)
    return edges


def add(buffer: EdgeBuffer, result: pb.FlowResult) -> str | None:
    """Give the buffer one result as the stream does; the reason it was skipped, or None."""
    before = dict(buffer.skipped)
    buffer.add(result.SerializeToString())
    buffer.count_queued()
    reasons = [reason for reason, count in buffer.skipped.items() if count != before.get(reason)]
    return reasons[0] if reasons else None


def new_buffer() -> EdgeBuffer:
    return EdgeBuffer(sealed_until=None, flow_clock=lambda: T0)


@pytest.mark.parametrize(
    ("src_ns", "dst_ns", "reason"),
    [
        ("frontend", "frontend", SKIP_SELF_EDGE),
        ("-", "api", SKIP_NOT_NAMESPACED),
        ("frontend", "-", SKIP_NOT_NAMESPACED),
        ("", "api", SKIP_NOT_NAMESPACED),
        ("frontend", "", SKIP_NOT_NAMESPACED),
        ("x" * 300, "api", SKIP_INVALID_NAMESPACE),
        ("frontend", "Bad_Name", SKIP_INVALID_NAMESPACE),
        ("frontend", "a b", SKIP_INVALID_NAMESPACE),
    ],
)
def test_reports_without_two_distinct_real_namespaces_are_skipped(
    src_ns: str, dst_ns: str, reason: str
) -> None:
    buffer = new_buffer()
    assert add(buffer, flow_result(src_ns, dst_ns, start=T0)) == reason
    assert buffer.skipped == {reason: 1}
    assert sealed_edges(buffer) == {}


def test_public_and_host_endpoint_peers_are_not_edges() -> None:
    buffer = new_buffer()
    to_public = flow_result("frontend", "-", dst_name="pub", start=T0)
    from_host = flow_result("-", "api", src_name="node-1", start=T0)
    assert add(buffer, to_public) == SKIP_NOT_NAMESPACED
    assert add(buffer, from_host) == SKIP_NOT_NAMESPACED
    assert sealed_edges(buffer) == {}


def test_a_result_without_a_key_is_skipped() -> None:
    buffer = new_buffer()
    result = pb.FlowResult(id=1, flow=pb.Flow(start_time=T0, end_time=T0 + BUCKET))
    assert add(buffer, result) == SKIP_NO_KEY
    assert add(buffer, pb.FlowResult(id=2)) == SKIP_NO_KEY


def test_unknown_action_or_reporter_values_are_skipped() -> None:
    buffer = new_buffer()
    assert add(buffer, flow_result(start=T0, action=7)) == SKIP_UNKNOWN_ENUM
    assert add(buffer, flow_result(start=T0, reporter=9)) == SKIP_UNKNOWN_ENUM
    assert buffer.skipped == {SKIP_UNKNOWN_ENUM: 2}


def test_a_flow_with_impossible_times_is_skipped() -> None:
    buffer = new_buffer()
    result = flow_result(start=T0)
    result.flow.end_time = T0 - 1
    assert add(buffer, result) == SKIP_BAD_TIME
    assert add(buffer, flow_result(start=0)) == SKIP_BAD_TIME


def test_src_and_dst_reports_of_one_connection_count_once() -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0, reporter=pb.Src))
    add(buffer, flow_result(start=T0, reporter=pb.Dst))
    assert sealed_edges(buffer) == {("frontend", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1)}


@pytest.mark.parametrize("receive_path", ["in use", "python"])
def test_one_connection_counts_once_when_the_key_memory_empties_within_its_bucket(
    receive_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_receive_path(receive_path, monkeypatch)
    # One key fits: the second fills the memory past its limit and empties it, and the third,
    # of the first one's connection, is learnt again while that connection is counted.
    monkeypatch.setattr(buffer_module, "_KEY_CACHE_LIMIT", 1)
    buffer = new_buffer()
    buffer.consume(
        [
            flow_result(start=T0, reporter=pb.Src).SerializeToString(),
            flow_result("other", "api", start=T0).SerializeToString(),
            flow_result(start=T0, reporter=pb.Dst).SerializeToString(),
        ]
    )
    assert sealed_edges(buffer) == {
        ("frontend", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1),
        ("other", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1),
    }


@pytest.mark.parametrize("receive_path", ["in use", "python"])
def test_a_bucket_opened_behind_the_newest_counts_its_connections_apart(
    receive_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_receive_path(receive_path, monkeypatch)
    buffer = new_buffer()
    # The same connection in two open buckets: the older one opened after the newer.
    add(buffer, flow_result(start=T0 + BUCKET, reporter=pb.Src, action=pb.Allow))
    add(buffer, flow_result(start=T0, reporter=pb.Dst, action=pb.Deny))
    add(buffer, flow_result(start=T0 + BUCKET, reporter=pb.Src, action=pb.Allow))
    add(buffer, flow_result(start=T0, reporter=pb.Src, action=pb.Allow))
    assert buffer.sizes() == (2, 0)
    assert sealed_edges(buffer) == {
        ("frontend", "api", "deny"): EdgeTotals(T0, T0 + BUCKET, 1),
        ("frontend", "api", "allow"): EdgeTotals(T0 + BUCKET, T0 + 2 * BUCKET, 1),
    }


def test_ingress_denied_at_destination_makes_one_deny_edge_and_no_allow() -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0, reporter=pb.Src, action=pb.Allow))
    add(buffer, flow_result(start=T0, reporter=pb.Dst, action=pb.Deny))
    assert sealed_edges(buffer) == {("frontend", "api", "deny"): EdgeTotals(T0, T0 + BUCKET, 1)}


@pytest.mark.parametrize(
    ("actions", "verdict"),
    [
        ((pb.Deny, pb.Allow), "deny"),
        ((pb.Pass, pb.Deny), "deny"),
        ((pb.Pass, pb.Allow), "allow"),
        ((pb.ActionUnspecified, pb.Allow), "allow"),
        ((pb.ActionUnspecified, pb.Pass), "pass"),
        ((pb.ActionUnspecified, pb.ActionUnspecified), "unspecified"),
    ],
)
def test_verdict_is_deny_over_allow_over_pass_over_unspecified(
    actions: tuple[int, int], verdict: str
) -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0, reporter=pb.Src, action=actions[0]))
    add(buffer, flow_result(start=T0, reporter=pb.Dst, action=actions[1]))
    assert list(sealed_edges(buffer)) == [("frontend", "api", verdict)]


def test_dest_service_fields_do_not_split_a_connection() -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0, reporter=pb.Src, service="api-svc"))
    add(buffer, flow_result(start=T0, reporter=pb.Dst, service=""))
    add(buffer, flow_result(start=T0, reporter=pb.Src, service=""))
    assert sealed_edges(buffer)[("frontend", "api", "allow")].flow_count == 1


def test_distinct_connections_between_two_namespaces_each_count() -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0, port=8080))
    add(buffer, flow_result(start=T0, port=9090))
    add(buffer, flow_result(start=T0, proto="udp"))
    add(buffer, flow_result(start=T0, src_name="worker-*"))
    add(buffer, flow_result(start=T0, dst_name="db-*"))
    assert sealed_edges(buffer)[("frontend", "api", "allow")].flow_count == 5


def test_connections_whose_names_run_together_still_count_apart() -> None:
    buffer = new_buffer()
    # Spaces and digits in names, and a name's tail that could pass for the protocol.
    add(buffer, flow_result(start=T0, src_name="a b", dst_name="c"))
    add(buffer, flow_result(start=T0, src_name="a", dst_name="b c"))
    add(buffer, flow_result(start=T0, src_name="a", dst_name="bt", proto="cp"))
    add(buffer, flow_result(start=T0, src_name="a", dst_name="b", proto="tcp"))
    add(buffer, flow_result(start=T0, src_name="1 2 a", dst_name="b"))
    add(buffer, flow_result(start=T0, src_name="a", dst_name="b", port=1))
    add(buffer, flow_result(start=T0, src_name="a", dst_name="b", port=11))
    assert sealed_edges(buffer)[("frontend", "api", "allow")].flow_count == 7


def test_one_connection_counts_once_per_bucket_and_times_are_flow_times() -> None:
    buffer = new_buffer()
    for bucket in range(3):
        add(buffer, flow_result(start=T0 + bucket * BUCKET, reporter=pb.Src))
        add(buffer, flow_result(start=T0 + bucket * BUCKET, reporter=pb.Dst))
    assert sealed_edges(buffer) == {
        ("frontend", "api", "allow"): EdgeTotals(T0, T0 + 3 * BUCKET, 3)
    }


def test_each_edge_in_a_batch_keeps_its_own_first_and_last_bucket() -> None:
    buffer = new_buffer()
    edges_by_bucket = [["frontend", "batch"], ["frontend", "billing"], ["frontend", "billing"]]
    for bucket, sources in enumerate(edges_by_bucket):
        for src_ns in sources:
            add(buffer, flow_result(src_ns, start=T0 + bucket * BUCKET))
    assert sealed_edges(buffer) == {
        ("frontend", "api", "allow"): EdgeTotals(T0, T0 + 3 * BUCKET, 3),
        ("batch", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1),
        ("billing", "api", "allow"): EdgeTotals(T0 + BUCKET, T0 + 3 * BUCKET, 2),
    }


@pytest.mark.parametrize("receive_path", ["in use", "python"])
def test_the_newest_flow_time_follows_every_bucket_received(
    receive_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_receive_path(receive_path, monkeypatch)
    buffer = new_buffer()
    for bucket in range(3):
        start = T0 + bucket * BUCKET
        # Each bucket's first report makes no edge; the others are counted without a Python step.
        add(buffer, flow_result("frontend", "frontend", start=start))
        add(buffer, flow_result(start=start))
        add(buffer, flow_result(start=start, reporter=pb.Dst))
        assert buffer.newest_flow_end == start + BUCKET


def test_a_newer_bucket_seals_the_older_one_and_advances_progress() -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0))
    assert buffer.take().edges == {}
    add(buffer, flow_result(start=T0 + BUCKET))
    batch = buffer.take()
    assert batch.edges == {("frontend", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1)}
    assert batch.sealed_until == T0 + BUCKET
    assert buffer.sizes() == (1, 0)


@pytest.mark.parametrize("receive_path", ["in use", "python"])
def test_skipped_reports_of_newer_buckets_seal_the_older_ones(
    receive_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_receive_path(receive_path, monkeypatch)
    buffer = new_buffer()
    add(buffer, flow_result(start=T0))
    # After it, only traffic that makes no edge: a self-edge, a host endpoint.
    for bucket in range(1, 4):
        assert add(buffer, flow_result("api", "api", start=T0 + bucket * BUCKET)) == SKIP_SELF_EDGE
        assert add(buffer, flow_result("-", "api", start=T0 + bucket * BUCKET)) == (
            SKIP_NOT_NAMESPACED
        )
    batch = buffer.take()
    assert batch.edges == {("frontend", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1)}
    assert batch.sealed_until == T0 + 3 * BUCKET
    assert buffer.sizes() == (0, 0)


@pytest.mark.parametrize(
    ("src_ns", "reason"), [("frontend", SKIP_BAD_TIME), ("api", SKIP_SELF_EDGE)]
)
def test_a_report_of_a_bucket_ending_far_ahead_moves_no_progress(src_ns: str, reason: str) -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0))
    bogus = flow_result(src_ns, "api", start=T0 + BUCKET)
    bogus.flow.end_time = T0 + 10**9
    assert add(buffer, bogus) == reason
    add(buffer, flow_result(start=T0 + 2 * BUCKET))
    assert buffer.take().sealed_until == T0 + BUCKET


def test_reports_of_a_sealed_bucket_are_duplicates() -> None:
    buffer = EdgeBuffer(sealed_until=T0 + BUCKET, flow_clock=lambda: T0)
    assert add(buffer, flow_result(start=T0)) == SKIP_DUPLICATE
    assert add(buffer, flow_result(start=T0 + BUCKET)) is None


def test_a_quiet_bucket_seals_once_its_push_time_has_passed() -> None:
    now = [float(T0 + BUCKET)]
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: now[0], quiet_seconds=0)
    add(buffer, flow_result(start=T0))
    assert buffer.seal_quiet_buckets() == 0  # Goldmane pushes [S, S+15) at S+30
    now[0] = T0 + 2 * BUCKET
    assert buffer.seal_quiet_buckets() == 1
    assert buffer.take().sealed_until == T0 + BUCKET


def test_reports_arriving_after_a_quiet_seal_are_counted_as_late() -> None:
    now = [float(T0 + 2 * BUCKET)]
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: now[0], quiet_seconds=0)
    add(buffer, flow_result(start=T0, port=1))
    assert buffer.seal_quiet_buckets() == 1
    assert add(buffer, flow_result(start=T0, port=2)) == SKIP_LATE
    buffer.discard_open()  # a new stream: the same bucket again is a plain duplicate
    assert add(buffer, flow_result(start=T0, port=2)) == SKIP_DUPLICATE


@pytest.mark.parametrize("start", [15, T0 * 1000, T0 - 2 * 86_400, T0 + 2 * 3600])
def test_flow_times_far_from_the_clock_are_skipped(start: int) -> None:
    buffer = new_buffer()
    assert add(buffer, flow_result(start=start)) == SKIP_BAD_TIME
    assert buffer.sealed_until is None


def test_a_bucket_still_arriving_is_not_sealed_by_time() -> None:
    buffer = EdgeBuffer(sealed_until=None, flow_clock=lambda: T0 + 3600, quiet_seconds=60)
    add(buffer, flow_result(start=T0))
    assert buffer.seal_quiet_buckets() == 0


def test_discarding_open_buckets_forgets_partial_data_but_not_progress() -> None:
    buffer = new_buffer()
    add(buffer, flow_result(start=T0))
    add(buffer, flow_result(start=T0 + BUCKET))
    assert buffer.discard_open() == 1
    assert buffer.sealed_until == T0 + BUCKET
    assert buffer.take().edges == {("frontend", "api", "allow"): EdgeTotals(T0, T0 + BUCKET, 1)}
