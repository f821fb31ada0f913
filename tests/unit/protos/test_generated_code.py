"""The committed wire code under fedsilo/v1/ is exactly what protos/ generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_committed_code_matches_the_proto_sources(tmp_path: Path) -> None:
    # protoc runs in its own process: loading grpc_tools' compiler beside an already imported
    # protobuf runtime (TensorFlow's, in a full test run) can crash the interpreter.
    result = subprocess.run(  # noqa: S603
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "fedsilo" / "v1").glob("*"))
    assert {p.name for p in written} == {"fedsilo_pb2.py", "fedsilo_pb2.pyi", "fedsilo_pb2_grpc.py"}
    for fresh in written:
        committed = ROOT / "fedsilo" / "v1" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} differs from protos/: run `make protos` and commit the result"
        )
