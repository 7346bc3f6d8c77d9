"""The coalescing buffer between the receive loop and the flusher.

Reports are held per open bucket until the bucket is complete ("sealed"): then
each connection counts once, with its merged verdict, into the edge totals
waiting to be flushed. Progress is the end of the newest sealed bucket, so a
resumed stream asks only for buckets that were never counted, and anything
older that arrives again is a duplicate.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from aggregator.hotpath import (
    Connection,
    FlowHead,
    KeyVerdict,
    count_known,
    flow_head,
    keep_highest,
    new_connection,
    new_key_table,
    read_key,
    read_key_python,
    seal_bucket,
)
from aggregator.mapping import (
    ACTION_BY_RANK,
    SKIP_BAD_TIME,
    SKIP_DUPLICATE,
    SKIP_LATE,
    SKIP_NO_KEY,
    SKIP_OVERSIZED,
    SKIP_UNDECODABLE,
    KeyFields,
    is_bad_time,
    rank_of,
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
# Distinct flow keys whose verdict is remembered: the same connections report bucket after
# bucket. About 460 bytes each, and 72 per connection for its Connection. Where more keys
# than this come round every bucket, emptying the memory when full would make every key
# miss: it keeps what it holds (those keys still hit), decodes the others each time, and
# starts again from empty only after as many of those decodes as it holds, so that the keys
# of connections gone do not stay forever. The price: a memory full of such keys costs up to
# that many decodes (under 0.3 s) before it empties.
_KEY_CACHE_LIMIT = 65_536
# A FlowResult is about 500 bytes; one this long (gRPC's default message limit) is no flow
# report that the trail can use, and is skipped.
MAX_RESULT_BYTES = 4 * 1024 * 1024
# Results queued before the receive loop takes the lock to count them: one lock per batch.
_BATCH_SIZE = 256


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


def _key_verdict(fields: KeyFields, rank: int, connection: Connection) -> KeyVerdict:
    """The verdict of a flow key on its connection (`fields`'s), with the edge it makes."""
    src_ns, dst_ns, _, _, _ = fields
    action = ACTION_BY_RANK[rank]
    # Namespaces are RFC 1123 labels (rank_of checks) and actions single words: no spaces.
    # Interned: the keys of one edge share its name, as they share its namespaces.
    edge_name = sys.intern(f"{src_ns} {dst_ns} {action}")
    # Made as tuple.__new__ makes it: KeyVerdict(...) runs a __new__ written in Python, which
    # cost as much as reading the key in C, once per key of a stream's first bucket.
    return tuple.__new__(KeyVerdict, (connection, rank, (src_ns, dst_ns, action), edge_name))


class _SealedCounts:
    """Sealed buckets' edges until the flusher takes them, counted under the edges' names.

    A name is a string whose hash Python keeps: hashing a tuple again for each count cost
    more than the rest of the seal. `seal_bucket` counts a whole bucket in one call, in C
    where it is built; a step per connection in Python cost as much as receiving the
    results did.
    """

    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()
        self.first_seen: dict[str, int] = {}
        self.last_seen: dict[str, int] = {}
        self.edges: dict[str, EdgeKey] = {}

    def add_bucket(self, bucket: _OpenBucket, start: int) -> None:
        seal_bucket(
            bucket.counted,
            start,
            bucket.end,
            self.connections,
            self.first_seen,
            self.last_seen,
            self.edges,
        )

    def batch(self, sealed_until: int | None) -> Batch:
        totals = {
            self.edges[name]: EdgeTotals(self.first_seen[name], self.last_seen[name], count)
            for name, count in self.connections.items()
        }
        return Batch(totals, sealed_until)


@dataclass
class _OpenBucket:
    """A bucket being received: its connections, each with the highest verdict it reported.

    The newest open bucket counts in the Connections that the flow keys' verdicts share, the
    receive loop's fast way. A bucket opened behind it (its start earlier, rare) must not
    disturb those: it counts in Connections of its own, found by name.
    """

    end: int
    generation: int
    """Unique to the bucket: a Connection counted by this bucket holds it (0: opened behind)."""
    counted: list[Connection] = field(default_factory=list)
    behind: dict[str, Connection] = field(default_factory=dict)

    def add(self, verdict: KeyVerdict) -> None:
        if self.generation:
            keep_highest(verdict, self.generation, self.counted)
            return
        name = verdict.connection.name
        connection = self.behind.get(name)
        if connection is None:
            connection = self.behind[name] = new_connection(name)
            self.counted.append(connection)
        if connection.best is None or connection.best.rank < verdict.rank:
            connection.best = verdict


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
    """Thread-safe: the receive loop calls `consume`, the flusher `seal_quiet_buckets` and `take`.

    `consume` only queues each result: the queue is counted under the lock every
    `_BATCH_SIZE` results, and by every method that reads the buffer, so that nothing
    queued is ever missed. The receive loop's cost per result decides the receive rate.
    """

    def __init__(
        self,
        *,
        sealed_until: int | None,
        flow_clock: Callable[[], float] = time.time,
        quiet_seconds: float = DEFAULT_QUIET_SECONDS,
    ) -> None:
        self._lock = threading.Lock()
        # Appended to without the lock (list.extend appends each item under the GIL as it
        # comes); emptied from the front only under the lock, so an item appended during a
        # drain is kept for the next one.
        self._queued: list[bytes] = []
        self._open: dict[int, _OpenBucket] = {}
        self._newest_open_start = 0
        self._sealed = _SealedCounts()
        # The progress the next batch brings the store to: None until a bucket seals.
        self._sealed_progress = sealed_until
        self._sealed_until = sealed_until or 0
        self._flow_clock = flow_clock
        self._quiet_seconds = quiet_seconds
        self._last_add = time.monotonic()
        # Buckets this stream sealed on silence alone: more of them means a stalled network.
        self._sealed_by_quiet: set[int] = set()
        # Serialised FlowKey -> what it reports, or why it is skipped.
        self._key_verdicts = new_key_table()
        # Name -> the Connection that the verdicts of its keys share; emptied with the keys.
        self._connections: dict[str, Connection] = {}
        self._generations = itertools.count(1)
        self._decoded_past_limit = 0
        # Plain counters, read by the metrics collector: no metric call per flow.
        self._counted = 0
        self.keys_decoded = 0
        self.skipped: dict[str, int] = {}
        self.newest_flow_end = 0

    @property
    def sealed_until(self) -> int | None:
        """End of the newest sealed bucket: where a resumed stream must start."""
        with self._lock:
            self._count_queued()
            return self._sealed_until or None

    def restore_progress(self, sealed_until: int | None) -> None:
        """Start from the progress the store recorded (before the first stream opens)."""
        with self._lock:
            self._sealed_until = max(self._sealed_until, sealed_until or 0)

    @property
    def received(self) -> int:
        """Results taken so far, counted or still queued."""
        with self._lock:  # not in the middle of a drain: a counter must never go back
            return self._counted + len(self._queued)

    def consume(self, results: Iterable[bytes]) -> None:
        """Take serialised FlowResults as a stream delivers them, until it ends (receive loop).

        They are queued as they come and counted a batch at a time: this loop is the receive
        rate, so the queueing runs in C (list.extend over islice), not a Python step per result.
        """
        queued = self._queued
        iterator = iter(results)
        with self._lock:
            received = self._counted + len(queued)
        while True:
            queued.extend(itertools.islice(iterator, _BATCH_SIZE))
            with self._lock:
                before, received = received, self._counted + len(queued)
                self._count_queued()
            if received - before < _BATCH_SIZE:
                return  # the iterator ran out

    def add(self, data: bytes) -> None:
        """Take one serialised FlowResult."""
        self.consume((data,))

    def count_queued(self) -> None:
        """Count what was queued now (the metrics read `skipped` after this)."""
        with self._lock:
            self._count_queued()

    def _count_queued(self) -> None:
        queued = self._queued
        batch = queued[: len(queued)]
        if not batch:
            return
        del queued[: len(batch)]
        self._counted += len(batch)
        self._last_add = time.monotonic()
        index = 0
        learnt = False
        while index < len(batch):
            bucket = self._open.get(self._newest_open_start)
            if bucket is not None and self._refusal(self._newest_open_start, bucket.end):
                bucket = None  # buckets that overlap, or a day old: every rule, result by result
            index = count_known(
                batch,
                index,
                self._key_verdicts,
                self._newest_open_start if bucket else None,
                bucket.end if bucket else None,
                bucket.generation if bucket else 0,
                bucket.counted if bucket else [],
                self.skipped,
                MAX_RESULT_BYTES,
            )
            if index < len(batch):
                # The first of a bucket, a key not seen yet, an unusual layout: every rule.
                data = batch[index]
                head = flow_head(data)
                if not learnt and head is not None and head[0] not in self._key_verdicts:
                    # A stream's first bucket brings thousands of new keys: learnt in one pass
                    # (one per batch, so that a stray new key costs at most that), the rest of
                    # them are count_known's to count.
                    self._learn_keys(batch, index)
                    learnt = True
                self._count(data, head)
                index += 1

    def _count(self, data: bytes, head: FlowHead | None) -> None:
        """One result with every rule applied: counted, or its skip reason counted."""
        if len(data) > MAX_RESULT_BYTES:
            self._skip(SKIP_OVERSIZED)
            return
        if head is None:
            # Laid out unlike protobuf's usual encoding: protobuf reads it.
            try:
                flow = goldmane_pb2.FlowResult.FromString(data).flow
            except DecodeError:
                self._skip(SKIP_UNDECODABLE)
                return
            if not flow.HasField("Key"):
                self._skip(SKIP_NO_KEY)
                return
            head = flow.Key.SerializeToString(), flow.start_time, flow.end_time
        key, start, end = head
        known = self._key_verdicts.get(key)
        verdict = self._verdict_of_key(key) if known is None else known
        if isinstance(verdict, str):
            self._skip(verdict)
            if not is_bad_time(start, end):
                # Buckets come whole and in order: a skipped report of a newer bucket (a
                # self-edge, a host endpoint) still says that the older ones are complete.
                self._open_bucket(start, end)
        elif is_bad_time(start, end):
            self._skip(SKIP_BAD_TIME)
        else:
            self._add_report(verdict, start, end)

    def _learn_keys(self, batch: list[bytes], start: int) -> None:
        """Remember the verdict of each key in batch[start:] not known yet, while there is room.

        Counts nothing.
        """
        known = self._key_verdicts
        for data in itertools.islice(batch, start, None):
            if len(known) >= _KEY_CACHE_LIMIT:
                return  # not kept if learnt now: each would be decoded again when counted
            head = flow_head(data)
            if head is not None and head[0] not in known:
                self._verdict_of_key(head[0])

    def _verdict_of_key(self, key: bytes) -> KeyVerdict | str:
        self.keys_decoded += 1
        # The C reader leaves unusual layouts to protobuf, the authority on what they mean.
        fields = read_key(key) or read_key_python(key)
        verdict: KeyVerdict | str
        if fields is None:
            # Remembered too (while there is room): flow_head does not look inside a key, so
            # such a key can come result after result, and would be refused every time.
            verdict = SKIP_UNDECODABLE
        else:
            rank = rank_of(fields)
            if isinstance(rank, str):
                verdict = rank
            else:
                connection = self._connections.get(fields[4])
                if connection is None:
                    connection = self._connections[fields[4]] = new_connection(fields[4])
                verdict = _key_verdict(fields, rank, connection)
        if len(self._key_verdicts) < _KEY_CACHE_LIMIT:
            self._key_verdicts[key] = verdict
        else:
            self._decoded_past_limit += 1
            if self._decoded_past_limit >= _KEY_CACHE_LIMIT:
                self._forget_keys()
        return verdict

    def _forget_keys(self) -> None:
        self._key_verdicts.clear()
        self._decoded_past_limit = 0
        # The open bucket's connections stay: a key learnt again must find the one counted.
        newest = self._open.get(self._newest_open_start)
        counted = newest.counted if newest is not None and newest.generation else []
        self._connections = {connection.name: connection for connection in counted}

    def _refusal(self, start: int, end: int) -> str | None:
        """Why a report of the bucket [start, end) cannot count now, or None."""
        now = self._flow_clock()
        if not now - _PLAUSIBLE_PAST_SECONDS <= start <= end <= now + _PLAUSIBLE_FUTURE_SECONDS:
            return SKIP_BAD_TIME
        if start < self._sealed_until:
            return SKIP_LATE if start in self._sealed_by_quiet else SKIP_DUPLICATE
        return None

    def _add_report(self, verdict: KeyVerdict, start: int, end: int) -> None:
        bucket = self._open_bucket(start, end)
        if isinstance(bucket, str):
            self._skip(bucket)
            return
        bucket.add(verdict)

    def _open_bucket(self, start: int, end: int) -> _OpenBucket | str:
        """The open bucket [start, end), opened now if new; or why a report of it cannot count."""
        refusal = self._refusal(start, end)
        if refusal is not None:
            return refusal
        # Every report of a bucket after its first is counted in C without coming here, and
        # a first report that is skipped still shows that the stream is current.
        self.newest_flow_end = max(self.newest_flow_end, end)
        bucket = self._open.get(start)
        if bucket is None:
            newest = start > self._newest_open_start
            bucket = self._open[start] = _OpenBucket(end, next(self._generations) if newest else 0)
            if newest:
                self._newest_open_start = start
                # Buckets arrive in order: a newer one means the older ones are complete.
                self._seal(lambda open_start: open_start < start)
        return bucket

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def seal_quiet_buckets(self) -> int:
        """Seal open buckets whose push is past and whose burst has ended; returns how many.

        This is what records an idle cluster's last bucket: no newer bucket
        will come to seal it.
        """
        with self._lock:
            self._count_queued()
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
        for start in done:
            bucket = self._open.pop(start)
            self._sealed.add_bucket(bucket, start)
            self._sealed_until = max(self._sealed_until, bucket.end)
        if done:
            self._sealed_progress = self._sealed_until
        return done

    def discard_open(self) -> int:
        """Forget partly received buckets (the stream dropped); they will be asked for again.

        What was queued is counted first: it may complete (seal) an older bucket.
        """
        with self._lock:
            self._count_queued()
            dropped = sum(len(bucket.counted) for bucket in self._open.values())
            self._open.clear()
            self._newest_open_start = 0
            self._sealed_by_quiet.clear()
            return dropped

    def take(self) -> Batch:
        """Hand the sealed totals to the flusher and start a new batch."""
        with self._lock:
            self._count_queued()
            batch = self._sealed.batch(self._sealed_progress)
            self._sealed = _SealedCounts()
            self._sealed_progress = None
            return batch

    def sizes(self) -> tuple[int, int]:
        """(open connections, sealed edges awaiting flush), for the buffer-size gauge."""
        with self._lock:
            self._count_queued()
            open_entries = sum(len(bucket.counted) for bucket in self._open.values())
            return open_entries, len(self._sealed.connections)
