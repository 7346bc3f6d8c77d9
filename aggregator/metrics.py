"""The daemon's Prometheus metrics, defined in one place on a registry of its own."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aggregator.buffer import EdgeBuffer
from aggregator.goldmane_client import STEPS
from aggregator.mapping import SKIP_REASONS

PREFIX = "edge_aggregator"


class _BufferCollector(Collector):
    """Reads the buffer's plain counters at scrape time: the receive loop makes no metric call."""

    def __init__(self, buffer: EdgeBuffer) -> None:
        self._buffer = buffer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        buffer = self._buffer
        buffer.count_queued()
        yield CounterMetricFamily(
            f"{PREFIX}_flows_received",
            "Flow results received from Goldmane.",
            value=buffer.received,
        )
        skipped = CounterMetricFamily(
            f"{PREFIX}_flows_skipped",
            "Flow results that made no edge, by reason.",
            labels=["reason"],
        )
        counts = dict(buffer.skipped)
        for reason in SKIP_REASONS:
            skipped.add_metric([reason], counts.get(reason, 0))
        yield skipped
        yield CounterMetricFamily(
            f"{PREFIX}_flow_keys_decoded",
            "Flow keys decoded: once per new connection and verdict, unless more keys come "
            "round every bucket than the buffer remembers.",
            value=buffer.keys_decoded,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_newest_flow_timestamp_seconds",
            "End of the newest bucket received (flow time, epoch seconds).",
            value=buffer.newest_flow_end,
        )
        open_entries, sealed_entries = buffer.sizes()
        entries = GaugeMetricFamily(
            f"{PREFIX}_buffer_entries",
            "Entries held in memory: connections of open buckets, edges awaiting flush.",
            labels=["stage"],
        )
        entries.add_metric(["open"], open_entries)
        entries.add_metric(["sealed"], sealed_entries)
        yield entries


class DaemonMetrics:
    """Every metric the daemon exports; alert rules refer to these names."""

    def __init__(self, buffer: EdgeBuffer, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.registry.register(_BufferCollector(buffer))
        self.edges_upserted = Counter(
            f"{PREFIX}_edges_upserted", "Edge rows written by flushes.", registry=self.registry
        )
        self.edges_created = Counter(
            f"{PREFIX}_edges_created", "Edge rows seen for the first time.", registry=self.registry
        )
        self.stream_reconnects = Counter(
            f"{PREFIX}_stream_reconnects", "Streams opened after the first.", registry=self.registry
        )
        self.stream_failures = Counter(
            f"{PREFIX}_stream_failures",
            "Failed stream attempts, by the step that failed.",
            ["step"],
            registry=self.registry,
        )
        for step in STEPS:
            self.stream_failures.labels(step)
        self.stream_connected = Gauge(
            f"{PREFIX}_stream_connected",
            "1 while the stream to Goldmane is up.",
            registry=self.registry,
        )
        self.flush_duration = Histogram(
            f"{PREFIX}_flush_duration_seconds",
            "Time taken by one flush to PostgreSQL.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.flush_failures = Counter(
            f"{PREFIX}_flush_failures",
            "Flushes that failed and will be retried.",
            registry=self.registry,
        )
        self.last_flush = Gauge(
            f"{PREFIX}_last_flush_timestamp_seconds",
            "Wall time of the last successful flush (epoch seconds).",
            registry=self.registry,
        )
        self.database_up = Gauge(
            f"{PREFIX}_database_up",
            "1 when the last database operation succeeded.",
            registry=self.registry,
        )
