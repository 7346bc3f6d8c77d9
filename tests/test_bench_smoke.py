"""The ingest benchmark (tests/bench/ingest.py), the receive path's (tests/bench/receive_path.py)
and the instruction count (tests/bench/instructions.py) still run and check what they measure.

The benchmarks themselves are not part of the suite: they take minutes. The ingest
benchmark's `--smoke` run (3,000 results, seconds) is: the load generator, the raw client, the
real daemon flushing into a fresh schema, the rate-limited run and the naive design all run
once, and the benchmark exits non-zero when a result is wrong (a result not received or
skipped, a reconnect, a trail whose edges and counts differ from the data's). It needs node and
npm (it runs `npm install` in tests/bench when node_modules is missing) and two CPUs: one for
the load generator, one for the client; so does the receive path's `--smoke` (2,000 results).
The instruction count's `--smoke` (400 results under valgrind, and the same received over mTLS
twice, about a minute) needs valgrind, and node like the benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "tests" / "bench" / "ingest.py"
RECEIVE_PATH = REPO / "tests" / "bench" / "receive_path.py"
INSTRUCTIONS = REPO / "tests" / "bench" / "instructions.py"
# npm install on a cold cache, then the smoke run itself (~10 s): generous for a busy CI box.
TIMEOUT_SECONDS = 600


def run_smoke(script: Path, *args: str) -> str:
    """Run a benchmark's --smoke from the repository root; its output, once it exited 0."""
    completed = subprocess.run(
        [sys.executable, str(script), "--smoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


needs_load_generator = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="the benchmark's load generator needs node and npm on PATH",
)
needs_two_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="the benchmark pins the load generator and the client to one CPU each",
)


@needs_load_generator
@needs_two_cpus
def test_ingest_benchmark_smoke_run_passes_its_checks(postgres_url: str) -> None:
    output = run_smoke(BENCHMARK, "--database-url", postgres_url)
    for row in ("A  raw limit", "F  full path", "F  the same, load held to", "N  naive"):
        assert any(line.startswith(row) for line in output.splitlines()), output
    assert "results/s" in output and "SQL stmts/s" in output and "peak RSS" in output
    assert "checks: every run received all its results" in output


@needs_load_generator
@needs_two_cpus
def test_receive_path_smoke_run_measures_a_and_b_apart_and_sharing_the_core() -> None:
    output = run_smoke(RECEIVE_PATH)
    for row in ("A  gRPC mTLS", "B  gRPC mTLS", "C  read + map", "B/A sharing the core"):
        assert any(line.startswith(row) for line in output.splitlines()), output
    assert "sanity: every run received all 2,000 results" in output


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="counting instructions needs valgrind")
def test_instruction_count_smoke_run_counts_the_loop_and_the_receive_around_it() -> None:
    output = run_smoke(INSTRUCTIONS)
    figures = {}
    for line in output.splitlines():
        if "instructions per result" in line:
            label, _, rest = line.partition(":")
            figures[label.strip()] = int(rest.split()[0].replace(",", ""))
    # A new key is read and mapped once; a known one is counted in C (or by protobuf).
    assert figures["first bucket (every key new)"] > figures["later buckets (keys known)"] > 0
    # B receives what A receives and counts it too: more instructions on the same stream.
    assert figures["B the daemon's receive loop"] > figures["A raw receive, nothing decoded"] > 0
