"""Instructions the receive loop's own work costs per result, counted by valgrind's callgrind.

Not a test: it measures, prints a few lines and exits 0 unless a count was wrong (tests/
test_bench_smoke.py runs `--smoke`). A shared VM's speed drifts by tens of percent from one run
to the next (ingest.py shows it), so a change worth a few percent cannot be seen in results/s.
Callgrind counts the instructions a process executes, the same from run to run whatever else
the machine does. This counts those of `EdgeBuffer.consume` (read key and times, map,
coalesce, seal) over whole buckets of FlowResults held in memory, ingest.py's load:

  first bucket   a result whose flow key is new: decoded and mapped once, then counted;
  later buckets  a result whose key is known: the receive loop's work for nearly every result.

One process consumes the buckets in phases, and callgrind writes its counts as each phase
starts (the process calls `os.sched_yield`, which nothing else in it calls, and callgrind
dumps before it), so that start-up, imports and reading the data stay out of the figures. The
later buckets are counted from the third on: the first seal, which makes every edge new to
the batch, happens once a stream. Instructions are not time (cache misses and the kernel are
not in them): use this to compare two versions of the code, and ingest.py for what the
machine achieves.

It then sets the loop beside gRPC's own work, the same way: the load generator (ingest.py's,
loadgen.js) streams the buckets over mTLS, and a client counts the instructions of its main
thread, the one that receives, per result of the later buckets: A receives them without
decoding (ingest.py's raw limit), B hands them to the daemon's receive loop. B's share of A's
instructions is what the ratio F / A of ingest.py would be if an instruction took the same time
wherever it runs (it does not: the loop's hash tables miss the cache more often than gRPC does).

  python tests/bench/instructions.py             # 10 buckets of 4,000 results, about 3 min
  python tests/bench/instructions.py --smoke     # 4 buckets of 100 results: for CI

It needs valgrind, and node for the load generator. Run it from the repository root with the
dev virtualenv.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from common import (
    BUCKET,
    T0,
    BucketTemplate,
    client_settings,
    ensure_node_modules,
    prog,
    read_messages,
    start_loadgen,
    stop_loadgen,
    write_bucket_template,
)

from aggregator import hotpath
from aggregator.buffer import EdgeBuffer
from aggregator.goldmane_client import open_channel, stream_flows
from aggregator.pki import Pki, make_pki
from aggregator.settings import GoldmaneSettings

DEFAULT_EDGES: Final = 1_000  # 4,000 results per bucket, as in ingest.py
DEFAULT_BUCKETS: Final = 10
SMOKE_EDGES: Final = 25
SMOKE_BUCKETS: Final = 4
# The later-bucket figure starts after this many buckets (see the docstring).
WARM_BUCKETS: Final = 2
# Python's string hashes are salted per process; a fixed salt keeps the runs alike.
WORKER_ENVIRONMENT: Final = {"PYTHONHASHSEED": "0"}


def run_worker(data: Path, per_bucket: int, flow_clock: int) -> None:
    """Consume the messages as the daemon's receive loop does, in phases; check the counts."""
    messages = read_messages(data)
    buffer = EdgeBuffer(sealed_until=None, flow_clock=itertools.repeat(float(flow_clock)).__next__)
    gc.collect()
    gc.freeze()  # as the daemon's entry point does
    warm = WARM_BUCKETS * per_bucket
    results = iter(messages)
    for length in (per_bucket, warm - per_bucket, len(messages) - warm):
        os.sched_yield()  # callgrind dumps its counts here: the end of the previous phase
        buffer.consume(itertools.islice(results, length))
        buffer.count_queued()
    os.sched_yield()
    if buffer.received != len(messages) or sum(buffer.skipped.values()):
        raise SystemExit(f"{prog()}: received {buffer.received:,}, skipped {buffer.skipped}")


def run_receive_worker(
    kind: str, settings: GoldmaneSettings, per_bucket: int, flow_clock: int
) -> None:
    """Receive the load generator's stream: its later buckets counted as A (raw) or B (loop)."""
    channel = open_channel(settings)
    try:
        _, results = stream_flows(channel, T0)
        buffer = EdgeBuffer(
            sealed_until=None, flow_clock=itertools.repeat(float(flow_clock)).__next__
        )
        # The first buckets go to the loop in both kinds: the connection is up, keys are known.
        buffer.consume(itertools.islice(results, WARM_BUCKETS * per_bucket))
        gc.collect()
        gc.freeze()
        os.sched_yield()  # callgrind dumps here: the later buckets are counted from now
        if kind == "A":
            received = WARM_BUCKETS * per_bucket
            for _ in results:
                received += 1
        else:
            buffer.consume(results)
            buffer.count_queued()
            received = buffer.received
        os.sched_yield()
    finally:
        channel.close()
    if sum(buffer.skipped.values()) or received % per_bucket:
        raise SystemExit(f"{prog()}: received {received:,}, skipped {buffer.skipped}")


def callgrind(arguments: list[str], out_file: Path, *, separate_threads: bool = False) -> None:
    """Run this script with `arguments` under callgrind, dumping counts at each sched_yield."""
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]
    command += [
        "--dump-before=sched_yield",
        f"--separate-threads={'yes' if separate_threads else 'no'}",
    ]
    command += [sys.executable, str(Path(__file__).resolve()), *arguments]
    completed = subprocess.run(
        command, env=os.environ | WORKER_ENVIRONMENT, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"{prog()}: the worker failed: {' / '.join(tail)}")


def count_phases(data: Path, per_bucket: int, flow_clock: int) -> list[int]:
    """Run the worker under callgrind; the instructions of each of its three phases."""
    out_file = data.parent / "callgrind.out"
    arguments = ["--worker", "--data", str(data), "--per-bucket", str(per_bucket)]
    callgrind([*arguments, "--flow-clock", str(flow_clock)], out_file)
    # Dump 1 holds start-up, dumps 2 to 4 the phases; callgrind.out itself what came after.
    dumps = sorted(data.parent.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    if len(dumps) != 4:
        raise SystemExit(f"{prog()}: expected 4 callgrind dumps, found {len(dumps)}")
    return [_totals(dump) for dump in dumps[1:]]


def count_receive(kind: str, template: BucketTemplate, pki: Pki, buckets: int) -> tuple[int, int]:
    """(instructions of the receiving thread over the later buckets, results in them)."""
    results = buckets * template.per_bucket
    # The load generator on a CPU of its own where there are two, as in ingest.py.
    loadgen_cpu = max(os.sched_getaffinity(0))
    loadgen, port = start_loadgen(
        template.path,
        results,
        pki.ca_cert,
        pki.server_cert,
        pki.server_key,
        loadgen_cpu,
        ["--bucket-seconds", str(BUCKET), "--framed"],
    )
    out_file = pki.directory.parent / f"receive-{kind}.out"
    try:
        arguments = ["--receive-worker", kind, "--port", str(port), "--ca", str(pki.ca_cert)]
        arguments += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
        arguments += ["--per-bucket", str(template.per_bucket)]
        arguments += ["--flow-clock", str(T0 + (buckets + 1) * BUCKET)]
        callgrind(arguments, out_file, separate_threads=True)
    finally:
        stop_loadgen(loadgen)
    # With threads apart, the main thread's (thread 1's) dump at the second sched_yield.
    main_thread_phase = out_file.with_name(f"{out_file.name}.2-01")
    return _totals(main_thread_phase), results - WARM_BUCKETS * template.per_bucket


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"{prog()}: no totals in {dump}")


def run_benchmark(edges: int, buckets: int) -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit(f"{prog()}: needs valgrind on PATH")
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        template = write_bucket_template(Path(tmp) / "buckets.bin", edges, buckets)
        per_bucket = template.per_bucket
        print(
            f"load: {buckets} buckets of {per_bucket:,} FlowResults ({template.mean_size:.0f} B "
            f"mean), {edges:,} namespace pairs; receive path: "
            f"{'compiled C' if hotpath.COMPILED else 'Python fallback'}",
            flush=True,
        )
        # Just past the push of the last bucket (two widths after its start): the recent past.
        flow_clock = T0 + (buckets + 1) * BUCKET
        first, _, later = count_phases(template.path, per_bucket, flow_clock)
        ensure_node_modules()
        # One bucket, which the load generator replays at later and later times.
        stream = write_bucket_template(Path(tmp) / "bucket.bin", edges)
        pki = make_pki(Path(tmp) / "pki")
        receive = {kind: count_receive(kind, stream, pki, buckets) for kind in ("A", "B")}
    per_first = first / per_bucket
    per_later = later / ((buckets - WARM_BUCKETS) * per_bucket)
    print(f"first bucket (every key new):  {per_first:>9,.0f} instructions per result")
    print(
        f"later buckets (keys known):    {per_later:>9,.0f} instructions per result "
        f"(buckets {WARM_BUCKETS + 1} to {buckets})"
    )
    print(f"a new key costs {per_first / per_later:.1f} times a known one")
    per_result = {kind: count / results for kind, (count, results) in receive.items()}
    print(f"receiving over mTLS, the receiving thread, buckets {WARM_BUCKETS + 1} to {buckets}:")
    print(f"  A raw receive, nothing decoded:  {per_result['A']:>9,.0f} instructions per result")
    print(f"  B the daemon's receive loop:     {per_result['B']:>9,.0f} instructions per result")
    print(f"  A / B: {per_result['A'] / per_result['B']:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--distinct-edges",
        type=int,
        default=DEFAULT_EDGES,
        help=f"namespace pairs, 4 results each per bucket (default {DEFAULT_EDGES:,})",
    )
    parser.add_argument(
        "--buckets", type=int, default=DEFAULT_BUCKETS, help=f"default {DEFAULT_BUCKETS}"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_BUCKETS} buckets of {SMOKE_EDGES} namespace pairs: checks, for CI",
    )
    # The measured process, run by the benchmark itself under callgrind.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--per-bucket", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--flow-clock", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--receive-worker", choices=["A", "B"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    for name in ("--ca", "--cert", "--key"):
        parser.add_argument(name, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(Path(args.data), args.per_bucket, args.flow_clock)
        return 0
    if args.receive_worker:
        settings = client_settings(args.port, args.ca, args.cert, args.key)
        run_receive_worker(args.receive_worker, settings, args.per_bucket, args.flow_clock)
        return 0
    if args.smoke:
        return run_benchmark(SMOKE_EDGES, SMOKE_BUCKETS)
    if args.distinct_edges < 1 or args.buckets <= WARM_BUCKETS:
        parser.error(f"--distinct-edges must be at least 1 and --buckets above {WARM_BUCKETS}")
    return run_benchmark(args.distinct_edges, args.buckets)


if __name__ == "__main__":
    sys.exit(main())
