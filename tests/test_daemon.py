"""The daemon end to end: real mTLS gRPC from a Goldmane-compatible server into real PostgreSQL."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aggregator.buffer import Batch
from aggregator.daemon import Daemon
from aggregator.goldmane_client import RING_REACH_SECONDS, STEP_CERTS, STEP_TLS
from aggregator.goldmane_server import GoldmaneServer
from aggregator.pki import Pki, make_pki
from aggregator.store.ingest import IngestStore
from aggregator.wire import goldmane_pb2 as pb
from tests.harness import (
    BUCKET,
    T0,
    ManualClock,
    RunningDaemon,
    daemon_settings,
    edge_counts,
    progress,
    unix_socket_or_tcp,
    via_proxy,
    wait_until,
)
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def goldmane(pki: Pki, clock: ManualClock) -> Iterator[tuple[GoldmaneServer, int]]:
    server = GoldmaneServer(clock=clock, auto_rollover=False)
    port = server.start(tls=pki)
    yield server, port
    server.stop()


def record_bucket(
    server: GoldmaneServer, start: int, connections: int, *, dst_ns: str = "api"
) -> None:
    """`connections` pod-to-pod connections frontend -> dst_ns in one bucket, both reports each."""
    for index in range(connections):
        server.record_connection(
            src_ns="frontend",
            src_name="web-*",
            dst_ns=dst_ns,
            dst_name=f"api-{index}-*",
            dst_port=8080,
            at=start + 1,
        )


def publish(server: GoldmaneServer, clock: ManualClock, now: float) -> None:
    clock.now = now
    server.rollover(now)


def test_first_start_backfills_the_ring_and_counts_each_connection_once(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    for bucket in range(3):
        record_bucket(server, T0 + bucket * BUCKET, 4)
    publish(server, clock, T0 + 5 * BUCKET)

    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        wait_until(lambda: progress(database_url) == T0 + 3 * BUCKET, what="backfill flushed")
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 12}
        assert server.requests[0].start_time_gte == -RING_REACH_SECONDS
    finally:
        assert running.stop() == 0


def test_a_stream_dropped_mid_bucket_loses_and_doubles_nothing(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    record_bucket(server, T0, 3)
    publish(server, clock, T0 + 2 * BUCKET)
    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="first bucket")
        record_bucket(server, T0 + BUCKET, 10)  # 20 reports
        server.drop_streams(after=7)
        publish(server, clock, T0 + 3 * BUCKET)
        wait_until(lambda: progress(database_url) == T0 + 2 * BUCKET, what="dropped bucket re-read")
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 13}
        assert len(server.requests) == 2
        assert server.requests[1].start_time_gte == T0 + BUCKET
        assert running.metric("edge_aggregator_stream_reconnects_total") >= 1
    finally:
        assert running.stop() == 0


def test_a_restart_resumes_from_stored_progress(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    settings = daemon_settings(pki, port, database_url)
    record_bucket(server, T0, 2)
    record_bucket(server, T0 + BUCKET, 2)
    publish(server, clock, T0 + 3 * BUCKET)
    first = RunningDaemon.start(settings, clock)
    wait_until(lambda: progress(database_url) == T0 + 2 * BUCKET, what="first run flushed")
    assert first.stop() == 0

    record_bucket(server, T0 + 2 * BUCKET, 2)
    publish(server, clock, T0 + 4 * BUCKET)
    second = RunningDaemon.start(settings, clock)
    try:
        wait_until(lambda: progress(database_url) == T0 + 3 * BUCKET, what="second run flushed")
        assert server.requests[-1].start_time_gte == T0 + 2 * BUCKET
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 6}
    finally:
        assert second.stop() == 0


class ReplayingGoldmane(GoldmaneServer):
    """Replays its whole ring whatever the client asks for: the client must deduplicate."""

    def _backfill(self, start_time_gte: int, now: float) -> list[pb.FlowResult]:
        return super()._backfill(-RING_REACH_SECONDS, now)


def test_a_replayed_backfill_counts_nothing_twice(
    clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server = ReplayingGoldmane(clock=clock, auto_rollover=False)
    port = server.start(tls=pki)
    try:
        settings = daemon_settings(pki, port, database_url)
        record_bucket(server, T0, 3)
        record_bucket(server, T0 + BUCKET, 3)
        publish(server, clock, T0 + 3 * BUCKET)
        first = RunningDaemon.start(settings, clock)
        wait_until(lambda: progress(database_url) == T0 + 2 * BUCKET, what="first run flushed")
        assert first.stop() == 0
        record_bucket(server, T0 + 2 * BUCKET, 3)
        publish(server, clock, T0 + 4 * BUCKET)
        second = RunningDaemon.start(settings, clock)
        wait_until(lambda: progress(database_url) == T0 + 3 * BUCKET, what="second run flushed")
        assert second.metric("edge_aggregator_flows_skipped_total", 'reason="duplicate"') == 12
        assert second.stop() == 0
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 9}
    finally:
        server.stop()


def test_progress_older_than_the_ring_is_clamped_to_the_ring(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    with IngestStore.open(database_url) as store:
        store.migrate()
        store.write(Batch({}, T0 - 2 * 3600))
    record_bucket(server, T0, 2)
    publish(server, clock, T0 + 2 * BUCKET)
    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="clamped backfill")
        assert server.requests[0].start_time_gte == -RING_REACH_SECONDS
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 2}
    finally:
        assert running.stop() == 0


def test_postgres_unreachable_for_several_flushes_loses_nothing(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    proxy = TcpProxy(**unix_socket_or_tcp(database_url))
    settings = daemon_settings(pki, port, via_proxy(database_url, proxy.port))
    running = RunningDaemon.start(settings, clock)
    try:
        wait_until(lambda: running.get("/readyz").status_code == 200 or True, what="start")
        wait_until(lambda: running.metric("edge_aggregator_database_up") == 1, what="database up")
        proxy.cut()
        for bucket in range(4):
            record_bucket(server, T0 + bucket * BUCKET, 5, dst_ns=f"api-{bucket}")
            publish(server, clock, T0 + (bucket + 2) * BUCKET)
        wait_until(
            lambda: running.metric("edge_aggregator_flush_failures_total") >= 3,
            what="failed flushes",
        )
        assert running.get("/readyz").status_code == 503
        assert "database unreachable" in running.get("/readyz").text
        proxy.restore()
        wait_until(lambda: progress(database_url) == T0 + 4 * BUCKET, what="flush after outage")
        assert edge_counts(database_url) == {("frontend", f"api-{b}", "allow"): 5 for b in range(4)}
    finally:
        assert running.stop() == 0
        proxy.close()


def test_a_ready_callback_after_the_stream_ended_does_not_mark_it_connected(
    pki: Pki, database_url: str
) -> None:
    # gRPC's connectivity callbacks come from a thread of their own, and may come late.
    daemon = Daemon(
        daemon_settings(pki, 1, database_url), database_url=database_url, http_host="127.0.0.1"
    )
    try:
        daemon._on_connectivity(grpc.ChannelConnectivity.READY)  # no stream open
        assert "stream to Goldmane not connected" in daemon.not_ready_reasons()
        registry = daemon.metrics.registry
        assert registry.get_sample_value("edge_aggregator_stream_connected") == 0
    finally:
        daemon._health.start()
        daemon._health.close()


def test_a_database_url_libpq_refuses_stops_the_daemon_with_exit_2(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    url = "postgresql://edges:s3cret@127.0.0.1:1/edges?sslmode=bogus"
    daemon = Daemon(daemon_settings(pki, 1, url), database_url=url, http_host="127.0.0.1")
    with caplog.at_level("ERROR"):
        assert daemon.run() == 2  # at once: retrying would only repeat it
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == "DATABASE_URL holds a setting libpq refuses"
    assert 'invalid sslmode value: "bogus"' in record.error  # type: ignore[attr-defined]
    assert "s3cret" not in record.error  # type: ignore[attr-defined]


def test_health_endpoints_report_liveness_readiness_and_metrics(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    record_bucket(server, T0, 1)
    publish(server, clock, T0 + 2 * BUCKET)
    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        assert running.get("/healthz").status_code == 200
        wait_until(lambda: running.get("/readyz").status_code == 200, what="ready")
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="flushed")
        metrics = running.get("/metrics").text
        for name in (
            "edge_aggregator_flows_received_total 2.0",
            "edge_aggregator_flow_keys_decoded_total 2.0",
            'edge_aggregator_flows_skipped_total{reason="self_edge"}',
            "edge_aggregator_edges_upserted_total 1.0",
            "edge_aggregator_edges_created_total 1.0",
            "edge_aggregator_stream_reconnects_total",
            "edge_aggregator_flush_duration_seconds_count",
            'edge_aggregator_buffer_entries{stage="sealed"}',
        ):
            assert name in metrics
        assert running.metric("edge_aggregator_newest_flow_timestamp_seconds") == T0 + BUCKET
        assert running.get("/nope").status_code == 404
    finally:
        assert running.stop() == 0


def test_malformed_results_are_counted_and_skipped(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    long_namespace = pb.FlowKey(
        source_namespace="x" * 300, dest_namespace="api", reporter=pb.Src, action=pb.Allow
    )
    unknown_action = pb.FlowKey(
        source_namespace="frontend", dest_namespace="api", reporter=pb.Src, action=7
    )  # type: ignore[arg-type]
    unknown_reporter = pb.FlowKey(
        source_namespace="frontend", dest_namespace="db", reporter=5, action=pb.Allow
    )  # type: ignore[arg-type]
    for key in (long_namespace, unknown_action, unknown_reporter):
        server.record(key, at=T0 + 1)
    record_bucket(server, T0, 1)
    publish(server, clock, T0 + 2 * BUCKET)
    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="flushed")
        assert (
            running.metric("edge_aggregator_flows_skipped_total", 'reason="invalid_namespace"') == 1
        )
        assert running.metric("edge_aggregator_flows_skipped_total", 'reason="unknown_enum"') == 2
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 1}
    finally:
        assert running.stop() == 0


def test_an_oversized_result_is_counted_and_skipped_and_the_stream_goes_on(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    huge = pb.FlowKey(source_namespace="frontend", dest_namespace="db", reporter=pb.Src)
    labels = [f"label-{index}=" + "x" * 100 for index in range(50_000)]  # about 5.5 MiB
    server.record(huge, at=T0 + 1, source_labels=labels)
    record_bucket(server, T0, 1)
    record_bucket(server, T0 + BUCKET, 1, dst_ns="cache")
    publish(server, clock, T0 + 3 * BUCKET)
    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="flushed")
        assert running.metric("edge_aggregator_flows_skipped_total", 'reason="oversized"') == 1
        assert running.metric("edge_aggregator_stream_reconnects_total") == 0
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 1}
    finally:
        assert running.stop() == 0


def failures_at(running: RunningDaemon, step: str) -> float:
    return running.metric("edge_aggregator_stream_failures_total", f'step="{step}"')


def test_a_server_cert_from_another_ca_fails_the_tls_handshake_and_is_retried(
    goldmane: tuple[GoldmaneServer, int],
    clock: ManualClock,
    pki: Pki,
    database_url: str,
    tmp_path: Path,
) -> None:
    _, port = goldmane
    other = make_pki(tmp_path)
    running = RunningDaemon.start(
        daemon_settings(pki, port, database_url, ca_file=other.ca_cert), clock
    )
    try:
        wait_until(lambda: failures_at(running, STEP_TLS) >= 2, what="retried TLS failures")
        assert running.get("/readyz").status_code == 503
    finally:
        assert running.stop() == 0


def test_a_client_cert_from_another_ca_is_refused(
    goldmane: tuple[GoldmaneServer, int],
    clock: ManualClock,
    pki: Pki,
    database_url: str,
    tmp_path: Path,
) -> None:
    server, port = goldmane
    other = make_pki(tmp_path)
    settings = daemon_settings(
        pki, port, database_url, cert_file=other.client_cert, key_file=other.client_key
    )
    running = RunningDaemon.start(settings, clock)
    try:
        wait_until(
            lambda: running.metric("edge_aggregator_stream_reconnects_total") >= 2, what="retries"
        )
        assert server.requests == []
    finally:
        assert running.stop() == 0


def test_a_wrong_server_name_fails_the_tls_handshake(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    _, port = goldmane
    settings = daemon_settings(pki, port, database_url, server_name="goldmane.example.org")
    running = RunningDaemon.start(settings, clock)
    try:
        wait_until(lambda: failures_at(running, STEP_TLS) >= 1, what="TLS failure")
    finally:
        assert running.stop() == 0


def test_a_key_file_that_vanishes_is_retried_until_it_returns(
    goldmane: tuple[GoldmaneServer, int],
    clock: ManualClock,
    pki: Pki,
    database_url: str,
    tmp_path: Path,
) -> None:
    server, port = goldmane
    key = tmp_path / "tls.key"
    shutil.copy(pki.client_key, key)
    running = RunningDaemon.start(daemon_settings(pki, port, database_url, key_file=key), clock)
    try:
        wait_until(lambda: len(server.requests) == 1, what="first stream")
        key.unlink()
        server.drop_streams()
        record_bucket(server, T0, 1)
        publish(server, clock, T0 + 2 * BUCKET)
        wait_until(lambda: failures_at(running, STEP_CERTS) >= 1, what="certificate read failure")
        assert running.thread.is_alive()
        shutil.copy(pki.client_key, key)
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="recovered stream")
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 1}
    finally:
        assert running.stop() == 0


def test_a_certificate_file_found_empty_is_retried_until_it_is_whole(
    goldmane: tuple[GoldmaneServer, int],
    clock: ManualClock,
    pki: Pki,
    database_url: str,
    tmp_path: Path,
) -> None:
    server, port = goldmane
    cert = tmp_path / "tls.crt"
    cert.write_bytes(b"")  # a Secret caught half-written
    running = RunningDaemon.start(daemon_settings(pki, port, database_url, cert_file=cert), clock)
    try:
        wait_until(lambda: failures_at(running, STEP_CERTS) >= 1, what="certificate read failure")
        assert running.thread.is_alive()
        shutil.copy(pki.client_cert, cert)
        wait_until(lambda: len(server.requests) == 1, what="stream once the file is whole")
    finally:
        assert running.stop() == 0


def test_an_idle_clusters_last_bucket_is_recorded_without_newer_flows(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    running = RunningDaemon.start(daemon_settings(pki, port, database_url), clock)
    try:
        wait_until(lambda: len(server.requests) == 1, what="stream")
        record_bucket(server, T0, 2)
        publish(server, clock, T0 + 2 * BUCKET)  # live push; nothing ever follows
        wait_until(lambda: progress(database_url) == T0 + BUCKET, what="idle bucket sealed")
        assert edge_counts(database_url) == {("frontend", "api", "allow"): 2}
    finally:
        assert running.stop() == 0


def test_stop_flushes_what_was_sealed_and_leaves_the_open_bucket_to_goldmane(
    goldmane: tuple[GoldmaneServer, int], clock: ManualClock, pki: Pki, database_url: str
) -> None:
    server, port = goldmane
    settings = dataclasses.replace(daemon_settings(pki, port, database_url), flush_interval=300)
    record_bucket(server, T0, 2)
    record_bucket(server, T0 + BUCKET, 1)
    publish(server, clock, T0 + 3 * BUCKET)
    running = RunningDaemon.start(settings, clock)
    wait_until(lambda: running.metric("edge_aggregator_flows_received_total") == 6, what="received")
    wait_until(
        lambda: running.metric("edge_aggregator_buffer_entries", 'stage="sealed"') == 1,
        what="sealed",
    )
    assert edge_counts(database_url) == {}
    assert running.stop() == 0
    # The open bucket is read again from Goldmane's ring at the next start.
    assert edge_counts(database_url) == {("frontend", "api", "allow"): 2}
    assert progress(database_url) == T0 + BUCKET
