"""The stream client's pieces: where to resume, channel options, and naming the step that failed."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import grpc
import pytest

from aggregator.goldmane_client import (
    _CHANNEL_OPTIONS,
    RING_REACH_SECONDS,
    STEP_CERTS,
    STEP_CONNECT,
    STEP_RESOLVE,
    StreamFailure,
    check_resolves,
    classify,
    open_channel,
    resume_point,
    stream_flows,
)
from aggregator.pki import Pki
from aggregator.settings import GoldmaneSettings

NOW = 1_800_000_000.0


def settings_for(pki: Pki, **changes: object) -> GoldmaneSettings:
    base = GoldmaneSettings(
        host="127.0.0.1",
        port=1,
        server_name="goldmane",
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        insecure=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_first_start_asks_for_the_whole_ring() -> None:
    assert resume_point(None, NOW) == -RING_REACH_SECONDS


def test_progress_within_the_ring_resumes_exactly_there() -> None:
    assert resume_point(int(NOW) - 600, NOW) == int(NOW) - 600


def test_progress_older_than_the_ring_is_clamped_to_it() -> None:
    assert resume_point(int(NOW) - 7200, NOW) == -RING_REACH_SECONDS
    assert RING_REACH_SECONDS < 3600  # inside Goldmane's ~hour, or it skips the backfill


def test_keepalive_pings_are_never_more_often_than_every_five_minutes() -> None:
    options = dict(_CHANNEL_OPTIONS)
    assert int(options["grpc.keepalive_time_ms"]) > 5 * 60 * 1000
    assert options["SingleThreadedUnaryStream"] == 1


def test_an_unresolvable_host_fails_at_the_resolve_step(pki: Pki) -> None:
    with pytest.raises(StreamFailure) as caught:
        check_resolves(settings_for(pki, host="goldmane.invalid"))
    assert caught.value.step == STEP_RESOLVE


def test_an_unreadable_key_file_fails_at_the_certificate_step_without_its_contents(
    pki: Pki, tmp_path: Path
) -> None:
    with pytest.raises(StreamFailure) as caught:
        open_channel(settings_for(pki, key_file=tmp_path / "gone.key"))
    assert caught.value.step == STEP_CERTS
    assert "gone.key" in str(caught.value)
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize("setting", ["ca_file", "cert_file", "key_file"])
@pytest.mark.parametrize(("content", "says"), [(b"", "is empty"), (b"junk\n", "no PEM")])
def test_an_empty_or_non_pem_file_fails_at_the_certificate_step(
    pki: Pki, tmp_path: Path, setting: str, content: bytes, says: str
) -> None:
    # Handed to gRPC, an empty certificate or key aborts the process.
    path = tmp_path / "file.pem"
    path.write_bytes(content)
    with pytest.raises(StreamFailure) as caught:
        open_channel(settings_for(pki, **{setting: path}))
    assert caught.value.step == STEP_CERTS
    assert says in str(caught.value)


def test_a_refused_connection_fails_at_the_connect_step(pki: Pki) -> None:
    channel = open_channel(settings_for(pki, insecure=True))
    try:
        _, results = stream_flows(channel, 0)
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(results))
        assert classify(caught.value, tls=False).step == STEP_CONNECT
    finally:
        channel.close()


def test_plaintext_is_warned_about_at_every_connect(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            open_channel(settings_for(pki, insecure=True)).close()
    warnings = [r for r in caplog.records if "WITHOUT TLS" in r.getMessage()]
    assert len(warnings) == 2
