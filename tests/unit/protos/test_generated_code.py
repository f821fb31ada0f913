"""The committed wire code under fedsilo/v1/ is exactly what protos/ generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _generate_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_code_matches_the_proto_sources(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    written = _generate_module().generate(tmp_path)
    assert written, "protoc wrote nothing"
    for fresh in written:
        committed = ROOT / "fedsilo" / "v1" / fresh.name
        assert committed.exists(), f"{committed} is not committed"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} differs from protos/: run `make protos` and commit the result"
        )
