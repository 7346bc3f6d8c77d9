"""A synthetic Calico cluster behind the Goldmane-compatible server: `edge-aggregator --simulate`.

The cluster has the tiers of a real one (ingress, frontends, APIs, workers,
databases in `dbaas`, monitoring, DNS in kube-system), reports each connection
from both ends as Goldmane does, denies a few, mixes in flows that must not
become edges, and now and then grows a new relationship.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aggregator.goldmane_server import GoldmaneServer
from aggregator.settings import GoldmaneSettings
from aggregator.wire import goldmane_pb2 as pb

BUCKET_SECONDS = 15
# Words for generated namespace names: stable across versions so seeds reproduce.
_WORDS = (
    "shop", "cart", "checkout", "search", "catalog", "reviews", "ads", "auth", "billing",
    "payments", "orders", "shipping", "inventory", "pricing", "users", "profile", "media",
    "images", "video", "chat", "notify", "email", "sms", "reports", "ledger", "fraud",
    "risk", "loyalty", "coupons", "gateway", "docs", "blog", "admin", "portal", "partners",
    "mobile", "graphql", "export", "import", "sync", "audit", "geo", "maps", "weather",
    "tickets", "support", "crm", "events",
)  # fmt: skip
FIXED_NAMESPACES = ("kube-system", "ingress-nginx", "monitoring", "dbaas")


@dataclass(frozen=True)
class Link:
    """A connection the cluster makes: reported by both ends unless denied at the source."""

    src_ns: str
    src_name: str
    dst_ns: str
    dst_name: str
    port: int
    proto: str = "tcp"
    src_action: pb.Action = pb.Allow
    dst_action: pb.Action = pb.Allow


@dataclass(frozen=True)
class OffClusterFlow:
    """A flow with a non-namespaced end (`-`): a host endpoint or the internet. Never an edge."""

    key: pb.FlowKey


class ScaledClock:
    """Flow time that starts at `start` (default: the wall clock) and runs `speed` times faster."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self.speed = speed
        self._start = time.time() if start is None else start
        self._started = time.monotonic()

    def __call__(self) -> float:
        return self._start + (time.monotonic() - self._started) * self.speed


class ClusterModel:
    """The cluster's namespaces and connections, drawn from a seed."""

    def __init__(self, *, namespaces: int = 72, seed: int = 1) -> None:
        if namespaces < 12:
            raise ValueError("a simulated cluster needs at least 12 namespaces")
        self._rng = random.Random(seed)
        tiered = namespaces - len(FIXED_NAMESPACES)
        names = self._names(tiered)
        frontends = names[: max(2, tiered // 5)]
        apis = names[len(frontends) : len(frontends) + max(3, tiered * 2 // 5)]
        workers = names[len(frontends) + len(apis) :]
        self.frontends = [f"web-{name}" for name in frontends]
        self.apis = [f"api-{name}" for name in apis]
        self.workers = [f"jobs-{name}" for name in workers]
        self.namespaces = [*FIXED_NAMESPACES, *self.frontends, *self.apis, *self.workers]
        self.links: list[Link] = []
        self.off_cluster: list[OffClusterFlow] = []
        self._build()

    def _names(self, count: int) -> list[str]:
        words = list(_WORDS)
        self._rng.shuffle(words)
        names = []
        for index in range(count):
            word = words[index % len(words)]
            names.append(word if index < len(words) else f"{word}-{index // len(words) + 1}")
        return names

    def _build(self) -> None:
        rng = self._rng
        add = self.links.append
        for ns in self.frontends:
            add(Link("ingress-nginx", "ingress-nginx-controller-*", ns, f"{ns}-*", 8080))
            for api in rng.sample(self.apis, k=min(len(self.apis), rng.randint(1, 3))):
                add(Link(ns, f"{ns}-*", api, f"{api}-*", 8080))
        for api in self.apis:
            if rng.random() < 0.6:
                add(Link(api, f"{api}-*", "dbaas", "postgres-*", 5432))
            if rng.random() < 0.3:
                add(Link(api, f"{api}-*", "dbaas", "rabbitmq-*", 5672))
            for peer in rng.sample(self.apis, k=min(len(self.apis) - 1, rng.randint(0, 2))):
                if peer != api:
                    add(Link(api, f"{api}-*", peer, f"{peer}-*", 8080))
        for worker in self.workers:
            add(Link(worker, f"{worker}-*", "dbaas", "postgres-*", 5432))
            add(Link(worker, f"{worker}-*", "dbaas", "rabbitmq-*", 5672))
            self.off_cluster.append(_to_internet(worker))
        for ns in self.namespaces:
            if ns != "monitoring" and rng.random() < 0.85:
                add(Link("monitoring", "prometheus-*", ns, f"{ns}-*", 9090))
            if ns != "kube-system":
                add(Link(ns, f"{ns}-*", "kube-system", "coredns-*", 53, proto="udp"))
        for frontend in self.frontends[:2]:
            self.off_cluster.append(_from_host(frontend))
        self._add_denies()

    def _add_denies(self) -> None:
        rng = self._rng
        # Egress denied at the source: the destination never sees the packet (Src report only).
        for frontend in rng.sample(self.frontends, k=min(2, len(self.frontends))):
            self.links.append(
                Link(frontend, f"{frontend}-*", "dbaas", "postgres-*", 5432, src_action=pb.Deny)
            )
        # Ingress denied at the destination: Src says Allow, Dst says Deny.
        for worker in rng.sample(self.workers, k=min(2, len(self.workers))):
            api = rng.choice(self.apis)
            self.links.append(
                Link(worker, f"{worker}-*", api, f"{api}-*", 8080, dst_action=pb.Deny)
            )

    def denied_pairs(self) -> set[tuple[str, str]]:
        return {
            (link.src_ns, link.dst_ns)
            for link in self.links
            if pb.Deny in (link.src_action, link.dst_action)
        }

    def grow(self) -> Link:
        """A relationship the cluster did not have before: what the digest exists to report."""
        existing = {(link.src_ns, link.dst_ns) for link in self.links}
        for _ in range(1000):
            src = self._rng.choice(self.apis + self.workers)
            dst = self._rng.choice(self.apis)
            if src != dst and (src, dst) not in existing:
                break
        link = Link(src, f"{src}-*", dst, f"{dst}-*", 8080)
        self.links.append(link)
        return link


def _to_internet(ns: str) -> OffClusterFlow:
    return OffClusterFlow(
        pb.FlowKey(
            source_namespace=ns, source_name=f"{ns}-*", source_type=pb.WorkloadEndpoint,
            dest_namespace="-", dest_name="pub", dest_type=pb.Network, dest_port=443,
            proto="tcp", reporter=pb.Src, action=pb.Allow,
        )
    )  # fmt: skip


def _from_host(ns: str) -> OffClusterFlow:
    return OffClusterFlow(
        pb.FlowKey(
            source_namespace="-", source_name="node-*", source_type=pb.HostEndpoint,
            dest_namespace=ns, dest_name=f"{ns}-*", dest_type=pb.WorkloadEndpoint, dest_port=8080,
            proto="tcp", reporter=pb.Dst, action=pb.Allow,
        )
    )  # fmt: skip


class Simulator:
    """Runs the model: records each bucket's traffic into a Goldmane-compatible server over mTLS."""

    def __init__(
        self,
        *,
        namespaces: int = 72,
        rate: float = 100.0,
        seed: int = 1,
        speed: float = 1.0,
        new_edge_every: int = 20,
        start: float | None = None,
    ) -> None:
        self.model = ClusterModel(namespaces=namespaces, seed=seed)
        self.clock = ScaledClock(speed, start)
        self._rng = random.Random(seed + 1)
        self._rate = rate
        self._new_edge_every = new_edge_every
        self._server = GoldmaneServer(clock=self.clock)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._tempdir = tempfile.TemporaryDirectory(prefix="goldmane-simulator-")

    def start(self) -> GoldmaneSettings:
        """Start serving; returns the settings that reach it (a throwaway CA, the server name)."""
        from aggregator.pki import make_pki  # `cryptography` is only needed here

        pki = make_pki(Path(self._tempdir.name))
        port = self._server.start(tls=pki)
        self._thread.start()
        return GoldmaneSettings(
            host="127.0.0.1", port=port, server_name="goldmane", ca_file=pki.ca_cert,
            cert_file=pki.client_cert, key_file=pki.client_key, insecure=False,
        )  # fmt: skip

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._server.stop()
        self._tempdir.cleanup()

    def _run(self) -> None:
        bucket = int(self.clock() // BUCKET_SECONDS) * BUCKET_SECONDS
        buckets = 0
        while not self._stopping.is_set():
            self.record_bucket(bucket)
            buckets += 1
            if self._new_edge_every and buckets % self._new_edge_every == 0:
                self.model.grow()
            bucket += BUCKET_SECONDS
            while not self._stopping.is_set() and self.clock() < bucket:
                self._stopping.wait(
                    min(0.5, max(0.001, (bucket - self.clock()) / self.clock.speed))
                )

    def record_bucket(self, start: int) -> None:
        """Record the connections active in the bucket starting at `start`."""
        reports_if_all_active = 2 * len(self.model.links) + len(self.model.off_cluster)
        share = min(1.0, self._rate * BUCKET_SECONDS / max(1, reports_if_all_active))
        at = start + 1
        for link in self.model.links:
            if self._rng.random() < share:
                self._server.record_connection(
                    src_ns=link.src_ns, src_name=link.src_name, dst_ns=link.dst_ns,
                    dst_name=link.dst_name, dst_port=link.port, proto=link.proto,
                    src_action=link.src_action,
                    dst_action=None if link.src_action == pb.Deny else link.dst_action,
                    at=at,
                )  # fmt: skip
        for flow in self.model.off_cluster:
            if self._rng.random() < share:
                self._server.record(flow.key, at=at)
