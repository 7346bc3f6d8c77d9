"""The committed stubs match proto/, and proto/ matches goldmane-wire.md's field numbers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from aggregator.wire import goldmane_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
STUBS = ("goldmane_pb2.py", "goldmane_pb2.pyi", "goldmane_pb2_grpc.py")


def _load_generator() -> object:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stub", STUBS)
def test_committed_stubs_are_what_proto_generates(stub: str, tmp_path: Path) -> None:
    generator = _load_generator()
    generator.generate(tmp_path)  # type: ignore[attr-defined]
    fresh = (tmp_path / "aggregator" / "wire" / stub).read_text()
    committed = (ROOT / "aggregator" / "wire" / stub).read_text()
    assert fresh == committed, (
        f"aggregator/wire/{stub} is stale: run `{sys.executable} proto/generate.py`"
    )


def _numbers(message: type) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_stream_method_has_goldmanes_full_name() -> None:
    method = pb.DESCRIPTOR.services_by_name["Flows"].methods_by_name["Stream"]
    assert method.full_name == "goldmane.Flows.Stream"
    assert method.server_streaming and not method.client_streaming
    assert method.input_type.full_name == "goldmane.FlowStreamRequest"
    assert method.output_type.full_name == "goldmane.FlowResult"


def test_field_numbers_match_the_wire_contract() -> None:
    assert _numbers(pb.FlowStreamRequest) == {
        "start_time_gte": 1,
        "filter": 2,
        "aggregation_interval": 3,
    }
    assert _numbers(pb.FlowResult) == {"id": 1, "flow": 2}
    assert _numbers(pb.Flow) == {
        "Key": 1, "start_time": 2, "end_time": 3, "source_labels": 4, "dest_labels": 5,
        "packets_in": 6, "packets_out": 7, "bytes_in": 8, "bytes_out": 9,
        "num_connections_started": 10, "num_connections_completed": 11, "num_connections_live": 12,
    }  # fmt: skip
    assert _numbers(pb.FlowKey) == {
        "source_name": 1, "source_namespace": 2, "source_type": 3, "dest_name": 4,
        "dest_namespace": 5, "dest_type": 6, "dest_port": 7, "dest_service_name": 8,
        "dest_service_namespace": 9, "dest_service_port_name": 10, "dest_service_port": 11,
        "proto": 12, "reporter": 13, "action": 14, "policies": 15,
    }  # fmt: skip
    assert _numbers(pb.PolicyHit) == {
        "kind": 1, "namespace": 2, "name": 3, "tier": 4, "action": 5,
        "policy_index": 6, "rule_index": 7, "trigger": 8,
    }  # fmt: skip


def test_enum_values_match_the_wire_contract() -> None:
    assert (pb.ActionUnspecified, pb.Allow, pb.Deny, pb.Pass) == (0, 1, 2, 3)
    assert (pb.ReporterUnspecified, pb.Src, pb.Dst) == (0, 1, 2)
    assert (pb.WorkloadEndpoint, pb.HostEndpoint, pb.NetworkSet, pb.Network) == (1, 2, 3, 4)
    assert (pb.CalicoNetworkPolicy, pb.Profile, pb.EndOfTier) == (1, 9, 10)
