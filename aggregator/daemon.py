"""`edge-aggregator`: stream Goldmane's flows into the PostgreSQL edge trail until told to stop.

Three threads share an EdgeBuffer: the receiver (gRPC stream, never touches the
database), the flusher (one batched write every few seconds) and the health
server. The main thread waits until told to stop (a thread of its own turns SIGTERM and
SIGINT into that) and runs the shutdown.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from types import FrameType
from typing import Final

import grpc
import psycopg

from aggregator import hotpath
from aggregator.backoff import Backoff
from aggregator.buffer import Batch, EdgeBuffer, EdgeKey
from aggregator.embedded import resolve_database_url
from aggregator.goldmane_client import (
    STEP_RPC,
    StreamFailure,
    check_resolves,
    classify,
    open_channel,
    resume_point,
    stream_flows,
)
from aggregator.health import HealthServer
from aggregator.logs import configure_logging
from aggregator.metrics import DaemonMetrics
from aggregator.settings import (
    DaemonSettings,
    GoldmaneSettings,
    SettingsError,
    load_daemon_settings,
    load_database_url,
    load_log_format,
    redact_url,
)
from aggregator.simulator import Simulator
from aggregator.status import RunStats, StatusLine
from aggregator.store.connection import DatabaseUrlRefused, StoreError, describe_error
from aggregator.store.ingest import IngestStore

log = logging.getLogger("aggregator")

SHUTDOWN_BUDGET_SECONDS = 8.0
"""Kubernetes waits 30 s by default; the issue asks for an exit within 10 s."""

_CONNECTIVITY_POLL_SECONDS = 0.25
_CLOCK_SKEW_TOLERANCE_SECONDS = 60.0
# A stream that stayed up this long was a success: the next failure starts backoff afresh.
_HEALTHY_STREAM_SECONDS = 60.0


class Daemon:
    """One aggregator: `run()` blocks until `stop()`, then flushes and returns an exit status."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        database_url: str,
        flow_clock: Callable[[], float] = time.time,
        http_host: str = "::",
        quiet_seconds: float | None = None,
    ) -> None:
        self._settings = settings
        self._database_url = database_url
        self._flow_clock = flow_clock
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Call | None = None
        self._store: IngestStore | None = None
        self._unflushed: Batch | None = None
        self._stream_connected = False
        self._database_up = False
        self._crashed = False
        self._last_flush_ok = time.monotonic()
        self._edges_written: set[EdgeKey] = set()
        self._edges_created = 0
        self._channel_closer: threading.Timer | None = None
        buffer_options = {} if quiet_seconds is None else {"quiet_seconds": quiet_seconds}
        self.buffer = EdgeBuffer(sealed_until=None, flow_clock=flow_clock, **buffer_options)
        self.metrics = DaemonMetrics(self.buffer)
        self._health = HealthServer(
            host=http_host,
            port=settings.http_port,
            registry=self.metrics.registry,
            readiness=self.not_ready_reasons,
        )

    @property
    def http_port(self) -> int:
        return self._health.port

    def not_ready_reasons(self) -> list[str]:
        """Why /readyz should fail: empty when streaming, storing and flushing."""
        reasons = []
        if not self._stream_connected:
            reasons.append("stream to Goldmane not connected")
        if not self._database_up:
            reasons.append("database unreachable")
        stale_after = max(3 * self._settings.flush_interval, 30.0)
        if time.monotonic() - self._last_flush_ok > stale_after:
            reasons.append(f"no successful flush in {stale_after:g}s")
        return reasons

    def stats(self) -> RunStats:
        """Counts for people watching: flows received, edges written, edges new to the trail."""
        return RunStats(self.buffer.received, len(self._edges_written), self._edges_created)

    def stop(self) -> None:
        """Ask the daemon to shut down, from another thread (signals: `_stopped_by_signals`)."""
        self._stopping.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> int:
        self._health.start()
        log.info("serving /healthz, /readyz and /metrics", extra={"http_port": self.http_port})
        try:
            try:
                opened = self._open_store()
            except DatabaseUrlRefused as error:
                # A bad setting, not an outage: retrying would only repeat it.
                log.error("DATABASE_URL holds a setting libpq refuses", extra={"error": str(error)})
                return 2
            if not opened:
                return 0
            receiver = self._thread(self._receive_forever, "receiver")
            flusher = self._thread(self._flush_forever, "flusher")
            receiver.start()
            flusher.start()
            while not self._stopping.wait(1.0):
                pass
            deadline = time.monotonic() + SHUTDOWN_BUDGET_SECONDS
            receiver.join(timeout=max(0.0, deadline - time.monotonic()) / 2)
            flusher.join(timeout=max(0.0, deadline - time.monotonic()) / 2)
            if flusher.is_alive():
                # Its write is still waiting on the database; a second writer would race it.
                log.error("a flush is still waiting on the database at exit; not flushing again")
                return 1
            flushed = self._final_flush(deadline)
            return 0 if flushed and not self._crashed else 1
        finally:
            if self._store is not None:
                self._store.close()
            if self._channel_closer is not None:
                self._channel_closer.join()
            self._health.close()

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        """A worker whose unexpected death stops the daemon (exit 1), not leaves it half-alive."""

        def guarded() -> None:
            try:
                target()
            except Exception as error:
                log.error(f"internal error in the {name} thread; stopping", exc_info=error)
                self._crashed = True
                self.stop()

        return threading.Thread(target=guarded, name=name, daemon=True)

    # -- start-up -----------------------------------------------------------------

    def _open_store(self) -> bool:
        """Connect, migrate and load progress, retrying until it works or we are stopped.

        A setting libpq refuses in the URL is raised (DatabaseUrlRefused), not retried.
        """
        backoff = Backoff(initial=1.0, maximum=30.0)
        while not self._stopping.is_set():
            try:
                store = IngestStore.open(self._database_url)
                try:
                    applied = store.migrate()
                    sealed_until = store.load_progress()
                except BaseException:
                    store.close()
                    raise
            except DatabaseUrlRefused:
                raise
            except (StoreError, psycopg.Error) as error:
                delay = backoff.next_delay()
                log.warning(
                    "database not ready at start-up",
                    extra={"error": describe_error(error), "retry_in_s": round(delay, 1)},
                )
                self._stopping.wait(delay)
                continue
            self._store = store
            self._database_up = True
            self.buffer.restore_progress(sealed_until)
            log.info(
                "database ready",
                extra={"migrations_applied": applied, "resume_from": sealed_until},
            )
            return True
        return False

    # -- receiving ----------------------------------------------------------------

    def _receive_forever(self) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        attempt = 0
        while not self._stopping.is_set():
            if attempt:
                self.metrics.stream_reconnects.inc()
            attempt += 1
            started = time.monotonic()
            try:
                self._stream_once()
                failure = StreamFailure(STEP_RPC, "stream ended by the server")
            except StreamFailure as error:
                failure = error
            except grpc.RpcError as error:
                failure = classify(error, tls=not self._settings.goldmane.insecure)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _HEALTHY_STREAM_SECONDS:
                backoff.reset()
            delay = backoff.next_delay()
            self.metrics.stream_failures.labels(failure.step).inc()
            log.warning(
                f"Goldmane stream failed at step: {failure.step}",
                extra={
                    "step": failure.step,
                    "detail": failure.detail,
                    "target": self._settings.goldmane.target,
                    "attempt": attempt,
                    "retry_in_s": round(delay, 1),
                },
            )
            self._stopping.wait(delay)

    def _stream_once(self) -> None:
        goldmane = self._settings.goldmane
        check_resolves(goldmane)
        channel = open_channel(goldmane)
        try:
            now = self._flow_clock()
            sealed_until = self.buffer.sealed_until
            if sealed_until is not None and sealed_until > now + _CLOCK_SKEW_TOLERANCE_SECONDS:
                # Flows older than progress count as duplicates: nothing is recorded until
                # the clock passes it. Only an operator knows whether the clock or the row is wrong.
                log.error(
                    "stored progress is ahead of the clock; flows before it are skipped as "
                    "duplicates (if the clock was wrong: DELETE FROM ingest_progress)",
                    extra={"sealed_until": sealed_until, "ahead_s": round(sealed_until - now)},
                )
            start = resume_point(sealed_until, now)
            call, results = stream_flows(channel, start)
            with self._lock:
                self._call = call
            if self._stopping.is_set():
                call.cancel()
            channel.subscribe(self._on_connectivity, try_to_connect=True)
            log.info(
                "streaming flows from Goldmane",
                extra={"target": goldmane.target, "start_time_gte": start},
            )
            self.buffer.consume(results)
        finally:
            channel.unsubscribe(self._on_connectivity)
            with self._lock:
                self._call = None
                self._set_stream_connected(False)
            dropped = self.buffer.discard_open()
            if dropped:
                log.info(
                    "discarded a partly received bucket; it will be read again",
                    extra={"connections": dropped},
                )
            # grpc's connectivity poller notices the unsubscribe within one 0.2 s poll;
            # closing the channel under it makes that thread die with a traceback. Closed
            # later, so that a stop does not wait for it before the final flush.
            self._channel_closer = threading.Timer(_CONNECTIVITY_POLL_SECONDS, channel.close)
            self._channel_closer.daemon = True
            self._channel_closer.start()

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        # Under the lock, and READY only while a stream is open: a callback that comes late,
        # after the stream ended, must not leave /readyz saying connected through the backoff.
        with self._lock:
            if state is grpc.ChannelConnectivity.READY and self._call is not None:
                self._set_stream_connected(True)
            elif state in (
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                grpc.ChannelConnectivity.SHUTDOWN,
            ):
                self._set_stream_connected(False)

    def _set_stream_connected(self, connected: bool) -> None:
        if connected and not self._stream_connected:
            log.info("connected to Goldmane", extra={"target": self._settings.goldmane.target})
        self._stream_connected = connected
        self.metrics.stream_connected.set(1 if connected else 0)

    # -- flushing -----------------------------------------------------------------

    def _flush_forever(self) -> None:
        backoff = Backoff(initial=1.0, maximum=30.0)
        delay = self._settings.flush_interval
        while not self._stopping.wait(delay):
            if self.flush_once():
                backoff.reset()
                delay = self._settings.flush_interval
            else:
                delay = backoff.next_delay()

    def flush_once(self) -> bool:
        """Write what is sealed; a failed batch is kept and retried alone, then the new one."""
        self.buffer.seal_quiet_buckets()
        try:
            store = self._connected_store()
            if self._unflushed is not None:
                self._write(store, self._unflushed)
                self._unflushed = None
            batch = self.buffer.take()
            if batch.edges or batch.sealed_until is not None:
                self._unflushed = batch
                self._write(store, batch)
                self._unflushed = None
            else:
                store.ping()
        except (StoreError, psycopg.Error) as error:
            self._database_up = False
            self.metrics.database_up.set(0)
            self.metrics.flush_failures.inc()
            self._drop_store()
            pending = len(self._unflushed.edges) if self._unflushed else 0
            log.warning(
                "flush failed; keeping the batch and retrying",
                extra={"error": describe_error(error), "edges_pending": pending},
            )
            return False
        self._database_up = True
        self.metrics.database_up.set(1)
        self.metrics.last_flush.set_to_current_time()
        self._last_flush_ok = time.monotonic()
        return True

    def _write(self, store: IngestStore, batch: Batch) -> None:
        started = time.perf_counter()
        result = store.write(batch)
        self.metrics.flush_duration.observe(time.perf_counter() - started)
        self.metrics.edges_upserted.inc(result.upserted)
        self.metrics.edges_created.inc(result.created)
        self._edges_written.update(batch.edges)
        self._edges_created += result.created
        if result.created:
            log.info(
                "new edges recorded",
                extra={"edges_created": result.created, "edges_upserted": result.upserted},
            )

    def _connected_store(self) -> IngestStore:
        if self._store is None:
            self._store = IngestStore.open(self._database_url)
        return self._store

    def _drop_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            finally:
                self._store = None

    def _final_flush(self, deadline: float) -> bool:
        """Flush what the receiver sealed, retrying until the shutdown budget runs out."""
        while True:
            if self.flush_once():
                log.info("flushed and stopped", extra={"sealed_until": self.buffer.sealed_until})
                return True
            if time.monotonic() + 1.0 > deadline:
                log.error(
                    "could not flush before exit; buckets not flushed will be read again "
                    "from Goldmane at the next start if it still holds them"
                )
                return False
            time.sleep(1.0)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="edge-aggregator",
        description="Stream Calico Goldmane's flows into a PostgreSQL namespace-edge trail.",
        epilog="Each connection flag has an environment variable of the same meaning "
        "(in brackets). Exit status: 0 stopped cleanly, 1 could not flush before exit, "
        "2 bad settings.",
    )
    for flag, (variable, help_text) in _ENV_FLAGS.items():
        parser.add_argument(flag, dest=variable, metavar="VALUE", help=f"{help_text} [{variable}]")
    demo = parser.add_argument_group(
        "simulator", "Try it without a cluster: a synthetic cluster served over real mTLS."
    )
    demo.add_argument(
        "--simulate", action="store_true", help="run against the built-in Goldmane simulator"
    )
    demo.add_argument(
        "--namespaces", type=int, default=72, metavar="N", help="simulated namespaces (72)"
    )
    demo.add_argument(
        "--rate",
        type=float,
        default=100.0,
        metavar="FLOWS",
        help="at most this many flow reports per simulated second (100); each connection "
        "end reports once per 15 s bucket, which caps it",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed for a reproducible cluster (1)")
    demo.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="simulated time runs X times faster than real time (1); flow times run ahead",
    )
    return parser.parse_args(argv)


# Flags that override the environment variable of the same meaning.
_ENV_FLAGS = {
    "--goldmane-host": ("GOLDMANE_HOST", "host:port of Goldmane"),
    "--server-name": ("GOLDMANE_SERVER_NAME", "TLS server name to verify"),
    "--ca-file": ("GOLDMANE_CA_FILE", "CA bundle of Goldmane's serving cert"),
    "--cert-file": ("GOLDMANE_CERT_FILE", "client certificate"),
    "--key-file": ("GOLDMANE_KEY_FILE", "client key"),
    "--http-port": ("HTTP_PORT", "port of /healthz, /readyz and /metrics (9090)"),
    "--flush-interval": ("FLUSH_INTERVAL_SECONDS", "seconds between flushes (5)"),
    "--log-format": ("LOG_FORMAT", "auto, json or text (auto: text on a terminal)"),
}


def _check_simulator_args(args: argparse.Namespace) -> None:
    if args.namespaces < 12 or args.rate <= 0 or not 0.1 <= args.speed <= 1000:
        raise SettingsError("--namespaces must be >= 12, --rate > 0, --speed from 0.1 to 1000")


def _start_simulator(
    args: argparse.Namespace, database_url: str
) -> tuple[Simulator, GoldmaneSettings]:
    try:
        simulator = Simulator(
            namespaces=args.namespaces,
            rate=args.rate,
            seed=args.seed,
            speed=args.speed,
            start=simulation_start(database_url),
        )
        return simulator, simulator.start()
    except ImportError:
        raise SettingsError(
            "the simulator needs its extra: pip install 'goldmane-edge-aggregator[simulator]'"
        ) from None


# The most a simulation may have run ahead of the wall clock: a week of flow time is 5.6 hours
# at --speed 30.
_SIMULATION_LEAD_SECONDS: Final = 7 * 86_400


def simulation_start(database_url: str) -> float:
    """Where a simulated cluster's time starts: now, or where an earlier simulation got to.

    Simulated time runs --speed times faster than the wall clock, so a simulation's stored
    progress is ahead of it: a new one starting at the wall clock would see only duplicates
    until it caught up.
    """
    now = time.time()
    try:
        with IngestStore.open(database_url) as store:
            progress = store.load_progress()
    except (StoreError, psycopg.Error):
        return now  # no trail yet; or no database, which the daemon reports and waits for
    if progress is None or not now < progress <= now + _SIMULATION_LEAD_SECONDS:
        # Further ahead is no simulation's: the daemon says so ("progress is ahead").
        return now
    log.info(
        "the simulated cluster goes on from where the last simulation stopped",
        extra={"ahead_of_wall_clock_s": round(progress - now)},
    )
    return progress


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    env = {**os.environ}
    env.update({var: value for var, value in vars(args).items() if var.isupper() and value})
    simulator: Simulator | None = None
    try:
        try:
            configure_logging(load_log_format(env))
            goldmane, database_url = None, None
            if args.simulate:
                _check_simulator_args(args)
                database_url = resolve_database_url(load_database_url(env))
                simulator, goldmane = _start_simulator(args, database_url)
            settings = load_daemon_settings(env, goldmane=goldmane)
            database_url = database_url or resolve_database_url(settings.database_url)
        except SettingsError as error:
            print(f"edge-aggregator: {error}", file=sys.stderr)
            return 2
        return _run(settings, database_url, simulator)
    finally:
        if simulator is not None:
            simulator.stop()


def _run(settings: DaemonSettings, database_url: str, simulator: Simulator | None) -> int:
    log.info(
        "starting edge-aggregator",
        extra={
            "goldmane": "simulator" if simulator else settings.goldmane.target,
            "database": redact_url(database_url),
            # Python's is correct too, at a lower receive rate: worth knowing at a glance.
            "receive_path": "compiled" if hotpath.COMPILED else "python",
        },
    )
    flow_clock = simulator.clock if simulator else time.time
    try:
        daemon = Daemon(settings, database_url=database_url, flow_clock=flow_clock)
    except OSError as error:
        print(
            f"edge-aggregator: cannot listen on HTTP_PORT {settings.http_port}: {error.strerror}",
            file=sys.stderr,
        )
        return 2

    with _stopped_by_signals(daemon):
        # What start-up built (modules, settings, the daemon) lives as long as the run: frozen,
        # the collector's full passes stop walking it again while flows stream in.
        gc.collect()
        gc.freeze()
        try:
            if simulator is None:
                return daemon.run()
            status = StatusLine(daemon.stats, sys.stderr)
            status.start()
            try:
                return daemon.run()
            finally:
                status.stop()
                _print_next_steps(daemon.stats())
        finally:
            gc.unfreeze()


_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_NO_SIGNAL: Final = 0  # written when the run ends, so that the watcher returns


@contextmanager
def _stopped_by_signals(daemon: Daemon) -> Iterator[None]:
    """SIGTERM and SIGINT stop the daemon, from a thread of their own, not from the handler.

    A handler runs in the main thread between two bytecodes, whatever that thread is doing:
    a second signal's handler interrupted the first one's inside `Event.set`, holding the
    stop Event's lock, and waited for it forever; a handler that logs can interrupt a log
    line being written. So the handler does nothing, and Python writes each signal's number
    to a pipe (`set_wakeup_fd`) that a thread reads. From the end of the run to the exit,
    the signals are ignored: one arriving then would kill the process or raise
    KeyboardInterrupt out of the clean-up.
    """
    with ExitStack() as clean_up:
        read_end, write_end = os.pipe()
        clean_up.callback(os.close, read_end)
        clean_up.callback(os.close, write_end)
        os.set_blocking(write_end, False)
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        clean_up.callback(signal.set_wakeup_fd, previous_fd)
        for signum in _STOP_SIGNALS:
            clean_up.callback(signal.signal, signum, signal.SIG_IGN)
            signal.signal(signum, _ignore)

        def watch() -> None:
            while (signum := os.read(read_end, 1)[0]) not in _STOP_SIGNALS:
                if signum == _NO_SIGNAL:
                    return
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            daemon.stop()

        def wake_watcher() -> None:
            with suppress(BlockingIOError):  # full: a signal came, and the watcher has returned
                os.write(write_end, bytes([_NO_SIGNAL]))

        watcher = threading.Thread(target=watch, name="signals", daemon=True)
        watcher.start()
        clean_up.callback(watcher.join)
        clean_up.callback(wake_watcher)
        yield


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python handler of the stop signals: the watcher thread acts on them."""


def _print_next_steps(stats: RunStats) -> None:
    print(
        f"Stopped: {stats.flows_received:,} flows made {stats.edges:,} edges "
        f"({stats.new_edges:,} new to the trail). Try:\n"
        "  edges --peers-of dbaas\n"
        "  edges --denied\n"
        "  edges --format dot | dot -Tsvg -o edges.svg\n"
        "  edges-digest --dry-run",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
