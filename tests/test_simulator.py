"""The simulator: its cluster, its wire behaviour, a demo run into the embedded PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aggregator.buffer import Batch
from aggregator.daemon import main as daemon_main
from aggregator.daemon import simulation_start
from aggregator.goldmane_client import open_channel, stream_flows
from aggregator.mapping import NOT_NAMESPACED
from aggregator.simulator import FIXED_NAMESPACES, ClusterModel, ScaledClock, Simulator
from aggregator.store.ingest import IngestStore
from aggregator.wire import goldmane_pb2 as pb
from tests.harness import wait_until


def test_the_cluster_has_tiers_dns_monitoring_and_denies() -> None:
    model = ClusterModel(namespaces=72, seed=7)
    assert len(model.namespaces) == 72 == len(set(model.namespaces))
    assert set(FIXED_NAMESPACES) <= set(model.namespaces)
    pairs = {(link.src_ns, link.dst_ns) for link in model.links}
    assert all(src != dst for src, dst in pairs)
    assert all((ns, "kube-system") in pairs for ns in model.namespaces if ns != "kube-system")
    scraped = sum(1 for ns in model.namespaces if ("monitoring", ns) in pairs)
    assert scraped > len(model.namespaces) // 2
    assert any(dst == "dbaas" for _, dst in pairs)
    sources_denied = [link for link in model.links if link.src_action == pb.Deny]
    ingress_denied = [link for link in model.links if link.dst_action == pb.Deny]
    assert sources_denied and ingress_denied
    assert all(
        NOT_NAMESPACED in (f.key.source_namespace, f.key.dest_namespace) for f in model.off_cluster
    )


def test_the_same_seed_gives_the_same_cluster() -> None:
    assert ClusterModel(seed=3).links == ClusterModel(seed=3).links
    assert ClusterModel(seed=3).links != ClusterModel(seed=4).links


def test_growing_adds_a_relationship_the_cluster_did_not_have() -> None:
    model = ClusterModel(seed=5)
    before = {(link.src_ns, link.dst_ns) for link in model.links}
    link = model.grow()
    assert (link.src_ns, link.dst_ns) not in before


def read_results(
    call_and_results: tuple[grpc.Call, Iterator[bytes]], count: int
) -> list[pb.FlowResult]:
    call, results = call_and_results
    received = []
    for data in results:
        received.append(pb.FlowResult.FromString(data))
        if len(received) >= count:
            break
    call.cancel()
    return received


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, grpc.Channel]]:
    sim = Simulator(namespaces=30, rate=10_000, seed=2, speed=60)
    settings = sim.start()
    channel = open_channel(settings)
    yield sim, channel
    channel.close()
    sim.stop()


def test_simulated_flows_honour_the_wire_contract(
    simulator: tuple[Simulator, grpc.Channel],
) -> None:
    sim, channel = simulator
    live = read_results(stream_flows(channel, 0), 400)
    for result in live:
        assert result.flow.start_time % 15 == 0
        assert result.flow.end_time == result.flow.start_time + 15
    reporters = {
        (r.flow.Key.source_namespace, r.flow.Key.dest_namespace, r.flow.Key.reporter) for r in live
    }
    allowed = [link for link in sim.model.links if link.src_action == pb.Allow]
    both = [
        link
        for link in allowed
        if {(link.src_ns, link.dst_ns, pb.Src), (link.src_ns, link.dst_ns, pb.Dst)} <= reporters
    ]
    assert both, "connections are reported by both ends"
    denied_at_source = {
        (link.src_ns, link.dst_ns) for link in sim.model.links if link.src_action == pb.Deny
    }
    assert not any((src, dst, pb.Dst) in reporters for src, dst in denied_at_source)
    # Backfill: a new stream asking for the last minutes gets buckets older than the live point.
    newest_live = max(r.flow.start_time for r in live)
    backfill = read_results(stream_flows(channel, -300), 50)
    assert min(r.flow.start_time for r in backfill) < newest_live


@pytest.fixture
def embedded_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose embedded PostgreSQL lives under tmp_path; deleted afterwards."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    yield env
    pgdata = tmp_path / "data" / "goldmane-edge-aggregator" / "pgdata"
    if (pgdata / "PG_VERSION").exists():
        import pgserver

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pgserver.get_server(pgdata, cleanup_mode="delete").cleanup()


def embedded_edges(env: dict[str, str]) -> list[tuple[str, str, str]]:
    """Read the trail through a second command that finds the same embedded server."""
    code = (
        "from aggregator.embedded import embedded_database_url\n"
        "import psycopg, json\n"
        "rows = psycopg.connect(embedded_database_url()).execute("
        "'SELECT src_ns, dst_ns, action FROM edge').fetchall()\n"
        "print(json.dumps(rows))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    import json

    return [tuple(row) for row in json.loads(out.stdout)]


def test_a_first_simulation_starts_at_the_wall_clock(database_url: str) -> None:
    before = time.time()
    assert before <= simulation_start(database_url) <= time.time()


def test_a_new_simulation_starts_where_an_earlier_ones_progress_got_to(database_url: str) -> None:
    # An earlier run at --speed 30 for a minute stored progress half an hour ahead.
    ahead = int(time.time()) // 15 * 15 + 1800
    with IngestStore.open(database_url) as store:
        store.migrate()
        store.write(Batch({}, ahead))
    start = simulation_start(database_url)
    assert start == ahead
    assert ahead <= ScaledClock(30, start)() < ahead + 60


def test_progress_further_ahead_than_any_simulation_is_not_followed(database_url: str) -> None:
    poisoned = 2_758_000_000  # 2057
    with IngestStore.open(database_url) as store:
        store.migrate()
        store.write(Batch({}, poisoned))
    assert simulation_start(database_url) < time.time() + 1


def test_bad_simulator_arguments_are_refused_before_any_database_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert daemon_main(["--simulate", "--speed", "0"]) == 2
    assert "--speed from 0.1 to 1000" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_short_simulated_run_fills_the_embedded_database(embedded_home: dict[str, str]) -> None:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "aggregator.daemon", "--simulate", "--speed", "60", "--seed", "3",
         "--namespaces", "40", "--http-port", "0", "--flush-interval", "0.5"],
        env=embedded_home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    assert daemon.stderr is not None
    reader = threading.Thread(
        target=lambda: lines.extend(iter(daemon.stderr.readline, "")), daemon=True
    )
    reader.start()
    try:
        # Generous: the first run creates the embedded database, slow on a loaded machine.
        try:
            wait_until(lambda: any("new edges recorded" in line for line in lines), timeout=300)
        except AssertionError:
            raise AssertionError(
                f"no edges recorded; the daemon's last lines: {lines[-5:]}"
            ) from None
        time.sleep(3)  # a few more compressed buckets
        daemon.send_signal(signal.SIGINT)
        daemon.wait(timeout=15)
        reader.join(timeout=5)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    stderr = "".join(lines)
    assert daemon.returncode == 0, stderr
    assert "edges --peers-of dbaas" in stderr
    edges = embedded_edges(embedded_home)
    model = ClusterModel(namespaces=40, seed=3)
    assert len(edges) > 40
    assert all(src != dst and NOT_NAMESPACED not in (src, dst) for src, dst, _ in edges)
    assert {(src, dst) for src, dst, action in edges if action == "deny"} == model.denied_pairs()
    assert {ns for _, ns, _ in edges} >= {"dbaas", "kube-system"}
