"""Builders of Goldmane FlowResults for tests, and the switch to the Python receive path."""

from __future__ import annotations

import pytest

from aggregator import buffer as buffer_module
from aggregator.hotpath import (
    ConnectionPython,
    count_known_python,
    flow_head_python,
    read_key_python,
    seal_bucket_python,
)
from aggregator.wire import goldmane_pb2 as pb

BUCKET = 15


def flow_result(
    src_ns: str = "frontend",
    dst_ns: str = "api",
    *,
    start: int = 1_800_000_000,
    src_name: str = "web-*",
    dst_name: str = "api-*",
    port: int = 8080,
    proto: str = "tcp",
    reporter: int = pb.Src,
    action: int = pb.Allow,
    service: str = "",
    result_id: int = 1,
) -> pb.FlowResult:
    key = pb.FlowKey(
        source_namespace=src_ns,
        source_name=src_name,
        source_type=pb.WorkloadEndpoint,
        dest_namespace=dst_ns,
        dest_name=dst_name,
        dest_type=pb.WorkloadEndpoint,
        dest_port=port,
        proto=proto,
        reporter=reporter,
        action=action,
        dest_service_name=service,
        dest_service_namespace=dst_ns if service else "",
        dest_service_port=port if service else 0,
    )
    flow = pb.Flow(Key=key, start_time=start, end_time=start + BUCKET, packets_in=1, packets_out=1)
    return pb.FlowResult(id=result_id, flow=flow)


def use_receive_path(receive_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Receive path "in use" is the C helper where it is built; "python" is the fallback."""
    if receive_path == "python":
        monkeypatch.setattr(buffer_module, "flow_head", flow_head_python)
        monkeypatch.setattr(buffer_module, "count_known", count_known_python)
        monkeypatch.setattr(buffer_module, "new_key_table", dict)
        monkeypatch.setattr(buffer_module, "seal_bucket", seal_bucket_python)
        monkeypatch.setattr(buffer_module, "read_key", read_key_python)
        monkeypatch.setattr(buffer_module, "new_connection", ConnectionPython)
