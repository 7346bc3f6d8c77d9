"""Goldmane's `Flows.Stream` over mutual TLS: channel set-up, resume point, failure naming.

Certificates are read from disk at every connect so that a rotated Secret is
used without a restart. Each failure is named by the step that failed, so the
one log line per attempt tells an operator where to look.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Final

import grpc
import grpc.experimental

from aggregator.settings import GoldmaneSettings
from aggregator.wire import goldmane_pb2

log = logging.getLogger(__name__)

# Goldmane's ring holds ~240 buckets of 15 s. Asking for anything older than its
# oldest bucket silently gets no backfill at all, so stay a minute inside it.
RING_REACH_SECONDS: Final = 240 * 15 - 60

# gRPC-Go (Goldmane) closes connections whose client pings more often than every
# 5 minutes; 6 minutes still finds a dead connection that TCP alone would not.
_KEEPALIVE_MS: Final = 6 * 60 * 1000
_CHANNEL_OPTIONS: Final[list[tuple[str, int | str]]] = [
    # Receives on the calling thread: ~2.5x the results/s of the default channel.
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Over gRPC's default limit (4 MiB) one result would fail the whole stream, and each
    # reconnect would read it again: any size is taken, and the buffer skips an oversized one.
    ("grpc.max_receive_message_length", -1),
]

_STREAM_METHOD: Final = "/goldmane.Flows/Stream"

STEP_CERTS: Final = "read certificates"
STEP_RESOLVE: Final = "resolve"
STEP_CONNECT: Final = "connect"
STEP_TLS: Final = "TLS handshake"
STEP_RPC: Final = "RPC status"
STEPS: Final = (STEP_CERTS, STEP_RESOLVE, STEP_CONNECT, STEP_TLS, STEP_RPC)


class StreamFailure(Exception):
    """One failed attempt, named by the step that failed; `detail` holds no key material."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step} failed: {detail}")
        self.step = step
        self.detail = detail


def resume_point(sealed_until: int | None, now: float) -> int:
    """The `start_time_gte` to ask for: progress if the ring still holds it, else the whole ring."""
    if sealed_until is not None and sealed_until > now - RING_REACH_SECONDS:
        return sealed_until
    # Relative, so that a skew between our clock and Goldmane's cannot push it out of the ring.
    return -RING_REACH_SECONDS


def _read(path_name: str, path: object) -> bytes:
    try:
        with open(str(path), "rb") as file:
            pem = file.read()
    except OSError as error:
        raise StreamFailure(STEP_CERTS, f"{path_name} {path}: {error.strerror}") from None
    # gRPC aborts the whole process on an empty certificate or key (a failed CHECK in its C
    # core), so a file caught half-written, or a Secret with an empty key, stops here.
    if b"-----BEGIN " not in pem:
        detail = "is empty" if not pem.strip() else "holds no PEM block"
        raise StreamFailure(STEP_CERTS, f"{path_name} {path} {detail}")
    return pem


def open_channel(settings: GoldmaneSettings) -> grpc.Channel:
    """A new channel to Goldmane, with certificates read from disk now."""
    if settings.insecure:
        log.warning(
            "GOLDMANE_TLS_INSECURE=1: connecting WITHOUT TLS; flows and identity are unprotected",
            extra={"target": settings.target},
        )
        return grpc.insecure_channel(settings.target, options=_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read("GOLDMANE_CA_FILE", settings.ca_file),
        private_key=_read("GOLDMANE_KEY_FILE", settings.key_file),
        certificate_chain=_read("GOLDMANE_CERT_FILE", settings.cert_file),
    )
    options = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", settings.server_name)]
    return grpc.secure_channel(settings.target, credentials, options=options)


def check_resolves(settings: GoldmaneSettings) -> None:
    """Resolve the host ourselves first: gRPC's own message for a DNS failure is easy to misread."""
    try:
        socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise StreamFailure(STEP_RESOLVE, f"{settings.host}: {error}") from None


def stream_flows(channel: grpc.Channel, start_time_gte: int) -> tuple[grpc.Call, Iterator[bytes]]:
    """Open `Flows.Stream`; the call object lets another thread cancel it.

    Results come serialised: the buffer reads what it needs off the wire (`hotpath`).
    """
    stream: grpc.UnaryStreamMultiCallable[goldmane_pb2.FlowStreamRequest, bytes]
    stream = channel.unary_stream(
        _STREAM_METHOD,
        request_serializer=goldmane_pb2.FlowStreamRequest.SerializeToString,
        response_deserializer=None,
    )
    call = stream(goldmane_pb2.FlowStreamRequest(start_time_gte=start_time_gte))
    return call, call


_TLS_MARKERS: Final = (
    "ssl",
    "tls",
    "handshake",
    "certificate",
    "peer name",
    "tsi_",
    "verification",
)
_CONNECT_MARKERS: Final = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "no route",
    "unreachable",
    "timed out",
    "socket closed",
    "connection reset",
    "endpoint closing",
)


def classify(error: grpc.RpcError, *, tls: bool = True) -> StreamFailure:
    """Name the step behind an RpcError from gRPC's status and details."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or ""
    code_name = code.name if code is not None else "UNKNOWN"
    lowered = details.lower()
    detail = f"{code_name}: {details.splitlines()[0] if details else 'no details'}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
        if "dns resolution failed" in lowered:
            return StreamFailure(STEP_RESOLVE, detail)
        if any(marker in lowered for marker in _TLS_MARKERS):
            return StreamFailure(STEP_TLS, detail)
        if tls and "failed to connect" in lowered and "socket closed" in lowered:
            # Goldmane hangs up mid-handshake on a client certificate its CA did not sign.
            return StreamFailure(
                STEP_TLS,
                f"{detail} (the server closed the connection during the handshake: "
                "is the client certificate signed by the CA Goldmane trusts?)",
            )
        if any(marker in lowered for marker in _CONNECT_MARKERS):
            return StreamFailure(STEP_CONNECT, detail)
    return StreamFailure(STEP_RPC, detail)
