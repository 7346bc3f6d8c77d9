"""What the receive-path and ingest benchmarks share: the data, the load generator, the raw client.

Not a benchmark itself: receive_path.py and ingest.py import it (run either from the
repository root; this directory is on sys.path because the script lives here).

- The data: realistic ~540-byte Goldmane FlowResults. Each connection between two pods is
  reported twice (Src and Dst), with labels and a policy hit, and 5% of connections are denied
  by the destination's ingress policy.
- loadgen.js (grpc-js, mTLS) replays them, pinned to a CPU of its own so that it outpaces the
  Python client; the client side of each measurement runs in a fresh Python process.
- The raw limit: the project's own channel (`open_channel`) reading results without decoding.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

from aggregator.goldmane_client import open_channel
from aggregator.mapping import RANK_ALLOW, RANK_DENY
from aggregator.settings import GoldmaneSettings
from aggregator.wire import goldmane_pb2 as pb

BENCH_DIR: Final = Path(__file__).resolve().parent
LOADGEN: Final = BENCH_DIR / "loadgen.js"
STREAM_METHOD: Final = "/goldmane.Flows/Stream"
SERVER_NAME: Final = "goldmane"  # a SAN of make_pki's server certificate; 127.0.0.1 is not

BUCKET: Final = 15
T0: Final = 1_800_000_000  # a bucket boundary
# At least this many buckets per run of `write_data`, so that sealing (a new bucket closes the
# older ones) is part of what is measured, even at smoke size.
MIN_BUCKETS: Final = 20
# Share of connections that the destination's policy denies.
DENY_SHARE: Final = 0.05
# deploy/Dockerfile's MALLOC_ARENA_MAX (tests/test_deploy.py holds the two together).
IMAGE_MALLOC_ARENA_MAX: Final = "2"
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

EdgeRankKey = tuple[str, str, int]
"""(src_ns, dst_ns, verdict rank) of a connection"""


def prog() -> str:
    """The running benchmark's name, for its messages: `receive_path`, `ingest`."""
    return Path(sys.argv[0]).stem


# --- the data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    path: Path
    count: int
    mean_size: float
    buckets: int
    per_bucket: int
    expected_open: int
    expected_sealed: int


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


def connection_templates(
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


def edge_of(connection: tuple[pb.FlowResult, ...]) -> EdgeRankKey:
    """The edge a connection's reports make once merged: denied if its Dst report denied."""
    key = connection[0].flow.Key
    denied = connection[1].flow.Key.action == pb.Deny
    return key.source_namespace, key.dest_namespace, RANK_DENY if denied else RANK_ALLOW


def _set_times_and_counters(result: pb.FlowResult, number: int, start: int) -> bytes:
    """Serialise result number `number` (1-based) of a stream, in the bucket starting at `start`."""
    flow = result.flow
    result.id = number
    flow.start_time = start
    flow.end_time = start + BUCKET
    # Counters vary so that their varints are not all one size.
    flow.packets_in = 1 + number * 7919 % 50_000
    flow.packets_out = 1 + number * 6271 % 50_000
    flow.bytes_in = flow.packets_in * 740
    flow.bytes_out = flow.packets_out * 310
    flow.num_connections_started = number % 37
    flow.num_connections_completed = number % 31
    flow.num_connections_live = number % 5
    return result.SerializeToString()


def _write_message(out: Any, message: bytes) -> None:
    out.write(len(message).to_bytes(4, "big"))
    out.write(message)


def write_data(path: Path, results: int, distinct_edges: int) -> DataSet:
    """Write `results` length-prefixed FlowResults in bucket order; one pass of the file is a run.

    The file is as long as a run so that the load generator never wraps around: a second pass
    would replay sealed buckets, which EdgeBuffer rightly skips as duplicates.
    """
    rng = random.Random(20261122)
    templates = connection_templates(distinct_edges, rng)
    per_bucket = max(1, min(len(templates), results // (2 * MIN_BUCKETS)))
    sealed_edges: set[EdgeRankKey] = set()
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
                sealed_edges.update(edge_of(templates[index]) for index in last_bucket)
                last_bucket = set()
            for _ in range(per_bucket):
                index = cursor % len(templates)
                cursor += 1
                last_bucket.add(index)
                for result in templates[index]:
                    if written == results:
                        break
                    written += 1
                    message = _set_times_and_counters(result, written, start)
                    _write_message(out, message)
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


@dataclass(frozen=True)
class BucketTemplate:
    """Whole buckets on disk: one for loadgen.js --bucket-seconds to replay bucket after bucket,
    or several in a row (instructions.py reads them).

    Every connection is reported (Src, then Dst) in every bucket, as long-lived connections
    are; so a stream of any length holds the same connections, and what memory it needs is
    bounded by them, not by the length of the stream.
    """

    path: Path
    per_bucket: int
    mean_size: float
    # Connections per (src_ns, dst_ns, verdict rank): what one sealed bucket adds to the trail.
    edges_per_bucket: dict[EdgeRankKey, int]

    def buckets_of(self, results: int) -> int:
        """Buckets that a stream of `results` results touches (the last one may be partial)."""
        return math.ceil(results / self.per_bucket)


def write_bucket_template(path: Path, distinct_edges: int, buckets: int = 1) -> BucketTemplate:
    """Write whole buckets (from T0 on) of every connection's two reports, length-prefixed."""
    templates = connection_templates(distinct_edges, random.Random(20261122))
    total_bytes = 0
    number = 0
    with path.open("wb") as out:
        for bucket in range(buckets):
            for connection in templates:
                for result in connection:
                    number += 1
                    message = _set_times_and_counters(result, number, T0 + bucket * BUCKET)
                    _write_message(out, message)
                    total_bytes += len(message)
    return BucketTemplate(
        path=path,
        per_bucket=number // buckets,
        mean_size=total_bytes / number,
        edges_per_bucket=dict(Counter(edge_of(connection) for connection in templates)),
    )


def read_messages(path: Path) -> list[bytes]:
    # Message by message, not the whole file and then slices: that would double the peak RSS.
    messages = []
    with path.open("rb") as data:
        while prefix := data.read(4):
            messages.append(data.read(int.from_bytes(prefix, "big")))
    return messages


# --- the client side --------------------------------------------------------------------------


def client_settings(port: int, ca: Path, cert: Path, key: Path) -> GoldmaneSettings:
    """The daemon's Goldmane settings for the load generator on 127.0.0.1."""
    return GoldmaneSettings(
        host="127.0.0.1",
        port=port,
        server_name=SERVER_NAME,
        ca_file=ca,
        cert_file=cert,
        key_file=key,
        insecure=False,
    )


class Window:
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


def measure_raw(settings: GoldmaneSettings, loadgen_pid: int | None) -> tuple[int, Window]:
    """The raw limit: results of one stream over the project's channel, none of them decoded."""
    channel = open_channel(settings)
    try:
        call = channel.unary_stream(
            STREAM_METHOD,
            request_serializer=pb.FlowStreamRequest.SerializeToString,
            response_deserializer=None,  # as the daemon's `stream_flows`
        )
        results: Iterator[bytes] = iter(call(pb.FlowStreamRequest(start_time_gte=T0)))
        # The clock starts at the first result: connect and TLS handshake are not throughput.
        next(results)
        window = Window(loadgen_pid)
        count = 1
        for _ in results:
            count += 1
        window.stop()
    finally:
        channel.close()
    return count, window


def peak_rss_kib() -> int:
    """Peak RSS of this process's whole life, which is one measurement's. KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib() -> int:
    """This process's resident set now, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of a process, all threads, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name, which may itself hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_busy_seconds(cpu: int) -> float:
    """Time CPU `cpu` has spent busy since boot, whoever used it (hypervisor steal included)."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children, all threads."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker_process(
    script: Path, kind: str, worker_args: list[str], timeout: float, loadgen_pid: int | None
) -> dict[str, Any]:
    """Run one measurement in a fresh process (`script --worker KIND ...`); its JSON result line.

    The process inherits this one's CPU affinity: set it to the client's CPU first.
    """
    return run_worker_processes(script, [(kind, worker_args, loadgen_pid)], timeout)[0]


def run_worker_processes(
    script: Path, workers: Sequence[tuple[str, list[str], int | None]], timeout: float
) -> list[dict[str, Any]]:
    """Run measurements (kind, worker arguments, load generator pid) at the same time.

    Each runs in a fresh process, as `run_worker_process`; their JSON result lines, in order.
    """
    processes = []
    try:
        for kind, worker_args, loadgen_pid in workers:
            command = [sys.executable, str(script), "--worker", kind, *worker_args]
            if loadgen_pid is not None:
                command += ["--loadgen-pid", str(loadgen_pid)]
            env = client_environment()
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, env=env))
        results = []
        for (kind, _, _), process in zip(workers, processes, strict=True):
            stdout, _ = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise SystemExit(f"{prog()}: client process {kind} failed ({process.returncode})")
            results.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def worker_timeout(results: int) -> float:
    return max(WORKER_TIMEOUT_FLOOR, results / 500)


# --- the load generator -----------------------------------------------------------------------


def ensure_node_modules() -> None:
    if (BENCH_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"{prog()}: npm is not on PATH (node and npm are needed)")
    print("installing the load generator's dependencies (npm install)...", flush=True)
    subprocess.run(
        [npm, "install", "--prefix", str(BENCH_DIR), "--no-audit", "--no-fund"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def start_loadgen(
    data: Path,
    results: int,
    ca: Path,
    cert: Path,
    key: Path,
    cpu: int,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    """Start loadgen.js on `cpu`, serving `results` results per stream; (process, port)."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit(f"{prog()}: node is not on PATH")
    # Affinity is inherited at fork, by every thread node starts; setting it on the child's pid
    # afterwards would move only its main thread. So: take the server's CPU, fork, come back.
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        # stdin is a pipe only so that loadgen exits when this process dies, however it dies.
        command = [node, str(LOADGEN), "--data", str(data), "--cert", str(cert), "--key", str(key)]
        command += ["--ca", str(ca), "--port", "0", "--total", str(results), *extra]
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
        raise SystemExit(f"{prog()}: the load generator did not start (printed {line!r})")
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


def check_loadgen(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        raise SystemExit(f"{prog()}: the load generator exited ({process.returncode})")


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tool_versions() -> str:
    """Python, gRPC, protobuf, node and grpc-js versions, as one line's worth of text."""
    grpc_js = json.loads(
        (BENCH_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json").read_text()
    )["version"]
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return (
        f"Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}, protobuf {protobuf_version} ({api_implementation.Type()}), "
        f"node {node.stdout.strip()}, @grpc/grpc-js {grpc_js}"
    )


def client_environment() -> dict[str, str]:
    """The environment of the client processes: this one's, with the image's malloc arenas.

    deploy/Dockerfile runs the daemon with MALLOC_ARENA_MAX=2 (it says why); the clients get
    it too, unless it is set here, so that they measure the daemon as it runs there.
    """
    return {"MALLOC_ARENA_MAX": IMAGE_MALLOC_ARENA_MAX} | dict(os.environ)


def client_environment_note() -> str:
    """What the machine line says of the clients' environment."""
    environment = client_environment()
    names = ("GRPC_EXPERIMENTS", "MALLOC_ARENA_MAX")
    return "".join(f"; {name}={environment[name]}" for name in names if name in environment)


def client_and_server_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f"{prog()}: needs two CPUs, one for the client, one for the server")
    return cpus[0], cpus[1]


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make a `kill` run the same clean-up as Ctrl-C (schemas dropped, load generator stopped)."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
