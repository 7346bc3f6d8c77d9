"""Benchmark of the daemon's receive path: Goldmane results/s one client core can take.

Not a test: it measures, prints a table and exits 0 unless the results were wrong. A grpc-js
load generator (loadgen.js, faster than the client) replays pre-serialised ~540-byte
FlowResults over mutual TLS on 127.0.0.1. The load generator gets one CPU; the client
processes get the other, so the figures are per client core.

  A  raw limit: gRPC over mTLS with the project's channel options (`open_channel`), each
     result left undecoded (identity deserializer).
  B  the real receive path, as the daemon's receiver loop: `stream_flows` (decode) feeding
     every result to `EdgeBuffer.add` (map + coalesce).
  C  no network: decode + `EdgeBuffer.add` of the same messages from memory (the CPU
     ceiling of our own code).

Each measurement runs in a fresh Python process (so peak RSS and warm-up are its own), 3
times, interleaved; the table shows medians. Run from the repository root with the dev
virtualenv:

  python tests/bench/receive_path.py                 # 300,000 results per run, under 2 minutes
  python tests/bench/receive_path.py --results 1000000 --distinct-edges 5000
  python tests/bench/receive_path.py --smoke         # 2,000 results, 1 run: for CI

It needs node and npm (it runs `npm install` here when node_modules is missing) and at least
two CPUs. gRPC's own environment, e.g. GRPC_EXPERIMENTS, is passed to the client processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Final

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

from aggregator.buffer import EdgeBuffer
from aggregator.goldmane_client import open_channel, stream_flows
from aggregator.mapping import RANK_ALLOW, RANK_DENY
from aggregator.pki import make_pki
from aggregator.settings import GoldmaneSettings
from aggregator.wire import goldmane_pb2 as pb

BENCH_DIR: Final = Path(__file__).resolve().parent
LOADGEN: Final = BENCH_DIR / "loadgen.js"
STREAM_METHOD: Final = "/goldmane.Flows/Stream"
SERVER_NAME: Final = "goldmane"  # a SAN of make_pki's server certificate; 127.0.0.1 is not

DEFAULT_RESULTS: Final = 300_000
DEFAULT_EDGES: Final = 1_000
DEFAULT_RUNS: Final = 3
SMOKE_RESULTS: Final = 2_000

BUCKET: Final = 15
T0: Final = 1_800_000_000  # a bucket boundary
# At least this many buckets per run, so that sealing (a new bucket closes the older ones)
# is part of what B measures, even at smoke size.
MIN_BUCKETS: Final = 20
# Share of connections that the destination's policy denies.
DENY_SHARE: Final = 0.05
# A client process slower than 500 results/s is stuck, not slow.
WORKER_TIMEOUT_FLOOR: Final = 120.0

_APPS: Final = (
    ("web", 8080),
    ("api", 8080),
    ("checkout", 8443),
    ("cart", 6379),
    ("search", 9200),
    ("auth", 8443),
    ("worker", 5672),
    ("catalog", 5432),
)


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


@dataclass(frozen=True)
class DataSet:
    path: Path
    count: int
    mean_size: float
    buckets: int
    per_bucket: int
    expected_open: int
    expected_sealed: int


# --- the data ---------------------------------------------------------------------------------


def _pod_hash(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(9))


def _labels(app: str, namespace: str, pod_hash: str) -> list[str]:
    return [
        f"app={app}",
        f"pod-template-hash={pod_hash}",
        f"projectcalico.org/namespace={namespace}",
        "projectcalico.org/orchestrator=k8s",
        f"projectcalico.org/serviceaccount={app}",
        f"app.kubernetes.io/name={app}",
    ]


def _connection_templates(
    distinct_edges: int, rng: random.Random
) -> list[tuple[pb.FlowResult, ...]]:
    """Per connection, its (Src report, Dst report) FlowResults; times are set per bucket."""
    # Enough namespaces that `distinct_edges` ordered pairs of different ones exist.
    namespaces = max(2, math.ceil(math.sqrt(distinct_edges)) + 1)
    pairs = rng.sample(range(namespaces * (namespaces - 1)), distinct_edges)
    templates: list[tuple[pb.FlowResult, ...]] = []
    for pair in pairs:
        src_index, dst_offset = divmod(pair, namespaces - 1)
        dst_index = (src_index + 1 + dst_offset) % namespaces
        src_ns, dst_ns = f"ns-{src_index}", f"ns-{dst_index}"
        dst_app, port = rng.choice(_APPS)
        dst_hash = _pod_hash(rng)
        # Two client workloads per namespace pair: the pair is the edge, these are connections.
        for src_app in rng.sample([app for app, _ in _APPS if app != dst_app], 2):
            src_hash = _pod_hash(rng)
            denied = rng.random() < DENY_SHARE
            reports = []
            for reporter in (pb.Src, pb.Dst):
                # Egress is allowed at the source; a denied connection is stopped at ingress.
                action = pb.Deny if denied and reporter == pb.Dst else pb.Allow
                policy_ns = src_ns if reporter == pb.Src else dst_ns
                direction = "egress" if reporter == pb.Src else "ingress"
                key = pb.FlowKey(
                    source_name=f"{src_app}-{src_hash}-*",
                    source_namespace=src_ns,
                    source_type=pb.WorkloadEndpoint,
                    dest_name=f"{dst_app}-{dst_hash}-*",
                    dest_namespace=dst_ns,
                    dest_type=pb.WorkloadEndpoint,
                    dest_port=port,
                    dest_service_name=dst_app,
                    dest_service_namespace=dst_ns,
                    dest_service_port_name="http",
                    dest_service_port=80,
                    proto="tcp",
                    reporter=reporter,
                    action=action,
                    policies=pb.PolicyTrace(
                        enforced_policies=[
                            pb.PolicyHit(
                                kind=pb.CalicoNetworkPolicy,
                                namespace=policy_ns,
                                name=f"default.{dst_app}-{direction}",
                                tier="default",
                                action=action,
                                policy_index=0,
                                rule_index=rng.randrange(4),
                            )
                        ],
                    ),
                )
                flow = pb.Flow(
                    Key=key,
                    source_labels=_labels(src_app, src_ns, src_hash),
                    dest_labels=_labels(dst_app, dst_ns, dst_hash),
                )
                reports.append(pb.FlowResult(flow=flow))
            templates.append(tuple(reports))
    return templates


def write_data(path: Path, results: int, distinct_edges: int) -> DataSet:
    """Write `results` length-prefixed FlowResults in bucket order; one pass of the file is a run.

    The file is as long as a run so that the load generator never wraps around: a second pass
    would replay sealed buckets, which EdgeBuffer rightly skips as duplicates.
    """
    rng = random.Random(20261122)
    templates = _connection_templates(distinct_edges, rng)
    per_bucket = max(1, min(len(templates), results // (2 * MIN_BUCKETS)))
    sealed_edges: set[tuple[str, str, int]] = set()
    last_bucket: set[int] = set()
    written = 0
    total_bytes = 0
    cursor = 0
    bucket = 0
    with path.open("wb") as out:
        while written < results:
            start = T0 + bucket * BUCKET
            if last_bucket:
                # A new bucket seals the previous one: its connections become edges.
                for index in last_bucket:
                    key = templates[index][0].flow.Key
                    denied = templates[index][1].flow.Key.action == pb.Deny
                    rank = RANK_DENY if denied else RANK_ALLOW
                    sealed_edges.add((key.source_namespace, key.dest_namespace, rank))
                last_bucket = set()
            for _ in range(per_bucket):
                index = cursor % len(templates)
                cursor += 1
                last_bucket.add(index)
                for result in templates[index]:
                    if written == results:
                        break
                    written += 1
                    flow = result.flow
                    result.id = written
                    flow.start_time = start
                    flow.end_time = start + BUCKET
                    # Counters vary so that their varints are not all one size.
                    flow.packets_in = 1 + written * 7919 % 50_000
                    flow.packets_out = 1 + written * 6271 % 50_000
                    flow.bytes_in = flow.packets_in * 740
                    flow.bytes_out = flow.packets_out * 310
                    flow.num_connections_started = written % 37
                    flow.num_connections_completed = written % 31
                    flow.num_connections_live = written % 5
                    message = result.SerializeToString()
                    out.write(len(message).to_bytes(4, "big"))
                    out.write(message)
                    total_bytes += len(message)
                if written == results:
                    break
            bucket += 1
    return DataSet(
        path=path,
        count=written,
        mean_size=total_bytes / written,
        buckets=bucket,
        per_bucket=2 * per_bucket,
        expected_open=len(last_bucket),
        expected_sealed=len(sealed_edges),
    )


def read_messages(path: Path) -> list[bytes]:
    # Message by message, not the whole file and then slices: that would double C's peak RSS.
    messages = []
    with path.open("rb") as data:
        while prefix := data.read(4):
            messages.append(data.read(int.from_bytes(prefix, "big")))
    return messages


# --- the client processes ---------------------------------------------------------------------


def _client_settings(args: argparse.Namespace) -> GoldmaneSettings:
    return GoldmaneSettings(
        host="127.0.0.1",
        port=args.port,
        server_name=SERVER_NAME,
        ca_file=Path(args.ca),
        cert_file=Path(args.cert),
        key_file=Path(args.key),
        insecure=False,
    )


class _Window:
    """Wall time, our CPU time and the load generator's over the timed part of one run."""

    def __init__(self, loadgen_pid: int | None) -> None:
        self._loadgen_pid = loadgen_pid
        self._start = self._sample()
        self.seconds = self.cpu_seconds = self.loadgen_cpu_seconds = 0.0

    def _sample(self) -> tuple[float, float, float]:
        loadgen = cpu_seconds_of(self._loadgen_pid) if self._loadgen_pid else 0.0
        return time.perf_counter(), time.process_time(), loadgen

    def stop(self) -> None:
        end = self._sample()
        self.seconds, self.cpu_seconds, self.loadgen_cpu_seconds = (
            e - s for e, s in zip(end, self._start, strict=True)
        )


def _measure_raw(args: argparse.Namespace) -> RunResult:
    channel = open_channel(_client_settings(args))
    try:
        call = channel.unary_stream(
            STREAM_METHOD,
            request_serializer=pb.FlowStreamRequest.SerializeToString,
            response_deserializer=lambda b: b,
        )
        results: Iterator[bytes] = iter(call(pb.FlowStreamRequest(start_time_gte=T0)))
        # The clock starts at the first result: connect and TLS handshake are not throughput.
        next(results)
        window = _Window(args.loadgen_pid)
        count = 1
        for _ in results:
            count += 1
        window.stop()
    finally:
        channel.close()
    return _result("A", count, window)


def _measure_receive_path(args: argparse.Namespace) -> RunResult:
    channel = open_channel(_client_settings(args))
    try:
        buffer = EdgeBuffer(sealed_until=None)
        _, results = stream_flows(channel, T0)
        add = buffer.add
        add(next(results))
        window = _Window(args.loadgen_pid)
        # The daemon's receiver loop, as it is.
        for result in results:
            add(result)
        window.stop()
    finally:
        channel.close()
    return _result("B", buffer.received, window, buffer)


def _measure_no_network(args: argparse.Namespace) -> RunResult:
    messages = read_messages(Path(args.data))
    buffer = EdgeBuffer(sealed_until=None)
    add = buffer.add
    parse = pb.FlowResult.FromString
    add(parse(messages[0]))
    window = _Window(None)
    for message in messages[1:]:
        add(parse(message))
    window.stop()
    return _result("C", buffer.received, window, buffer)


def _result(kind: str, count: int, window: _Window, buffer: EdgeBuffer | None = None) -> RunResult:
    open_entries, sealed_edges = buffer.sizes() if buffer is not None else (0, 0)
    return RunResult(
        kind,
        count,
        window.seconds,
        window.cpu_seconds,
        # Peak of this process's whole life, which is this one measurement. KiB on Linux.
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        open_entries=open_entries,
        sealed_edges=sealed_edges,
        skipped=sum(buffer.skipped.values()) if buffer is not None else 0,
        loadgen_cpu_seconds=window.loadgen_cpu_seconds,
    )


def run_worker(args: argparse.Namespace) -> None:
    measure = {"A": _measure_raw, "B": _measure_receive_path, "C": _measure_no_network}
    result = measure[args.worker](args)
    print(json.dumps(asdict(result)), flush=True)


# --- the load generator -----------------------------------------------------------------------


def ensure_node_modules() -> None:
    if (BENCH_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("receive_path: npm is not on PATH (node and npm are needed)")
    print("installing the load generator's dependencies (npm install)...", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(BENCH_DIR), "--no-audit", "--no-fund"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start_loadgen(
    data: Path, results: int, ca: Path, cert: Path, key: Path, cpu: int
) -> tuple[subprocess.Popen[bytes], int]:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("receive_path: node is not on PATH")
    # Affinity is inherited at fork, by every thread node starts; setting it on the child's pid
    # afterwards would move only its main thread. So: take the server's CPU, fork, come back.
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        # stdin is a pipe only so that loadgen exits when this process dies, however it dies.
        command = [node, str(LOADGEN), "--data", str(data), "--cert", str(cert), "--key", str(key)]
        command += ["--ca", str(ca), "--port", "0", "--total", str(results)]
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=BENCH_DIR,
        )
    finally:
        os.sched_setaffinity(0, own)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline().decode().strip() if ready else ""
    if not line.isdigit():
        stop_loadgen(process)
        raise SystemExit(f"receive_path: the load generator did not start (printed {line!r})")
    return process, int(line)


def stop_loadgen(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of a process, all threads, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name, which may itself hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- orchestration ----------------------------------------------------------------------------


def run_client(
    kind: str, worker_args: list[str], results: int, loadgen: subprocess.Popen[bytes]
) -> RunResult:
    if loadgen.poll() is not None:
        raise SystemExit(f"receive_path: the load generator exited ({loadgen.returncode})")
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            *worker_args,
            "--loadgen-pid",
            str(loadgen.pid),
        ],
        stdout=subprocess.PIPE,
        check=False,
        timeout=max(WORKER_TIMEOUT_FLOOR, results / 500),
    )
    if completed.returncode != 0:
        raise SystemExit(f"receive_path: client process {kind} failed ({completed.returncode})")
    return RunResult(**json.loads(completed.stdout.decode().strip().splitlines()[-1]))


def _versions(client_cpu: int, server_cpu: int) -> str:
    grpc_js = json.loads(
        (BENCH_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json").read_text()
    )["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    experiments = os.environ.get("GRPC_EXPERIMENTS")
    return (
        f"machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, protobuf {protobuf_version} ({api_implementation.Type()}), "
        f"node {node.stdout.strip()}, @grpc/grpc-js {grpc_js}; "
        f"client on CPU {client_cpu}, load generator on CPU {server_cpu}"
        + (f"; GRPC_EXPERIMENTS={experiments}" if experiments else "")
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


def report(runs: dict[str, list[RunResult]], data: DataSet, *, smoke: bool) -> bool:
    """Print the table and the sanity checks; False when the results were wrong."""
    print()
    print(
        f"{'':<40} {'results/s':>10}  {'per client':>10}  {'client':>6}  {'loadgen':>7}  "
        f"{'peak RSS':>10}   results/s of each run"
    )
    print(f"{'':<40} {'median':>10}  {'CPU-second':>10}  {'CPU':>6}  {'CPU':>7}  {'(client)':>10}")
    print(_row("A  gRPC mTLS, not decoded (raw limit)", runs["A"]))
    print(_row("B  gRPC mTLS + decode + map + coalesce", runs["B"]))
    print(_row("C  decode + map + coalesce, no network", runs["C"]))
    a = statistics.median(r.rate for r in runs["A"])
    b = statistics.median(r.rate for r in runs["B"])
    print(f"{'B/A':<40} {b / a:>10.2f}")
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
    for kind in ("A", "B", "C"):
        short = [r.count for r in runs[kind] if r.count != data.count]
        if short:
            print(f"FAIL: {kind} received {short} of {data.count:,} results")
            ok = False
    expected = (data.expected_open, data.expected_sealed, 0)
    for kind in ("B", "C"):
        for r in runs[kind]:
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
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("receive_path: needs two CPUs, one for the client, one for the server")
    client_cpu, server_cpu = cpus[0], cpus[1]
    results = SMOKE_RESULTS if args.smoke else args.results
    repeats = 1 if args.smoke else DEFAULT_RUNS
    ensure_node_modules()
    print(_versions(client_cpu, server_cpu), flush=True)

    loadgen: subprocess.Popen[bytes] | None = None
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
            loadgen, port = start_loadgen(
                data.path, results, pki.ca_cert, pki.server_cert, pki.server_key, server_cpu
            )
            # The client processes inherit this: the client has exactly one core.
            os.sched_setaffinity(0, {client_cpu})
            worker_args = ["--data", str(data.path), "--port", str(port), "--ca", str(pki.ca_cert)]
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
        finally:
            if loadgen is not None:
                stop_loadgen(loadgen)
    return 0 if report(runs, data, smoke=args.smoke) else 1


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


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
    # So that a `kill` runs the clean-up too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return run_benchmark(args)
    except KeyboardInterrupt:
        print("receive_path: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
