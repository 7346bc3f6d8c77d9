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

  python tests/bench/instructions.py             # 10 buckets of 4,000 results, about 15 s
  python tests/bench/instructions.py --smoke     # 4 buckets of 100 results: for CI

It needs valgrind. Run it from the repository root with the dev virtualenv.
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

from common import BUCKET, T0, prog, read_messages, write_bucket_template

from aggregator import hotpath
from aggregator.buffer import EdgeBuffer

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


def count_phases(script: Path, data: Path, per_bucket: int, flow_clock: int) -> list[int]:
    """Run the worker under callgrind; the instructions of each of its three phases."""
    out_file = data.parent / "callgrind.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}"]
    command += ["--dump-before=sched_yield", sys.executable, str(script), "--worker"]
    command += ["--data", str(data), "--per-bucket", str(per_bucket)]
    command += ["--flow-clock", str(flow_clock)]
    completed = subprocess.run(
        command, env=os.environ | WORKER_ENVIRONMENT, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"{prog()}: the worker failed: {' / '.join(tail)}")
    # Dump 1 holds start-up, dumps 2 to 4 the phases; callgrind.out itself what came after.
    dumps = sorted(data.parent.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:]))
    if len(dumps) != 4:
        raise SystemExit(f"{prog()}: expected 4 callgrind dumps, found {len(dumps)}")
    return [_totals(dump) for dump in dumps[1:]]


def _totals(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"{prog()}: no totals in {dump}")


def run_benchmark(edges: int, buckets: int) -> int:
    if shutil.which("valgrind") is None:
        raise SystemExit(f"{prog()}: needs valgrind on PATH")
    script = Path(__file__).resolve()
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
        first, _, later = count_phases(script, template.path, per_bucket, flow_clock)
    per_first = first / per_bucket
    per_later = later / ((buckets - WARM_BUCKETS) * per_bucket)
    print(f"first bucket (every key new):  {per_first:>9,.0f} instructions per result")
    print(
        f"later buckets (keys known):    {per_later:>9,.0f} instructions per result "
        f"(buckets {WARM_BUCKETS + 1} to {buckets})"
    )
    print(f"a new key costs {per_first / per_later:.1f} times a known one")
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
    args = parser.parse_args()
    if args.worker:
        run_worker(Path(args.data), args.per_bucket, args.flow_clock)
        return 0
    if args.smoke:
        return run_benchmark(SMOKE_EDGES, SMOKE_BUCKETS)
    if args.distinct_edges < 1 or args.buckets <= WARM_BUCKETS:
        parser.error(f"--distinct-edges must be at least 1 and --buckets above {WARM_BUCKETS}")
    return run_benchmark(args.distinct_edges, args.buckets)


if __name__ == "__main__":
    sys.exit(main())
