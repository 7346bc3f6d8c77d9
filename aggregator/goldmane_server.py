"""A Goldmane-compatible `Flows.Stream` server (real gRPC, real mTLS) driven by a pluggable clock,
so the test-suite and the built-in simulator can exercise the client against Goldmane's behaviour
as described in goldmane-wire.md."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableSequence, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from aggregator.wire import goldmane_pb2, goldmane_pb2_grpc

if TYPE_CHECKING:
    # Only the type: the server runs without TLS (and without `cryptography`) too.
    from aggregator.pki import Pki

log = logging.getLogger(__name__)

MAX_STREAMS = 100
# Live results a stream may have queued before a rollover has to wait for it to read.
_STREAM_BUFFER = 1000
_ROLLOVER_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class _KeyCounter:
    last_id: int
    last_bucket: int


class GoldmaneServer:
    """In-memory ring of flow buckets served over `goldmane.Flows/Stream`.

    Bucket [S, S+bucket_seconds) is published by the first rollover at or after
    S + 2*bucket_seconds; data recorded for a bucket already published, or older than the ring,
    is dropped, as Goldmane never streams late data.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        bucket_seconds: int = 15,
        ring_buckets: int = 240,
        handoff_timeout: float = 1.0,
        auto_rollover: bool = True,
    ) -> None:
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be positive")
        # The ring must still hold the bucket a rollover has just published.
        if ring_buckets < 3:
            raise ValueError("ring_buckets must be at least 3")
        self._clock = clock
        self._bucket_seconds = bucket_seconds
        self._ring_buckets = ring_buckets
        self._handoff_timeout = handoff_timeout
        self._auto_rollover = auto_rollover

        self._lock = threading.Lock()
        # Serialises rollovers so every stream receives buckets in order.
        self._rollover_lock = threading.Lock()
        self._pending: dict[int, dict[bytes, goldmane_pb2.Flow]] = {}
        self._published: dict[int, list[goldmane_pb2.FlowResult]] = {}
        self._published_before = 0
        self._key_counters: dict[bytes, _KeyCounter] = {}
        self._subscribers: set[_Subscriber] = set()
        self._requests: list[goldmane_pb2.FlowStreamRequest] = []
        self._results_sent = 0

        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self, *, tls: Pki | None, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0 picks a free port) and return the bound port.

        With `tls`, clients must present a certificate signed by `tls.ca_cert`; `tls=None`
        serves plaintext.
        """
        if self._server is not None:
            raise RuntimeError("a GoldmaneServer can only be started once")
        self._executor = futures.ThreadPoolExecutor(
            max_workers=MAX_STREAMS, thread_name_prefix="goldmane-stream"
        )
        # grpcio answers RESOURCE_EXHAUSTED beyond this, like Goldmane's stream limit.
        self._server = grpc.server(self._executor, maximum_concurrent_rpcs=MAX_STREAMS)
        goldmane_pb2_grpc.add_FlowsServicer_to_server(_FlowsServicer(self._stream), self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is None:
            bound = self._server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
                root_certificates=tls.ca_cert.read_bytes(),
                require_client_auth=True,
            )
            bound = self._server.add_secure_port(address, credentials)
        if bound == 0:
            raise RuntimeError(f"cannot listen on {address}")
        self._server.start()
        if self._auto_rollover:
            self._ticker = threading.Thread(
                target=self._roll_on_boundaries, name="goldmane-rollover", daemon=True
            )
            self._ticker.start()
        return bound

    def stop(self, grace: float | None = 0) -> None:
        """Stop serving; open streams end once `grace` seconds have passed."""
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._server.stop(grace).wait()
        with self._lock:
            subscribers = list(self._subscribers)
        # Wakes handlers whose cancellation callback has not fired (yet), so none outlives us,
        # and lets a rollover blocked on a slow stream finish before we join its thread.
        for subscriber in subscribers:
            subscriber.close()
        if self._ticker is not None:
            self._ticker.join()
        assert self._executor is not None
        self._executor.shutdown(wait=False)

    def record(
        self,
        key: goldmane_pb2.FlowKey,
        *,
        at: float | None = None,
        packets_in: int = 1,
        packets_out: int = 1,
        bytes_in: int = 100,
        bytes_out: int = 100,
        connections_started: int = 1,
        connections_completed: int = 0,
        connections_live: int = 0,
        source_labels: Sequence[str] = (),
        dest_labels: Sequence[str] = (),
    ) -> None:
        """Add one flow report to the bucket containing `at` (default: now).

        Reports of the same key in the same bucket are aggregated: statistics are summed and
        only the labels common to every report are kept.
        """
        now = self._clock()
        start = self._bucket_start(now if at is None else at)
        ident = key.SerializeToString(deterministic=True)
        with self._lock:
            if start < self._published_before or start < self._ring_start(now):
                log.debug("dropping a late report for bucket %d", start)
                return
            flows = self._pending.setdefault(start, {})
            flow = flows.get(ident)
            if flow is None:
                flow = flows[ident] = goldmane_pb2.Flow(
                    Key=key,
                    start_time=start,
                    end_time=start + self._bucket_seconds,
                    source_labels=sorted(set(source_labels)),
                    dest_labels=sorted(set(dest_labels)),
                )
            else:
                _keep_common(flow.source_labels, source_labels)
                _keep_common(flow.dest_labels, dest_labels)
            flow.packets_in += packets_in
            flow.packets_out += packets_out
            flow.bytes_in += bytes_in
            flow.bytes_out += bytes_out
            flow.num_connections_started += connections_started
            flow.num_connections_completed += connections_completed
            flow.num_connections_live += connections_live

    def record_connection(
        self,
        *,
        src_ns: str,
        src_name: str,
        dst_ns: str,
        dst_name: str,
        dst_port: int,
        proto: str = "tcp",
        src_action: goldmane_pb2.Action = goldmane_pb2.Allow,
        dst_action: goldmane_pb2.Action | None = None,
        at: float | None = None,
        dest_service_name: str = "",
        dest_service_port_name: str = "",
        dest_service_port: int = 0,
        source_labels: Sequence[str] = (),
        dest_labels: Sequence[str] = (),
    ) -> None:
        """Record both ends' reports of one pod-to-pod connection.

        The Src report carries `src_action`, the Dst report `dst_action` (default: `src_action`).
        A connection denied at the source never reaches the destination, so `src_action=Deny`
        records the Src report only.
        """
        if src_action == goldmane_pb2.Deny and dst_action is not None:
            raise ValueError("a connection denied at the source has no destination report")
        key = goldmane_pb2.FlowKey(
            source_name=src_name,
            source_namespace=src_ns,
            source_type=goldmane_pb2.WorkloadEndpoint,
            dest_name=dst_name,
            dest_namespace=dst_ns,
            dest_type=goldmane_pb2.WorkloadEndpoint,
            dest_port=dst_port,
            dest_service_name=dest_service_name,
            dest_service_namespace=dst_ns if dest_service_name else "",
            dest_service_port_name=dest_service_port_name,
            dest_service_port=dest_service_port,
            proto=proto,
        )
        reports = [(goldmane_pb2.Src, src_action)]
        if src_action != goldmane_pb2.Deny:
            reports.append((goldmane_pb2.Dst, src_action if dst_action is None else dst_action))
        when = self._clock() if at is None else at
        for reporter, action in reports:
            key.reporter = reporter
            key.action = action
            self.record(key, at=when, source_labels=source_labels, dest_labels=dest_labels)

    def rollover(self, now: float | None = None) -> int:
        """Publish every complete bucket not yet published and push it to the live streams.

        Returns the number of (non-empty) buckets published.
        """
        current = self._clock() if now is None else now
        # Bucket [S, S+width) is published once the clock reaches S + 2*width.
        due = self._bucket_start(current) - self._bucket_seconds
        with self._rollover_lock:
            with self._lock:
                batches = [
                    (start, self._publish(start)) for start in sorted(self._pending) if start < due
                ]
                self._published_before = max(self._published_before, due)
                self._evict(self._ring_start(current))
                subscribers = list(self._subscribers)
            # Outside the data lock: a slow reader may hold us up to handoff_timeout per bucket.
            for start, results in batches:
                for subscriber in subscribers:
                    skipped = subscriber.offer(results, self._handoff_timeout)
                    if skipped:
                        log.warning("slow stream: skipped %d flows of bucket %d", skipped, start)
        return len(batches)

    def drop_streams(
        self, *, after: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        """Make every currently open stream fail with `code` after `after` more results."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.drop_after(after, code)

    @property
    def requests(self) -> list[goldmane_pb2.FlowStreamRequest]:
        """Every Stream request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def results_sent(self) -> int:
        """Results handed to gRPC, over all streams."""
        with self._lock:
            return self._results_sent

    def oldest_bucket_start(self) -> int:
        """Start of the oldest bucket the ring covers now; backfill from before it is skipped."""
        return self._ring_start(self._clock())

    def _bucket_start(self, when: float) -> int:
        return int(when // self._bucket_seconds) * self._bucket_seconds

    def _ring_start(self, now: float) -> int:
        # Like Goldmane's, the ring spans wall-clock time (the current bucket and the ones
        # before it), whether or not any flows were recorded in those buckets.
        return self._bucket_start(now) - (self._ring_buckets - 1) * self._bucket_seconds

    def _publish(self, start: int) -> list[goldmane_pb2.FlowResult]:
        results = []
        for ident, flow in self._pending.pop(start).items():
            previous = self._key_counters.get(ident)
            flow_id = 1 if previous is None else previous.last_id + 1
            self._key_counters[ident] = _KeyCounter(last_id=flow_id, last_bucket=start)
            results.append(goldmane_pb2.FlowResult(id=flow_id, flow=flow))
        self._published[start] = results
        return results

    def _evict(self, ring_start: int) -> None:
        for start in [start for start in self._published if start < ring_start]:
            del self._published[start]
        # A key idle for the whole ring starts counting ids afresh, as in Goldmane.
        self._key_counters = {
            ident: counter
            for ident, counter in self._key_counters.items()
            if counter.last_bucket >= ring_start
        }

    def _backfill(self, start_time_gte: int, now: float) -> list[goldmane_pb2.FlowResult]:
        if start_time_gte == 0:
            return []
        since = int(now) + start_time_gte if start_time_gte < 0 else start_time_gte
        if since < self._ring_start(now) or since > now:
            return []
        first = self._bucket_start(since)
        return [
            result
            for start in sorted(self._published)
            if start >= first
            for result in self._published[start]
        ]

    def _stream(
        self, request: goldmane_pb2.FlowStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[goldmane_pb2.FlowResult]:
        subscriber = _Subscriber(_STREAM_BUFFER)
        now = self._clock()
        # Registering and snapshotting under one lock: each published bucket reaches the
        # stream exactly once, either in the backfill or through a live push.
        with self._lock:
            self._requests.append(request)
            backfill = self._backfill(request.start_time_gte, now)
            self._subscribers.add(subscriber)
        if not context.add_callback(subscriber.close):
            subscriber.close()
        try:
            for result in itertools.chain(backfill, iter(subscriber.next_live, None)):
                if subscriber.drop_code() is not None:
                    break
                yield result
                subscriber.sent_one()
                with self._lock:
                    self._results_sent += 1
            code = subscriber.drop_code()
            if code is not None:
                context.abort(code, "stream dropped by the test server")
        finally:
            with self._lock:
                self._subscribers.discard(subscriber)

    def _roll_on_boundaries(self) -> None:
        last = self._bucket_start(self._clock())
        while not self._stopping.wait(_ROLLOVER_POLL_SECONDS):
            current = self._bucket_start(self._clock())
            if current != last:
                last = current
                self.rollover()


class _FlowsServicer:
    """Adapter for the generated registration, which looks handlers up by RPC name."""

    def __init__(
        self,
        stream: Callable[
            [goldmane_pb2.FlowStreamRequest, grpc.ServicerContext],
            Iterator[goldmane_pb2.FlowResult],
        ],
    ) -> None:
        self.Stream = stream


class _Subscriber:
    """One open stream: a bounded hand-off queue for live buckets, and the drop_streams hook."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[goldmane_pb2.FlowResult] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._drop_after: int | None = None
        self._drop_code = grpc.StatusCode.UNAVAILABLE

    def offer(self, results: Sequence[goldmane_pb2.FlowResult], timeout: float) -> int:
        """Queue one bucket's results within `timeout`; returns how many had to be skipped."""
        deadline = time.monotonic() + timeout
        with self._changed:
            for index, result in enumerate(results):
                has_room = self._changed.wait_for(
                    lambda: self._closed or len(self._queue) < self._capacity,
                    deadline - time.monotonic(),
                )
                if self._closed:
                    return 0
                if not has_room:
                    return len(results) - index
                self._queue.append(result)
                self._changed.notify_all()
        return 0

    def next_live(self) -> goldmane_pb2.FlowResult | None:
        """Wait for the next live result; None once the stream has to end."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._dropping() or bool(self._queue))
            if self._closed or self._dropping():
                return None
            result = self._queue.popleft()
            self._changed.notify_all()
            return result

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def drop_after(self, count: int, code: grpc.StatusCode) -> None:
        with self._changed:
            self._drop_after = count
            self._drop_code = code
            self._changed.notify_all()

    def sent_one(self) -> None:
        with self._changed:
            if self._drop_after:
                self._drop_after -= 1

    def drop_code(self) -> grpc.StatusCode | None:
        with self._changed:
            return self._drop_code if self._dropping() else None

    def _dropping(self) -> bool:
        return self._drop_after == 0


def _keep_common(labels: MutableSequence[str], other: Sequence[str]) -> None:
    common = set(labels).intersection(other)
    labels[:] = [label for label in labels if label in common]
