"""The coalescing buffer between the receive loop and the flusher.

Reports are held per open bucket until the bucket is complete ("sealed"): then
each connection counts once, with its merged verdict, into the edge totals
waiting to be flushed. Progress is the end of the newest sealed bucket, so a
resumed stream asks only for buckets that were never counted, and anything
older that arrives again is a duplicate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aggregator.mapping import (
    ACTION_BY_RANK,
    SKIP_BAD_TIME,
    SKIP_DUPLICATE,
    SKIP_LATE,
    Connection,
    Report,
    report_of,
)
from aggregator.wire import goldmane_pb2

EdgeKey = tuple[str, str, str]
"""(src_ns, dst_ns, action)"""

# A bucket [S, S+15) is pushed at S+30; the contract's live point is two widths behind.
_PUSH_DELAY_BUCKETS = 2
# Goldmane hands a bucket to a stream in one burst (it gives up on a reader after
# ~1 s per write), so silence after the push time means the burst is over. The
# margin is for a network that stalls with part of a bucket in flight and then
# resumes: reports that still arrive after this are counted as `late`.
DEFAULT_QUIET_SECONDS = 20.0
# Flow times outside this window of the flow clock are not Goldmane's (ms or us
# epochs, 1970): they would poison first_seen and the progress watermark.
_PLAUSIBLE_PAST_SECONDS = 86_400
_PLAUSIBLE_FUTURE_SECONDS = 3_600


@dataclass
class EdgeTotals:
    """What one flush adds to an edge row."""

    first_seen: int
    last_seen: int
    flow_count: int


@dataclass
class Batch:
    """Sealed edge totals and the progress they bring the store to."""

    edges: dict[EdgeKey, EdgeTotals] = field(default_factory=dict)
    sealed_until: int | None = None

    def merge(self, other: Batch) -> None:
        """Fold a later batch into this one (a failed flush keeps its batch and retries)."""
        for key, add in other.edges.items():
            _add_totals(self.edges, key, add.first_seen, add.last_seen, add.flow_count)
        if other.sealed_until is not None:
            self.sealed_until = max(self.sealed_until or 0, other.sealed_until)


@dataclass
class _OpenBucket:
    end: int
    verdicts: dict[Connection, int] = field(default_factory=dict)


def _add_totals(
    edges: dict[EdgeKey, EdgeTotals], key: EdgeKey, first: int, last: int, count: int
) -> None:
    totals = edges.get(key)
    if totals is None:
        edges[key] = EdgeTotals(first, last, count)
    else:
        totals.first_seen = min(totals.first_seen, first)
        totals.last_seen = max(totals.last_seen, last)
        totals.flow_count += count


class EdgeBuffer:
    """Thread-safe: the receive loop calls `add`, the flusher `seal_quiet_buckets` and `take`."""

    def __init__(
        self,
        *,
        sealed_until: int | None,
        flow_clock: Callable[[], float] = time.time,
        quiet_seconds: float = DEFAULT_QUIET_SECONDS,
    ) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, _OpenBucket] = {}
        self._newest_open_start = 0
        self._sealed = Batch(sealed_until=sealed_until)
        self._sealed_until = sealed_until or 0
        self._flow_clock = flow_clock
        self._quiet_seconds = quiet_seconds
        self._last_add = time.monotonic()
        # Buckets this stream sealed on silence alone: more of them means a stalled network.
        self._sealed_by_quiet: set[int] = set()
        # Plain counters, read by the metrics collector: no metric call per flow.
        self.received = 0
        self.skipped: dict[str, int] = {}
        self.newest_flow_end = 0

    @property
    def sealed_until(self) -> int | None:
        """End of the newest sealed bucket: where a resumed stream must start."""
        with self._lock:
            return self._sealed_until or None

    def restore_progress(self, sealed_until: int | None) -> None:
        """Start from the progress the store recorded (before the first stream opens)."""
        with self._lock:
            self._sealed_until = max(self._sealed_until, sealed_until or 0)

    def add(self, result: goldmane_pb2.FlowResult) -> str | None:
        """Take one FlowResult; returns the skip reason, or None when it counts."""
        report = report_of(result.flow)
        with self._lock:
            self.received += 1
            self._last_add = time.monotonic()
            if isinstance(report, str):
                return self._skip(report)
            return self._add_report(report)

    def _add_report(self, report: Report) -> str | None:
        start = report.bucket_start
        now = self._flow_clock()
        if not now - _PLAUSIBLE_PAST_SECONDS <= start <= now + _PLAUSIBLE_FUTURE_SECONDS:
            return self._skip(SKIP_BAD_TIME)
        if start < self._sealed_until:
            return self._skip(SKIP_LATE if start in self._sealed_by_quiet else SKIP_DUPLICATE)
        bucket = self._open.get(start)
        if bucket is None:
            bucket = self._open[start] = _OpenBucket(report.bucket_end)
            if start > self._newest_open_start:
                self._newest_open_start = start
                # Buckets arrive in order: a newer one means the older ones are complete.
                self._seal(lambda open_start: open_start < start)
        verdicts = bucket.verdicts
        if verdicts.get(report.connection, -1) < report.rank:
            verdicts[report.connection] = report.rank
        if report.bucket_end > self.newest_flow_end:
            self.newest_flow_end = report.bucket_end
        return None

    def _skip(self, reason: str) -> str:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        return reason

    def seal_quiet_buckets(self) -> int:
        """Seal open buckets whose push is past and whose burst has ended; returns how many.

        This is what records an idle cluster's last bucket: no newer bucket
        will come to seal it.
        """
        with self._lock:
            if time.monotonic() - self._last_add < self._quiet_seconds:
                return 0
            now = self._flow_clock()
            sealed = self._seal(
                lambda start: start + _PUSH_DELAY_BUCKETS * (self._open[start].end - start) <= now
            )
            self._sealed_by_quiet.update(sealed)
            return len(sealed)

    def _seal(self, is_complete: Callable[[int], bool]) -> list[int]:
        done = sorted(start for start in self._open if is_complete(start))
        edges = self._sealed.edges
        for start in done:
            bucket = self._open.pop(start)
            for connection, rank in bucket.verdicts.items():
                key = (connection[0], connection[2], ACTION_BY_RANK[rank])
                _add_totals(edges, key, start, bucket.end, 1)
            self._sealed_until = max(self._sealed_until, bucket.end)
        if done:
            self._sealed.sealed_until = self._sealed_until
        return done

    def discard_open(self) -> int:
        """Forget partly received buckets (the stream dropped); they will be asked for again."""
        with self._lock:
            dropped = sum(len(bucket.verdicts) for bucket in self._open.values())
            self._open.clear()
            self._newest_open_start = 0
            self._sealed_by_quiet.clear()
            return dropped

    def take(self) -> Batch:
        """Hand the sealed totals to the flusher and start a new batch."""
        with self._lock:
            batch = self._sealed
            self._sealed = Batch()
            return batch

    def sizes(self) -> tuple[int, int]:
        """(open connections, sealed edges awaiting flush), for the buffer-size gauge."""
        with self._lock:
            open_entries = sum(len(bucket.verdicts) for bucket in self._open.values())
            return open_entries, len(self._sealed.edges)
