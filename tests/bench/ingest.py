"""Benchmark of the daemon's ingest: results/s through the whole path, beside the machine's limit.

Not a test: it measures, prints one table and exits 0 unless a result was wrong (tests/
test_bench_smoke.py runs `--smoke` so that it cannot rot). Goldmane hands a reader a whole
15-second bucket at once and drops what a slow reader has not taken within about a second, so
the daemon's receive rate decides whether a big cluster's trail is complete.

A load generator (loadgen.js --framed: gRPC on node's HTTP/2, on a CPU of its own) replays one
bucket of realistic ~540-byte FlowResults over mutual TLS on 127.0.0.1, bucket after bucket
with increasing flow times: 1,000 namespace pairs, 2 connections each, reported by both ends,
4,000 results per bucket. It writes many results at a time, as a busy gRPC-Go server (Goldmane)
coalesces its writes, and stays far from busy while the client is saturated; the table shows
both. (With --grpc-js, @grpc/grpc-js writes one result at a time: about 40,000 results/s with
its own core 85-93% busy, near being the limit itself; the client also does more work per
result when results come one per write.) The client side of each measurement is a fresh Python
process pinned to the other CPU, so each figure is per client core and each peak RSS is that
run's own.

  A  raw limit: the daemon's gRPC channel (`open_channel`) receiving the results undecoded.
  F  full path: the real `Daemon` (receiver and flusher threads sharing the one core, as in a
     one-core deployment): mTLS receive, decode, map, coalesce, and flushes every 5 s into a
     fresh schema of PostgreSQL, timed from the first result until the last result is in and
     the final flush has committed. The stream stays open after the last result, as
     Goldmane's does between pushes, so the daemon never reconnects; it is stopped as soon as
     every result is in, and its stop + final flush is shown in a column of its own.
  F  again with the load generator held to a fixed rate: the SQL statements per second must
     not follow the flow rate (they are counted on the daemon's own connections).
  N  the naive design, for comparison: the same client and decode, then one autocommit
     `INSERT ... ON CONFLICT DO UPDATE` per flow (a stand-in for the design we rejected).

A and F run for each stream length (100k, 1M, 5M results by default) so that time and memory
can be seen to grow with work: memory must stay flat, bounded by distinct edges. Lengths up to
1M run at least five times, A and F interleaved, shorter ones until their runs total 2M
results (20 runs at 100k), and the table shows medians (a shared VM's speed drifts by tens of
percent; the column `other` shows when another process took the core, and the F/A of each
interleaved pair shows how far the drift went).

Run one after the other, A and F rarely meet the same machine speed: the F/A of a pair at 100k
has ranged from 0.5 to 1.7 on one VM. So A and F also run at the same time, each with a load
generator of its own, sharing the client core: the scheduler interleaves them a few ms at a
time, both see the same speed, and F/A is the ratio of their results per CPU-second (F's
includes its PostgreSQL backends' CPU, which /proc counts in 10 ms ticks). Such pairs agree
far better (at 100k in one run: 0.82-0.91, where the pairs run apart gave 0.62-1.29), and the
target of 90% is judged on their median (6 pairs at 100k, 3 at 1M, 1 at 5M). The two start
together, but F first starts its daemon and A, the faster, ends first: F's last part and final
flush run alone, a tenth or so of a 100k pair and a few percent of longer ones. F's clock, as in
its runs apart, starts once its first batch of results is counted, A's at its first result.

Each F run is checked: every result received, none skipped, no reconnect, and the trail holds
exactly the edges and counts of the buckets sealed (the last bucket is still open when the
daemon stops, as in production, and would be read again at the next start).

Run from the repository root with the dev virtualenv (the default run takes 7 to 16 minutes):

  python tests/bench/ingest.py
  python tests/bench/ingest.py --lengths 100k,1M --database-url postgresql://...
  python tests/bench/ingest.py --smoke            # 3,000 results, about 10 s: for CI

It needs node and npm (it runs `npm install` here when node_modules is missing), at least two
CPUs and a PostgreSQL (default postgresql://postgres@127.0.0.1:5432/test) in which it may
create and drop schemas. gRPC's own environment, e.g. GRPC_EXPERIMENTS, reaches the clients,
which run with MALLOC_ARENA_MAX=2 as the image runs the daemon (unless it is set here).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
import psycopg.conninfo
from common import (
    BUCKET,
    T0,
    BucketTemplate,
    Window,
    check_loadgen,
    children_cpu_seconds,
    client_and_server_cpus,
    client_environment_note,
    client_settings,
    cpu_busy_seconds,
    cpu_model,
    cpu_seconds_of,
    current_rss_kib,
    ensure_node_modules,
    interrupt_on_sigterm,
    measure_raw,
    peak_rss_kib,
    run_worker_process,
    run_worker_processes,
    start_loadgen,
    stop_loadgen,
    tool_versions,
    worker_timeout,
    write_bucket_template,
)

import aggregator.store.ingest
from aggregator.buffer import EdgeBuffer
from aggregator.daemon import Daemon
from aggregator.goldmane_client import open_channel, stream_flows
from aggregator.mapping import ACTION_BY_RANK, is_bad_time, key_fields, rank_of
from aggregator.pki import Pki, make_pki
from aggregator.settings import DaemonSettings, GoldmaneSettings
from aggregator.store.migrations import migrate
from aggregator.wire import goldmane_pb2 as pb

DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_LENGTHS: Final = (100_000, 1_000_000, 5_000_000)
DEFAULT_EDGES: Final = 1_000
DEFAULT_FLUSH_INTERVAL: Final = 5.0  # the daemon's default FLUSH_INTERVAL_SECONDS
DEFAULT_NAIVE_RESULTS: Final = 100_000
DEFAULT_LIMITED_RATE: Final = 5_000
DEFAULT_REPEATS: Final = 5
# Runs longer than this are made once: they average over minutes, and take them.
REPEAT_AT_MOST: Final = 1_000_000
# A 100k run lasts about a second, and one burst of a shared VM's other tenants moves its
# figure by tens of percent: shorter lengths run until their runs total this many results
# (20 runs at 100k), so that a second benchmark gives the same median.
RESULTS_PER_LENGTH_AT_LEAST: Final = 2_000_000
# A and F then also run at the same time, sharing the client core, so that both see the same
# machine speed: at least this many pairs per length up to REPEAT_AT_MOST, shorter lengths
# until their pairs total SHARED_RESULTS_PER_LENGTH_AT_LEAST results; one pair above it.
SHARED_PAIRS_AT_LEAST: Final = 3
SHARED_RESULTS_PER_LENGTH_AT_LEAST: Final = 600_000

SMOKE_RESULTS: Final = 3_000
SMOKE_EDGES: Final = 25  # 100 results per bucket: 30 buckets in a smoke run
SMOKE_NAIVE_RESULTS: Final = 300
SMOKE_LIMITED_RATE: Final = 1_500
SMOKE_FLUSH_INTERVAL: Final = 0.5  # so that flushes also happen while the smoke run streams

TARGET_SHARE_OF_RAW: Final = 0.90
TARGET_RATE: Final = 20_000
# Peak RSS of the longest run within this factor of the shortest's counts as flat.
FLAT_MEMORY_FACTOR: Final = 1.25

# The full-path worker polls `buffer.received` this often, but only for the last results
# (see _Arrivals): the end of the stream is seen within half a millisecond.
FINAL_POLL_SECONDS: Final = 0.0005
FINAL_POLL_RESULTS: Final = 1_000
# EdgeBuffer skips flow times more than a day behind its clock as implausible: a stream's
# buckets must span less (the clock is just past the last one).
MAX_FLOW_TIME_SPAN: Final = 86_400 - 3_600
# This often the full-path worker samples its RSS and Python's allocated blocks: peak RSS
# alone also catches gRPC's transient read-ahead when the loop is held up.
MEMORY_SAMPLE_SECONDS: Final = 0.5
# No new result for this long: the stream is stuck, not slow.
STALL_SECONDS: Final = 60.0

# The rejected design, for comparison only: not the product's SQL.
NAIVE_UPSERT: Final = """
    INSERT INTO edge AS e (src_ns, dst_ns, action, first_seen, last_seen, flow_count)
    VALUES (%s, %s, %s, to_timestamp(%s), to_timestamp(%s), 1)
    ON CONFLICT (src_ns, dst_ns, action) DO UPDATE SET
        first_seen = LEAST(e.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(e.last_seen, EXCLUDED.last_seen),
        flow_count = e.flow_count + 1
"""

# --- what a worker measured -------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One measurement by one client process; crosses the process boundary as one JSON line.

    `count` results were timed over `seconds`: from the first result seen until the end of the
    work (for F: the final flush committed).
    """

    kind: str
    results: int
    count: int
    seconds: float
    cpu_seconds: float
    loadgen_cpu_seconds: float
    max_rss_kib: int
    # F and N only.
    statements: int = 0
    flushes: int = 0
    # F only.
    stream_seconds: float = 0.0
    final_seconds: float = 0.0
    final_flush_seconds: float = 0.0
    received: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    exit_status: int = 0
    flushes_total: int = 0
    edges_upserted_total: int = 0
    backend_pids: list[int] = field(default_factory=list)
    # F only: CPU time of its PostgreSQL backends over `seconds`.
    database_cpu_seconds: float = 0.0
    # F only: RSS while streaming (median of samples) and the most Python objects held.
    steady_rss_kib: int = 0
    python_blocks: int = 0
    # Set by the parent: the load generator's rate limit, if any, and the share of the client's
    # CPU that anything but the client used over the client process's life.
    limited_rate: int = 0
    other_load: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_per_cpu(self) -> float:
        """Results per CPU-second: of the client process, and for F of its backends too."""
        cpu = self.cpu_seconds + self.database_cpu_seconds
        return self.count / cpu if cpu > 0 else 0.0

    @property
    def stream_rate(self) -> float:
        return self.count / self.stream_seconds if self.stream_seconds > 0 else 0.0

    @property
    def statements_per_second(self) -> float:
        return self.statements / self.seconds if self.seconds > 0 else 0.0

    @property
    def flushes_per_second(self) -> float:
        return self.flushes / self.seconds if self.seconds > 0 else 0.0


def _settings(args: argparse.Namespace) -> GoldmaneSettings:
    return client_settings(args.port, Path(args.ca), Path(args.cert), Path(args.key))


def _measure_raw(args: argparse.Namespace) -> Run:
    count, window = measure_raw(_settings(args), args.loadgen_pid)
    # Timed from the first result on: the intervals are one fewer than the results.
    return Run(
        "A",
        args.results,
        count - 1,
        window.seconds,
        window.cpu_seconds,
        window.loadgen_cpu_seconds,
        peak_rss_kib(),
        received=count,
    )


def _is_postgres(pid: int) -> bool:
    """Whether `pid` is a PostgreSQL process on this machine."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


class _StatementCounter:
    """Counts the SQL statements the daemon's store executes, on its own connections.

    pg_stat_statements needs shared_preload_libraries, which a benchmark cannot assume, and
    pg_stat_database counts every client of the database. So each connection that IngestStore
    opens gets a cursor class that counts `execute` calls (psycopg's Connection.execute goes
    through it): an exact count of the statements sent, BEGIN/COMMIT aside (one transaction
    per flush). PostgreSQL's per-table statistics then cross-check what the flushes wrote.
    """

    def __init__(self) -> None:
        self.count = 0
        self.backend_pids: list[int] = []
        # A backend's CPU time as its connection closed: its process is gone soon after.
        self.backend_cpu_at_close: dict[int, float] = {}

    def database_cpu_seconds(self) -> float:
        """CPU time of the connections' backends so far (of a closed one, until it closed).

        Counted where PostgreSQL runs on this machine; elsewhere (or in a container of its own)
        the backend's pid is not one of ours to read, and it counts 0.
        """
        total = 0.0
        for pid in self.backend_pids:
            if pid in self.backend_cpu_at_close:
                total += self.backend_cpu_at_close[pid]
            elif _is_postgres(pid):
                total += cpu_seconds_of(pid)
        return total

    def install(self) -> None:
        counter = self
        real_connect = aggregator.store.ingest.connect

        class CountingCursor(psycopg.Cursor[Any]):
            def execute(self, *args: Any, **kwargs: Any) -> Any:
                counter.count += 1
                return super().execute(*args, **kwargs)

        def counting_connect(url: str, **kwargs: Any) -> Any:
            conn = real_connect(url, **kwargs)
            conn.cursor_factory = CountingCursor
            pid = conn.info.backend_pid
            counter.backend_pids.append(pid)
            real_close = conn.close

            def close() -> None:
                if _is_postgres(pid):
                    counter.backend_cpu_at_close[pid] = cpu_seconds_of(pid)
                real_close()

            conn.close = close  # type: ignore[method-assign]
            return conn

        # Only this process's reference: ingest.py calls `connect` through its module globals.
        aggregator.store.ingest.connect = counting_connect  # type: ignore[assignment]


class _Arrivals:
    """Tells the full-path worker when the daemon's buffer has counted results.

    Reading `buffer.received` 100 times a second took the GIL from the receive loop each time
    and cost F about 2% of its results per CPU-second (six pairs run sharing the core:
    1.00-1.04 without it). So the buffer's own count, once per batch of results, sets an
    event; only the last results, which wait in the queue for a batch that the stream does not
    complete, are polled for. The count is wrapped on this one buffer only: the benchmark's
    instrument, not the daemon's code.
    """

    def __init__(self, buffer: EdgeBuffer, total: int) -> None:
        self.first = threading.Event()
        self.nearly_all = threading.Event()
        count_queued = buffer._count_queued

        def count_and_tell() -> None:
            count_queued()
            counted = buffer._counted  # under the buffer's lock, as _count_queued always is
            if counted and not self.first.is_set():
                self.first.set()
            if counted >= total - FINAL_POLL_RESULTS and not self.nearly_all.is_set():
                self.nearly_all.set()

        buffer._count_queued = count_and_tell  # type: ignore[method-assign]


def _measure_full_path(args: argparse.Namespace) -> Run:
    statements = _StatementCounter()
    statements.install()
    settings = DaemonSettings(
        goldmane=_settings(args),
        database_url=args.database_url,
        http_port=0,
        flush_interval=args.flush_interval,
        log_format="text",
    )

    # Just past the last bucket's push: the data is Goldmane's recent past. The buffer reads
    # the clock per flow; a C-level constant costs what time.time does, a Python one more.
    flow_clock = itertools.repeat(float(args.flow_clock)).__next__
    daemon = Daemon(
        settings, database_url=args.database_url, flow_clock=flow_clock, http_host="127.0.0.1"
    )
    registry = daemon.metrics.registry

    def sample(name: str) -> float:
        return registry.get_sample_value(f"edge_aggregator_{name}") or 0.0

    exit_status: list[int] = []
    runner = threading.Thread(target=lambda: exit_status.append(daemon.run()), daemon=True)
    runner.start()
    buffer = daemon.buffer
    total = args.results

    arrivals = _Arrivals(buffer, total)
    rss_samples: list[int] = []
    python_blocks = 0

    def wait_for(done: Callable[[], bool], pause: Callable[[], object]) -> int:
        """Pause until `done()`, sampling memory meanwhile; the results received by then."""
        nonlocal python_blocks
        last, last_change = buffer.received, time.monotonic()
        next_sample = last_change + MEMORY_SAMPLE_SECONDS
        while not done():
            pause()
            if time.monotonic() >= next_sample:
                next_sample = time.monotonic() + MEMORY_SAMPLE_SECONDS
                rss_samples.append(current_rss_kib())
                python_blocks = max(python_blocks, sys.getallocatedblocks())
            if not runner.is_alive():
                raise SystemExit("ingest: the daemon stopped by itself")
            received, now = buffer.received, time.monotonic()
            if received != last:
                last, last_change = received, now
            elif now - last_change > STALL_SECONDS:
                daemon.stop()
                raise SystemExit(f"ingest: no result for {STALL_SECONDS:g} s at {received:,}")
        return buffer.received

    try:
        first = wait_for(arrivals.first.is_set, lambda: arrivals.first.wait(MEMORY_SAMPLE_SECONDS))
        # The clock starts once the first results are counted (connect and handshake are not
        # throughput), and the results counted are those after that.
        started, cpu_started = time.perf_counter(), time.process_time()
        database_cpu_started = statements.database_cpu_seconds()
        loadgen_started = cpu_seconds_of(args.loadgen_pid) if args.loadgen_pid else 0.0
        statements_before = statements.count
        flushes_before = sample("flush_duration_seconds_count")
        nearly_all = arrivals.nearly_all
        wait_for(nearly_all.is_set, lambda: nearly_all.wait(MEMORY_SAMPLE_SECONDS))
        wait_for(lambda: buffer.received >= total, lambda: time.sleep(FINAL_POLL_SECONDS))
        streamed = time.perf_counter()
        loadgen_streamed = cpu_seconds_of(args.loadgen_pid) if args.loadgen_pid else 0.0
        flush_seconds_before = sample("flush_duration_seconds_sum")
    finally:
        # At once: the stop seals and flushes what is complete, as at a SIGTERM.
        daemon.stop()
        runner.join(timeout=60)
    if runner.is_alive():
        raise SystemExit("ingest: the daemon did not stop within 60 s")
    cpu_committed = time.process_time()
    database_cpu = statements.database_cpu_seconds() - database_cpu_started
    # The final flush's end is when its commit returned, not when run() returned: that also
    # waits for the HTTP server's 0.5 s poll to notice its shutdown.
    wall_to_perf = time.perf_counter() - time.time()
    committed = sample("last_flush_timestamp_seconds") + wall_to_perf
    if not streamed < committed <= time.perf_counter():
        committed = time.perf_counter()  # no final flush (the exit status says why)
    if not statements.backend_pids:
        raise SystemExit("ingest: counted no connection: does IngestStore still use connect()?")
    return Run(
        "F",
        total,
        total - first,
        committed - started,
        cpu_committed - cpu_started,
        loadgen_streamed - loadgen_started,
        peak_rss_kib(),
        statements=statements.count - statements_before,
        flushes=int(sample("flush_duration_seconds_count") - flushes_before),
        stream_seconds=streamed - started,
        final_seconds=committed - streamed,
        final_flush_seconds=sample("flush_duration_seconds_sum") - flush_seconds_before,
        received=buffer.received,
        skipped=dict(buffer.skipped),
        reconnects=int(sample("stream_reconnects_total")),
        exit_status=exit_status[0] if exit_status else -1,
        flushes_total=int(sample("flush_duration_seconds_count")),
        edges_upserted_total=int(sample("edges_upserted_total")),
        backend_pids=statements.backend_pids,
        database_cpu_seconds=database_cpu,
        # A run shorter than one sample: its end stands for its whole.
        steady_rss_kib=int(statistics.median(rss_samples)) if rss_samples else current_rss_kib(),
        python_blocks=python_blocks or sys.getallocatedblocks(),
    )


def _measure_naive(args: argparse.Namespace) -> Run:
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        migrate(conn)  # the product's tables and indexes: the same table to write into
        channel = open_channel(_settings(args))
        try:
            _, results = stream_flows(channel, 0)
            execute = conn.execute
            statements = 0

            def upsert(data: bytes) -> None:
                nonlocal statements
                flow = pb.FlowResult.FromString(data).flow
                if not flow.HasField("Key"):
                    return
                fields = key_fields(flow.Key)
                rank = rank_of(fields)
                if isinstance(rank, str) or is_bad_time(flow.start_time, flow.end_time):
                    return
                execute(
                    NAIVE_UPSERT,
                    (
                        fields[0],
                        fields[1],
                        ACTION_BY_RANK[rank],
                        flow.start_time,
                        flow.end_time,
                    ),
                )
                statements += 1

            upsert(next(results))
            window = Window(args.loadgen_pid)
            count = 1
            for result in results:
                upsert(result)
                count += 1
            window.stop()
        finally:
            channel.close()
        pid = conn.info.backend_pid
    return Run(
        "N",
        args.results,
        count - 1,
        window.seconds,
        window.cpu_seconds,
        window.loadgen_cpu_seconds,
        peak_rss_kib(),
        statements=statements - 1,
        received=count,
        backend_pids=[pid],
    )


def run_worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(threadName)s %(name)s: %(message)s")
    # Every client freezes what its start-up built, as the daemon's entry point does.
    gc.collect()
    gc.freeze()
    measure = {"A": _measure_raw, "F": _measure_full_path, "N": _measure_naive}
    print(json.dumps(asdict(measure[args.worker](args))), flush=True)


# --- the database -----------------------------------------------------------------------------


@contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """A URL whose search_path is a new schema, dropped afterwards (as tests/conftest.py does)."""
    schema = f"bench_ingest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield psycopg.conninfo.make_conninfo(database_url, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def database_description(database_url: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        host = conn.info.host
        version, fsync, commit = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'),"
            " current_setting('synchronous_commit')"
        ).fetchone() or ("?", "?", "?")
    where = "a local socket" if host.startswith("/") else host
    return f"PostgreSQL {version} on {where} (fsync {fsync}, synchronous_commit {commit})"


@dataclass(frozen=True)
class TableWrites:
    """Rows written per table of one schema, from PostgreSQL's own statistics."""

    edge: int
    progress: int


def table_writes(url: str, backend_pids: list[int]) -> TableWrites:
    """Rows inserted + updated in `edge` and `ingest_progress` of the URL's schema.

    A backend reports its statistics when it exits; waiting until the worker's backends are
    gone from pg_stat_activity makes the figures complete.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (backend_pids,)
            ).fetchone()
            if row is None or row[0] == 0:
                break
            time.sleep(0.05)
        rows = conn.execute(
            "SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables"
            " WHERE schemaname = current_schema() AND relname IN ('edge', 'ingest_progress')"
        ).fetchall()
    written = dict(rows)
    return TableWrites(int(written.get("edge", 0)), int(written.get("ingest_progress", 0)))


def check_trail(url: str, template: BucketTemplate, run: Run) -> list[str]:
    """What is wrong with a full-path run's result, if anything."""
    problems = []
    if run.received != run.results:
        problems.append(f"received {run.received:,} of {run.results:,} results")
    if sum(run.skipped.values()):
        problems.append(f"skipped {run.skipped}")
    if run.reconnects:
        problems.append(f"{run.reconnects} reconnects")
    if run.exit_status != 0:
        problems.append(f"the daemon exited with status {run.exit_status}")
    # Every bucket but the last is sealed by the next one's arrival; the last is still open
    # (neither a newer bucket nor 5 s of quiet) when the daemon stops, and is not counted.
    sealed = template.buckets_of(run.results) - 1
    expected = {
        (src, dst, ACTION_BY_RANK[rank]): (connections * sealed, T0, T0 + sealed * BUCKET)
        for (src, dst, rank), connections in template.edges_per_bucket.items()
    }
    if sealed == 0:
        expected = {}
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT src_ns, dst_ns, action, flow_count, extract(epoch FROM first_seen)::bigint,"
            " extract(epoch FROM last_seen)::bigint FROM edge"
        ).fetchall()
        progress = conn.execute(
            "SELECT extract(epoch FROM sealed_until)::bigint FROM ingest_progress"
        ).fetchall()
    trail = {
        (src, dst, action): (count, first, last) for src, dst, action, count, first, last in rows
    }
    if trail != expected:
        wrong = sum(
            1 for key in expected.keys() | trail.keys() if trail.get(key) != expected.get(key)
        )
        problems.append(
            f"the trail differs from the expected one in {wrong:,} of {len(expected):,} edges "
            f"(flow_count sum {sum(v[0] for v in trail.values()):,}, "
            f"expected {sum(v[0] for v in expected.values()):,})"
        )
    want_progress = [(T0 + sealed * BUCKET,)] if sealed else []
    if progress != want_progress:
        problems.append(f"progress {progress}, expected {want_progress}")
    return problems


def check_naive(url: str, run: Run) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(flow_count), 0) FROM edge").fetchone()
    counted = int(row[0]) if row else 0
    if run.received != run.results or counted != run.results:
        return [f"naive: received {run.received:,}, counted {counted:,} of {run.results:,}"]
    return []


# --- orchestration ----------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything one benchmark run needs to start a measurement."""

    template: BucketTemplate
    pki: Pki
    client_cpu: int
    server_cpu: int
    database_url: str
    flush_interval: float
    framed: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cross_checks: int = 0

    def measure(
        self, kind: str, results: int, *, url: str = "", rate: int = 0, hold: bool = False
    ) -> Run:
        loadgen, port = self._start_loadgen(results, rate=rate, hold=hold)
        try:
            args = self._worker_args(port, results, url)
            timeout = worker_timeout(results) + (results / rate if rate else 0)
            busy, ours, started = self._cpu_sample()
            fields = run_worker_process(Path(__file__).resolve(), kind, args, timeout, loadgen.pid)
            busy_after, ours_after, ended = self._cpu_sample()
        finally:
            stop_loadgen(loadgen)
        # Another process on the client's core (PostgreSQL, a test run, the hypervisor)
        # slows the client down: shown beside each figure so that such a run can be told.
        other = ((busy_after - busy) - (ours_after - ours)) / (ended - started)
        return Run(**{**fields, "limited_rate": rate, "other_load": max(0.0, other)})

    def sharing_the_core(self, results: int) -> tuple[Run, Run]:
        """A and F at the same time on the client core, each with a load generator: (A, F)."""
        with fresh_schema(self.database_url) as url:
            loadgens: list[tuple[subprocess.Popen[bytes], int]] = []
            try:
                loadgens.append(self._start_loadgen(results))
                loadgens.append(self._start_loadgen(results, hold=True))
                workers = [
                    (kind, self._worker_args(port, results, worker_url), loadgen.pid)
                    for kind, worker_url, (loadgen, port) in zip(
                        ("A", "F"), ("", url), loadgens, strict=True
                    )
                ]
                timeout = 2 * worker_timeout(results)
                raw, full = run_worker_processes(Path(__file__).resolve(), workers, timeout)
            finally:
                for loadgen, _ in loadgens:
                    stop_loadgen(loadgen)
            full_run = Run(**full)
            self.problems += [
                f"F {results:,} sharing the core: {problem}"
                for problem in check_trail(url, self.template, full_run)
            ]
        return Run(**raw), full_run

    def _start_loadgen(
        self, results: int, *, rate: int = 0, hold: bool = False
    ) -> tuple[subprocess.Popen[bytes], int]:
        extra = ["--bucket-seconds", str(BUCKET)]
        if self.framed:
            extra += ["--framed"]
        if rate:
            extra += ["--rate", str(rate)]
        if hold:
            extra += ["--hold"]
        pki = self.pki
        loadgen, port = start_loadgen(
            self.template.path,
            results,
            pki.ca_cert,
            pki.server_cert,
            pki.server_key,
            self.server_cpu,
            extra,
        )
        check_loadgen(loadgen)
        return loadgen, port

    def _worker_args(self, port: int, results: int, url: str) -> list[str]:
        pki = self.pki
        buckets = self.template.buckets_of(results)
        args = ["--port", str(port), "--ca", str(pki.ca_cert), "--cert", str(pki.client_cert)]
        args += ["--key", str(pki.client_key), "--results", str(results)]
        args += ["--database-url", url, "--flush-interval", str(self.flush_interval)]
        # Just past the push of the last bucket (a bucket is pushed two widths after start).
        args += ["--flow-clock", str(T0 + (buckets + 1) * BUCKET)]
        return args

    def _cpu_sample(self) -> tuple[float, float, float]:
        return cpu_busy_seconds(self.client_cpu), children_cpu_seconds(), time.perf_counter()

    def full_path(self, results: int, *, rate: int = 0) -> Run:
        with fresh_schema(self.database_url) as url:
            run = self.measure("F", results, url=url, rate=rate, hold=True)
            self.problems += [f"F {results:,}: {p}" for p in check_trail(url, self.template, run)]
            writes = table_writes(url, run.backend_pids)
        # PostgreSQL's own count of what the flushes wrote, against the daemon's metrics.
        self.cross_checks += 1
        if writes.progress != run.flushes_total or writes.edge != run.edges_upserted_total:
            self.notes.append(
                f"NOTE: F {results:,}: pg_stat_user_tables counts {writes.progress} progress "
                f"and {writes.edge:,} edge row writes; the daemon counted {run.flushes_total} "
                f"flushes and {run.edges_upserted_total:,} edges upserted"
            )
        return run

    def naive(self, results: int) -> Run:
        with fresh_schema(self.database_url) as url:
            run = self.measure("N", results, url=url)
            self.problems += check_naive(url, run)
            writes = table_writes(url, run.backend_pids)
        self.cross_checks += 1
        if writes.edge != run.received:
            self.notes.append(
                f"NOTE: N {results:,}: pg_stat_user_tables counts {writes.edge:,} edge row "
                f"writes for {run.received:,} upserts"
            )
        return run


# --- the report -------------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.0f} MiB"


def _header() -> str:
    return (
        f"{'':<44} {'results':>9}  {'results/s':>9}  {'of A':>5}  {'streaming':>9}  "
        f"{'seconds':>7}  {'stop+flush':>10}  {'SQL stmts/s':>11}  {'flushes/s':>9}  "
        f"{'client':>6}  {'other':>5}  {'loadgen':>7}  {'peak RSS':>8}   results/s of each run"
    )


def _median(runs: list[Run]) -> Run:
    """The run of median rate (of an even number, the slower middle one)."""
    return sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]


def _row(label: str, runs: list[Run], raw: list[Run] | None = None) -> str:
    run = _median(runs)
    each = " ".join(f"{r.rate:,.0f}" for r in runs) if len(runs) > 1 else ""
    peak = max(r.max_rss_kib for r in runs)
    share = f"{run.rate / _median(raw).rate:>5.2f}" if raw is not None else f"{'-':>5}"
    final = f"{run.final_seconds:>9.2f}s" if run.kind == "F" else f"{'-':>10}"
    streaming = f"{run.stream_rate:>9,.0f}" if run.kind == "F" else f"{'-':>9}"
    per_second = run.statements_per_second
    sql = f"{per_second:>11,.{2 if per_second < 100 else 0}f}" if run.kind != "A" else f"{'-':>11}"
    flushes = f"{run.flushes_per_second:>9.2f}" if run.kind == "F" else f"{'-':>9}"
    # The load generator's share of its core while it was sending.
    sending = run.stream_seconds if run.kind == "F" else run.seconds
    return (
        f"{label:<44} {run.results:>9,}  {run.rate:>9,.0f}  {share}  {streaming}  "
        f"{run.seconds:>7.1f}  {final}  {sql}  {flushes}  {run.cpu_seconds / run.seconds:>6.0%}  "
        f"{max(r.other_load for r in runs):>5.0%}  {run.loadgen_cpu_seconds / sending:>7.0%}  "
        f"{_mib(peak):>8}   {each}"
    ).rstrip()


def _paired_shares(raw: dict[int, list[Run]], full: dict[int, list[Run]]) -> str:
    """F/A of each interleaved pair of runs, median and range: how far the machine's drift goes."""
    parts = []
    for length in sorted(full):
        pairs = sorted(f.rate / a.rate for a, f in zip(raw[length], full[length], strict=True))
        if len(pairs) > 1:
            parts.append(
                f"{statistics.median(pairs):.2f} ({pairs[0]:.2f}-{pairs[-1]:.2f}) at {length:,}"
            )
    return "; F/A of each interleaved pair, median (range): " + ", ".join(parts) if parts else ""


def _sharing_shares(pairs: list[tuple[Run, Run]]) -> list[float]:
    """F/A of each pair run sharing the core, in results per CPU-second, lowest first."""
    return sorted(full.rate_per_cpu / raw.rate_per_cpu for raw, full in pairs)


def _sharing_line(shared: dict[int, list[tuple[Run, Run]]]) -> str:
    parts = []
    for length in sorted(shared):
        shares = _sharing_shares(shared[length])
        spread = f" ({shares[0]:.2f}-{shares[-1]:.2f})" if len(shares) > 1 else ""
        parts.append(f"{statistics.median(shares):.2f}{spread} at {length:,}")
    return ", ".join(parts)


def _verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def _statements_verdict(full: dict[int, list[Run]], limited: Run, bench: Bench) -> str:
    """Are the statements driven by the flush clock, not by the flows?

    Two signs, both needed. Every run flushed at most once per interval, plus the final flush,
    plus a tick right at the start. And the fastest run's statements/s is not the rate-limited
    run's scaled by their flow rates: below the geometric mean of 1 (flat) and that ratio
    (proportional), so a statement per flow or per bucket cannot pass. The fastest run is
    taken among the full-speed runs that lasted two flush intervals: in a shorter one the
    final flush's statements alone make a high rate; with none, it is not judged. (The
    rate-limited run lasts longer than that by design: its length over its rate.)
    """
    full_speed = [run for repeats in full.values() for run in repeats]
    runs = [*full_speed, limited]
    clocked = all(0 < r.flushes <= r.seconds / bench.flush_interval + 2 for r in runs)
    long_enough = [r for r in full_speed if r.seconds >= 2 * bench.flush_interval]
    if not long_enough:
        return (
            f"not judged (no full-speed run lasted two flush intervals, "
            f"{2 * bench.flush_interval:g} s: add a longer length)"
        )
    fastest = max(long_enough, key=lambda r: r.rate)
    speedup = fastest.rate / limited.rate
    growth = fastest.statements_per_second / limited.statements_per_second
    flat = clocked and speedup >= 2 and growth < math.sqrt(speedup)
    longest = max(runs, key=lambda r: r.seconds)
    return (
        f"{_verdict(flat)} ({longest.statements / longest.flushes:.1f} statements per flush; "
        f"{fastest.statements_per_second:.2f} statements/s at {fastest.rate:,.0f} results/s, "
        f"{limited.statements_per_second:.2f} at {limited.rate:,.0f}: {growth:.2f}x for "
        f"{speedup:.1f}x the flows; flushes "
        + ", ".join(f"{r.flushes_per_second:.2f}/s" for r in (fastest, limited))
        + f", one per {bench.flush_interval:g} s tick plus the final one)"
    )


def report(
    raw: dict[int, list[Run]],
    full: dict[int, list[Run]],
    shared: dict[int, list[tuple[Run, Run]]],
    limited: Run,
    naive: Run,
    bench: Bench,
    *,
    smoke: bool,
) -> bool:
    """Print the table, the targets and the checks; False when a result was wrong."""
    lengths = sorted(full)
    print()
    print(_header())
    for length in lengths:
        print(_row("A  raw limit: gRPC mTLS, not decoded", raw[length]))
    for length in lengths:
        print(_row("F  full path: daemon, flushing to PostgreSQL", full[length], raw[length]))
    print(_row(f"F  the same, load held to {limited.limited_rate:,}/s", [limited]))
    print(_row("N  naive: one upsert per flow", [naive]))
    # Ours on the same load as the naive run, or the nearest length.
    ours = _median(full[min(lengths, key=lambda n: abs(n - naive.results))])
    print(f"{'F / N  ours / naive':<44} {'':>9}  {ours.rate / naive.rate:>8.1f}x")
    print(
        "F / A with A and F sharing the client core at the same time, results per CPU-second "
        f"(F's PostgreSQL backend included), median (range): {_sharing_line(shared)}"
    )
    print(
        "(results/s: from the first result until the work was done, for F until its final "
        "flush committed; stop+flush: from the last result in to that commit, of which the "
        "flush itself took "
        + ", ".join(f"{_median(full[n]).final_flush_seconds * 1000:.0f}" for n in lengths)
        + " ms; client, loadgen: share of one core; other: the largest share of the client's "
        "core that other processes took during a run, PostgreSQL included)"
    )
    print()

    median_raw = {n: _median(raw[n]) for n in lengths}
    median_full = {n: _median(full[n]) for n in lengths}
    shares = [median_full[n].rate / median_raw[n].rate for n in lengths]
    sharing = [statistics.median(_sharing_shares(shared[n])) for n in lengths]
    rates = [median_full[n].rate for n in lengths]
    # Growth with work is judged on what the process holds while it streams (RSS sampled every
    # 0.5 s, median) and on Python's allocated blocks: a peak also catches a moment's gRPC
    # read-ahead while the receive loop is held up, which comes at any length.
    steady = [statistics.median_low(r.steady_rss_kib for r in full[n]) for n in lengths]
    blocks = [max(r.python_blocks for r in full[n]) for n in lengths]
    peaks = [max(r.max_rss_kib for r in full[n]) for n in lengths]
    print("targets" + (" (smoke run: too short for its figures to mean anything)" if smoke else ""))
    print(
        f"  full path >= {TARGET_SHARE_OF_RAW:.0%} of the raw limit A, every length: "
        f"{_verdict(min(sharing) >= TARGET_SHARE_OF_RAW)} (sharing the core: "
        + ", ".join(f"{share:.2f}" for share in sharing)
        + "; run apart: "
        + ", ".join(f"{share:.2f}" for share in shares)
        + "; apart, while streaming: "
        + ", ".join(f"{median_full[n].stream_rate / median_raw[n].rate:.2f}" for n in lengths)
        + _paired_shares(raw, full)
        + ")"
    )
    print(
        f"  full path >= {TARGET_RATE:,} results/s on one core, every length: "
        f"{_verdict(min(rates) >= TARGET_RATE)} (" + ", ".join(f"{r:,.0f}" for r in rates) + ")"
    )
    sql = _statements_verdict(full, limited, bench)
    print(f"  SQL statements/s independent of the flow rate: {sql}")
    if len(lengths) > 1:
        flat = max(steady) <= FLAT_MEMORY_FACTOR * steady[0]
        flat = flat and max(blocks) <= FLAT_MEMORY_FACTOR * blocks[0]
        print(
            f"  memory flat, bounded by distinct edges: {_verdict(flat)} (from "
            f"{lengths[0]:,} to {lengths[-1]:,} results: RSS while streaming "
            + " -> ".join(_mib(k) for k in steady)
            + ", Python objects "
            + " -> ".join(f"{b / 1000:,.0f}k" for b in blocks)
            + " blocks; peak RSS "
            + " -> ".join(_mib(k) for k in peaks)
            + ")"
        )
    raw_runs = [run for repeats in raw.values() for run in repeats]
    loadgen_busy = max(r.loadgen_cpu_seconds / r.seconds for r in raw_runs)
    client_busy = min(r.cpu_seconds / r.seconds for r in raw_runs)
    print(
        f"  load generator faster than the client: {_verdict(loadgen_busy < 0.9)} (during A, "
        f"loadgen busy at most {loadgen_busy:.0%} of its core, the client at least "
        f"{client_busy:.0%} of its own)"
    )
    print()
    busy = [r for runs in (*raw.values(), *full.values()) for r in runs if r.other_load > 0.1]
    if busy:
        print(
            f"NOTE: other processes took up to {max(r.other_load for r in busy):.0%} of the "
            f"client's core during {len(busy)} run(s) of A or F (column other): those figures "
            "are understated; a quiet machine gives steadier ones"
        )
    for note in bench.notes:
        print(note)
    if not bench.notes:
        print(
            f"PostgreSQL's statistics agree ({bench.cross_checks} runs, pg_stat_user_tables of "
            "each schema): F wrote ingest_progress once per flush and as many edge rows as the "
            "daemon counted; N wrote one edge row per statement"
        )
    for problem in bench.problems:
        print(f"FAIL: {problem}")
    if not bench.problems:
        print(
            "checks: every run received all its results, none skipped, no reconnect; each "
            "trail holds exactly the expected edges, counts, first/last seen and progress"
        )
    return not bench.problems


def _machine(database_url: str, client_cpu: int, server_cpu: int) -> str:
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    return (
        f"machine: nproc {os.cpu_count()}, {cpu_model()}, {memory} RAM; {tool_versions()}; "
        f"{database_description(database_url)}; client on CPU {client_cpu}, load generator "
        f"on CPU {server_cpu}" + client_environment_note()
    )


def run_benchmark(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = client_and_server_cpus()
    if args.smoke:
        lengths = [SMOKE_RESULTS]
        edges, naive_results = SMOKE_EDGES, SMOKE_NAIVE_RESULTS
        limited_rate, flush_interval = SMOKE_LIMITED_RATE, SMOKE_FLUSH_INTERVAL
    else:
        lengths = sorted(args.lengths)
        edges, naive_results = args.distinct_edges, args.naive_results
        limited_rate, flush_interval = args.limited_rate, args.flush_interval

    def repeats_of(length: int) -> int:
        if args.smoke or length > REPEAT_AT_MOST:
            return 1
        return max(args.repeats, math.ceil(RESULTS_PER_LENGTH_AT_LEAST / length))

    def pairs_of(length: int) -> int:
        if args.smoke or length > REPEAT_AT_MOST:
            return 1
        return max(SHARED_PAIRS_AT_LEAST, math.ceil(SHARED_RESULTS_PER_LENGTH_AT_LEAST / length))

    ensure_node_modules()
    print(_machine(args.database_url, client_cpu, server_cpu), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        template = write_bucket_template(Path(tmp) / "bucket.bin", edges)
        print(
            f"load: FlowResults of {template.mean_size:.0f} B mean, {edges:,} namespace pairs, "
            f"{template.per_bucket // 2:,} connections each reported by both ends: "
            f"{template.per_bucket:,} results per 15 s bucket, buckets of increasing time; "
            f"flush interval {flush_interval:g} s",
            flush=True,
        )
        bench = Bench(
            template,
            make_pki(Path(tmp) / "pki"),
            client_cpu,
            server_cpu,
            args.database_url,
            flush_interval,
            framed=not args.grpc_js,
        )
        # The client processes inherit this: the client has exactly one core.
        os.sched_setaffinity(0, {client_cpu})
        raw: dict[int, list[Run]] = {}
        full: dict[int, list[Run]] = {}
        shared: dict[int, list[tuple[Run, Run]]] = {}
        for length in lengths:
            repeats = repeats_of(length)
            raw[length], full[length] = [], []
            for repeat in range(repeats):
                # Interleaved, so that a drift of the machine touches both.
                raw[length].append(bench.measure("A", length))
                full[length].append(bench.full_path(length))
                print(
                    f"{length:,} results, run {repeat + 1}/{repeats}: "
                    f"A {raw[length][-1].rate:,.0f}/s, F {full[length][-1].rate:,.0f}/s, "
                    f"peak RSS {_mib(full[length][-1].max_rss_kib)}",
                    flush=True,
                )
            shared[length] = []
            for pair in range(pairs_of(length)):
                raw_run, full_run = bench.sharing_the_core(length)
                shared[length].append((raw_run, full_run))
                print(
                    f"{length:,} results, A and F sharing the core {pair + 1}/{pairs_of(length)}:"
                    f" results per CPU-second A {raw_run.rate_per_cpu:,.0f}, F "
                    f"{full_run.rate_per_cpu:,.0f} (F's PostgreSQL backend "
                    f"{full_run.database_cpu_seconds * 1000:,.0f} ms), F / A "
                    f"{full_run.rate_per_cpu / raw_run.rate_per_cpu:.3f}",
                    flush=True,
                )
        limited = bench.full_path(lengths[0], rate=limited_rate)
        print(f"{lengths[0]:,} results held to {limited_rate:,}/s: F {limited.rate:,.0f}/s")
        naive = bench.naive(naive_results)
        print(f"{naive_results:,} results, naive: {naive.rate:,.0f}/s", flush=True)
    return 0 if report(raw, full, shared, limited, naive, bench, smoke=args.smoke) else 1


def _length(text: str) -> int:
    """100000, 100k, 1M."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of results: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError("a stream needs at least 2 results")
    return value


def _lengths(text: str) -> list[int]:
    return [_length(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--lengths",
        type=_lengths,
        default=list(DEFAULT_LENGTHS),
        help="stream lengths, comma-separated (default 100k,1M,5M)",
    )
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help=f"PostgreSQL to create throwaway schemas in (default {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=DEFAULT_FLUSH_INTERVAL,
        help="the daemon's seconds between flushes (default 5, as in production)",
    )
    parser.add_argument(
        "--distinct-edges",
        type=int,
        default=DEFAULT_EDGES,
        help="distinct (source, destination) namespace pairs (default 1000)",
    )
    parser.add_argument(
        "--naive-results",
        type=_length,
        default=DEFAULT_NAIVE_RESULTS,
        help="results for the naive design (default 100k; it does ~2,300/s)",
    )
    parser.add_argument(
        "--limited-rate",
        type=int,
        default=DEFAULT_LIMITED_RATE,
        help="results/s of the rate-limited run, over the shortest length (default 5000)",
    )
    parser.add_argument(
        "--grpc-js",
        action="store_true",
        help="serve with @grpc/grpc-js, one write per result, instead of batched HTTP/2 writes",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"runs of A and F per length up to {REPEAT_AT_MOST:,} results, interleaved, at "
        f"least (default {DEFAULT_REPEATS}; shorter lengths run until their runs total "
        f"{RESULTS_PER_LENGTH_AT_LEAST:,} results); the table shows medians",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_RESULTS:,} results, naive on {SMOKE_NAIVE_RESULTS}: checks, for CI",
    )
    # The client side of one measurement, run by the benchmark itself in a fresh process.
    parser.add_argument("--worker", choices=("A", "F", "N"), help=argparse.SUPPRESS)
    for name in ("--ca", "--cert", "--key"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--port", "--loadgen-pid", "--results", "--flow-clock"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        try:
            run_worker(args)
        except KeyboardInterrupt:
            # Ctrl-C reaches the whole process group; the parent reports it, once.
            return 130
        return 0
    if not args.lengths or min(args.distinct_edges, args.limited_rate, args.repeats) < 1:
        parser.error(
            "--lengths must name a length; --distinct-edges, --limited-rate, --repeats >= 1"
        )
    if args.flush_interval <= 0:
        parser.error("--flush-interval must be positive")
    buckets = math.ceil(max(args.lengths) / (4 * args.distinct_edges))
    if buckets * BUCKET > MAX_FLOW_TIME_SPAN:
        parser.error(
            f"{max(args.lengths):,} results are {buckets:,} buckets: more flow time than the "
            "daemon accepts behind its clock; raise --distinct-edges (results per bucket)"
        )
    interrupt_on_sigterm()
    try:
        return run_benchmark(args)
    except KeyboardInterrupt:
        print("ingest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
