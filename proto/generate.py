"""Regenerate the Python stubs in aggregator/wire/ from proto/goldmane.proto.

Run `python proto/generate.py` after editing the .proto; tests/test_wire.py
fails while the committed stubs differ from what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
# The .proto is mapped to this package path so that the generated
# goldmane_pb2_grpc.py imports `aggregator.wire.goldmane_pb2`, not a top-level module.
PACKAGE_PATH = "aggregator/wire"


def generate(out_dir: Path) -> None:
    """Write goldmane_pb2.py, .pyi and goldmane_pb2_grpc.py under out_dir/aggregator/wire."""
    (out_dir / PACKAGE_PATH).mkdir(parents=True, exist_ok=True)
    include = protoc.__file__.rsplit("/", 1)[0] + "/_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PACKAGE_PATH}={PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"{PACKAGE_PATH}/goldmane.proto",
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
