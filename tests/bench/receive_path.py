"""Benchmark of the daemon's receive path: Goldmane results/s one client core can take.

Not a test: it measures, prints a table and exits 0 unless the results were wrong. A node
load generator (loadgen.js --framed, faster than the client) replays pre-serialised ~540-byte
FlowResults over mutual TLS on 127.0.0.1, many per write as a busy Goldmane does. The load
generator gets one CPU; the client processes get the other, so the figures are per client core.

  A  raw limit: gRPC over mTLS with the project's channel options (`open_channel`), each
     result left undecoded (no deserializer, as the daemon's).
  B  the real receive path, as the daemon's receiver loop: `stream_flows` feeding every
     serialised result to `EdgeBuffer.consume` (read key and times, map, coalesce).
  C  no network: `EdgeBuffer.consume` of the same messages from memory (the CPU ceiling of
     our own code).

Each measurement runs in a fresh Python process (so peak RSS and warm-up are its own), 3
times, interleaved; the table shows medians. The speed of these VMs drifts by tens of percent
over seconds, more than B differs from A, so A and B then also run at the same time, sharing
the client core, 3 times: the scheduler interleaves them a few ms at a time, both see the same
machine speed, and the ratio of their results per CPU-second is B / A with the drift taken out
(A, the faster, ends first: B's last part runs alone).
Run from the repository root with the dev virtualenv:

  python tests/bench/receive_path.py                 # 300,000 results per run, under 2 minutes
  python tests/bench/receive_path.py --results 1000000 --distinct-edges 5000
  python tests/bench/receive_path.py --smoke         # 2,000 results, 1 run: for CI

It needs node and npm (it runs `npm install` here when node_modules is missing) and at least
two CPUs. gRPC's own environment, e.g. GRPC_EXPERIMENTS, is passed to the client processes,
which run with MALLOC_ARENA_MAX=2 as the image runs the daemon (unless it is set here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import Popen
from typing import Final

from common import (
    BUCKET,
    T0,
    DataSet,
    Window,
    check_loadgen,
    client_and_server_cpus,
    client_environment_note,
    client_settings,
    ensure_node_modules,
    interrupt_on_sigterm,
    measure_raw,
    peak_rss_kib,
    read_messages,
    run_worker_process,
    run_worker_processes,
    start_loadgen,
    stop_loadgen,
    tool_versions,
    worker_timeout,
    write_data,
)

from aggregator.buffer import EdgeBuffer
from aggregator.goldmane_client import open_channel, stream_flows
from aggregator.pki import make_pki
from aggregator.settings import GoldmaneSettings

DEFAULT_RESULTS: Final = 300_000
DEFAULT_EDGES: Final = 1_000
DEFAULT_RUNS: Final = 3
SMOKE_RESULTS: Final = 2_000


@dataclass(frozen=True)
class RunResult:
    """What one client process measured; crosses the process boundary as one JSON line."""

    kind: str
    count: int
    seconds: float
    cpu_seconds: float
    max_rss_kib: int
    open_entries: int = 0
    sealed_edges: int = 0
    skipped: int = 0
    loadgen_cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        # Timed from the first result on, so the count of intervals is one less than results.
        return (self.count - 1) / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate_per_cpu(self) -> float:
        return (self.count - 1) / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


# --- the client processes ---------------------------------------------------------------------


def _client_settings(args: argparse.Namespace) -> GoldmaneSettings:
    return client_settings(args.port, Path(args.ca), Path(args.cert), Path(args.key))


def _buffer(args: argparse.Namespace) -> EdgeBuffer:
    # The buffer skips flow times far from its clock: the data must be its recent past.
    return EdgeBuffer(sealed_until=None, flow_clock=lambda: float(args.flow_clock))


def _measure_raw(args: argparse.Namespace) -> RunResult:
    return _result("A", *measure_raw(_client_settings(args), args.loadgen_pid))


def _measure_receive_path(args: argparse.Namespace) -> RunResult:
    channel = open_channel(_client_settings(args))
    try:
        buffer = _buffer(args)
        _, results = stream_flows(channel, T0)
        buffer.add(next(results))
        window = Window(args.loadgen_pid)
        # The daemon's receiver loop, as it is.
        buffer.consume(results)
        buffer.count_queued()
        window.stop()
    finally:
        channel.close()
    return _result("B", buffer.received, window, buffer)


def _measure_no_network(args: argparse.Namespace) -> RunResult:
    messages = read_messages(Path(args.data))
    buffer = _buffer(args)
    buffer.add(messages[0])
    window = Window(None)
    buffer.consume(messages[1:])
    buffer.count_queued()
    window.stop()
    return _result("C", buffer.received, window, buffer)


def _result(kind: str, count: int, window: Window, buffer: EdgeBuffer | None = None) -> RunResult:
    open_entries, sealed_edges = buffer.sizes() if buffer is not None else (0, 0)
    return RunResult(
        kind,
        count,
        window.seconds,
        window.cpu_seconds,
        peak_rss_kib(),
        open_entries=open_entries,
        sealed_edges=sealed_edges,
        skipped=sum(buffer.skipped.values()) if buffer is not None else 0,
        loadgen_cpu_seconds=window.loadgen_cpu_seconds,
    )


def run_worker(args: argparse.Namespace) -> None:
    measure = {"A": _measure_raw, "B": _measure_receive_path, "C": _measure_no_network}
    result = measure[args.worker](args)
    print(json.dumps(asdict(result)), flush=True)


# --- orchestration ----------------------------------------------------------------------------


def run_client(kind: str, worker_args: list[str], results: int, loadgen: Popen[bytes]) -> RunResult:
    check_loadgen(loadgen)
    script = Path(__file__).resolve()
    fields = run_worker_process(script, kind, worker_args, worker_timeout(results), loadgen.pid)
    return RunResult(**fields)


def run_clients_sharing_the_core(
    worker_args: list[str], results: int, loadgen: Popen[bytes]
) -> tuple[RunResult, RunResult]:
    """A and B at the same time on the client core (this process's affinity): (A, B)."""
    check_loadgen(loadgen)
    script = Path(__file__).resolve()
    timeout = 2 * worker_timeout(results)
    workers = [(kind, worker_args, loadgen.pid) for kind in ("A", "B")]
    a, b = run_worker_processes(script, workers, timeout)
    return RunResult(**a), RunResult(**b)


def _versions(client_cpu: int, server_cpu: int) -> str:
    return (
        f"machine: nproc {os.cpu_count()}, {tool_versions()}; "
        f"client on CPU {client_cpu}, load generator on CPU {server_cpu}"
        + client_environment_note()
    )


def _row(label: str, runs: list[RunResult]) -> str:
    rate = statistics.median(r.rate for r in runs)
    per_cpu = statistics.median(r.rate_per_cpu for r in runs)
    each = " ".join(f"{r.rate:,.0f}" for r in runs)
    client = statistics.median(r.cpu_seconds / r.seconds for r in runs)
    loadgen = (
        f"{statistics.median(r.loadgen_cpu_seconds / r.seconds for r in runs):>7.0%}"
        if runs[0].kind != "C"
        else f"{'-':>7}"
    )
    rss = max(r.max_rss_kib for r in runs) / 1024
    return (
        f"{label:<40} {rate:>10,.0f}  {per_cpu:>10,.0f}  {client:>6.0%}  {loadgen}  "
        f"{rss:>6.0f} MiB   {each}"
    )


def _shared_core_line(pairs: list[tuple[RunResult, RunResult]]) -> str:
    ratios = sorted(b.rate_per_cpu / a.rate_per_cpu for a, b in pairs)
    return (
        f"B/A sharing the core (results per CPU-second, same machine speed): "
        f"{statistics.median(ratios):.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f}, {len(ratios)} runs)"
    )


def report(
    runs: dict[str, list[RunResult]],
    shared: list[tuple[RunResult, RunResult]],
    data: DataSet,
    *,
    smoke: bool,
) -> bool:
    """Print the table and the sanity checks; False when the results were wrong."""
    print()
    print(
        f"{'':<40} {'results/s':>10}  {'per client':>10}  {'client':>6}  {'loadgen':>7}  "
        f"{'peak RSS':>10}   results/s of each run"
    )
    print(f"{'':<40} {'median':>10}  {'CPU-second':>10}  {'CPU':>6}  {'CPU':>7}  {'(client)':>10}")
    print(_row("A  gRPC mTLS, not decoded (raw limit)", runs["A"]))
    print(_row("B  gRPC mTLS + read + map + coalesce", runs["B"]))
    print(_row("C  read + map + coalesce, no network", runs["C"]))
    a = statistics.median(r.rate for r in runs["A"])
    b = statistics.median(r.rate for r in runs["B"])
    print(f"{'B/A':<40} {b / a:>10.2f}")
    print(_shared_core_line(shared))
    print("(CPU: share of one core while streaming; C's RSS includes all messages held in memory)")
    client_cpu = statistics.median(r.cpu_seconds / r.seconds for r in runs["A"] + runs["B"])
    if client_cpu < 0.9 and not smoke:
        # Results per CPU-second hold up better than results/s when the core is shared.
        print(
            f"NOTE: the client used only {client_cpu:.0%} of its core while streaming: it waited "
            "for data, or other processes shared the core; results/s may be understated"
        )
    print()

    ok = True
    every_run = {kind: [*runs[kind]] for kind in runs}
    for a_run, b_run in shared:
        every_run["A"].append(a_run)
        every_run["B"].append(b_run)
    for kind in ("A", "B", "C"):
        short = [r.count for r in every_run[kind] if r.count != data.count]
        if short:
            print(f"FAIL: {kind} received {short} of {data.count:,} results")
            ok = False
    expected = (data.expected_open, data.expected_sealed, 0)
    for kind in ("B", "C"):
        for r in every_run[kind]:
            got = (r.open_entries, r.sealed_edges, r.skipped)
            if got != expected:
                print(f"FAIL: {kind} buffer (open, sealed, skipped) = {got}, expected {expected}")
                ok = False
    if ok:
        print(
            f"sanity: every run received all {data.count:,} results; B and C buffer.sizes() = "
            f"({data.expected_open:,} open connections, {data.expected_sealed:,} sealed edges), "
            "0 skipped"
        )

    loadgen_busy = statistics.median(r.loadgen_cpu_seconds / r.seconds for r in runs["A"])
    verdict = (
        f"A is {a / b:.2f}x B, and the load generator was busy {loadgen_busy:.0%} of its core "
        "during A"
    )
    if smoke:
        print(f"smoke run: too short for its figures to mean anything ({verdict})")
    elif a >= 1.1 * b and loadgen_busy < 0.9:
        print(f"load generator outpaces the client: {verdict}")
    else:
        print(f"WARNING: the load generator may be the limit, B may be understated: {verdict}")
    return ok


def run_benchmark(args: argparse.Namespace) -> int:
    client_cpu, server_cpu = client_and_server_cpus()
    results = SMOKE_RESULTS if args.smoke else args.results
    repeats = 1 if args.smoke else DEFAULT_RUNS
    ensure_node_modules()
    print(_versions(client_cpu, server_cpu), flush=True)

    loadgen: Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="receive-path-") as tmp:
        try:
            pki = make_pki(Path(tmp) / "pki")
            data = write_data(Path(tmp) / "results.bin", results, args.distinct_edges)
            print(
                f"data: {data.count:,} FlowResults per run, mean serialized size "
                f"{data.mean_size:.0f} B, {args.distinct_edges:,} distinct namespace pairs, "
                f"{data.buckets} buckets of {data.per_bucket:,} results",
                flush=True,
            )
            # Many results per write, as a busy Goldmane: one per write, grpc-js is the limit.
            loadgen, port = start_loadgen(
                data.path,
                results,
                pki.ca_cert,
                pki.server_cert,
                pki.server_key,
                server_cpu,
                ["--framed"],
            )
            # The client processes inherit this: the client has exactly one core.
            os.sched_setaffinity(0, {client_cpu})
            worker_args = ["--data", str(data.path), "--port", str(port), "--ca", str(pki.ca_cert)]
            # Just past the push of the last bucket (two widths after its start).
            worker_args += ["--flow-clock", str(T0 + (data.buckets + 1) * BUCKET)]
            worker_args += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
            runs: dict[str, list[RunResult]] = {"A": [], "B": [], "C": []}
            # Interleaved, so that a drift of the machine spreads over all three.
            for repeat in range(repeats):
                line = []
                for kind in ("A", "B", "C"):
                    result = run_client(kind, worker_args, results, loadgen)
                    runs[kind].append(result)
                    line.append(f"{kind} {result.rate:,.0f}/s")
                print(f"run {repeat + 1}/{repeats}: " + ", ".join(line), flush=True)
            shared = []
            for repeat in range(repeats):
                pair = run_clients_sharing_the_core(worker_args, results, loadgen)
                shared.append(pair)
                a_run, b_run = pair
                ratio = b_run.rate_per_cpu / a_run.rate_per_cpu
                print(f"sharing the core {repeat + 1}/{repeats}: B/A {ratio:.3f}", flush=True)
        finally:
            if loadgen is not None:
                stop_loadgen(loadgen)
    return 0 if report(runs, shared, data, smoke=args.smoke) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--results", type=int, default=DEFAULT_RESULTS, help="results per run")
    parser.add_argument(
        "--distinct-edges",
        type=int,
        default=DEFAULT_EDGES,
        help="distinct (source, destination) namespace pairs",
    )
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_RESULTS:,} results, one run of each"
    )
    # The client side of one measurement, run by the benchmark itself in a fresh process.
    parser.add_argument("--worker", choices=("A", "B", "C"), help=argparse.SUPPRESS)
    for name in ("--data", "--ca", "--cert", "--key"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--flow-clock", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        try:
            run_worker(args)
        except KeyboardInterrupt:
            # Ctrl-C reaches the whole process group; the parent reports it, once.
            return 130
        return 0
    if args.results < 2 or args.distinct_edges < 1:
        parser.error("--results must be at least 2 and --distinct-edges at least 1")
    interrupt_on_sigterm()
    try:
        return run_benchmark(args)
    except KeyboardInterrupt:
        print("receive_path: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
