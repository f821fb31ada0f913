"""The round-engine registry and the coordinator's import rules, read from the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import coordinator
from coordinator.service.engines.base import RoundEngine
from coordinator.service.engines.registry import ENGINES
from fedsilo.protection import Protection

PACKAGE = Path(coordinator.__file__).resolve().parent


def _imports(path: Path) -> list[str]:
    """Every module a source file imports (``from x import y`` counts as ``x``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.append(node.module)
    return found


def test_every_protection_has_one_round_engine() -> None:
    assert set(ENGINES) == set(Protection)
    for engine in ENGINES.values():
        assert issubclass(engine, RoundEngine)
        assert not getattr(engine, "__abstractmethods__", frozenset())


def test_the_coordinator_uses_only_the_public_secagg_api() -> None:
    offending = [
        (str(path.relative_to(PACKAGE)), module)
        for path in sorted(PACKAGE.rglob("*.py"))
        for module in _imports(path)
        if module.startswith("secagg.") and module != "secagg.paillier"
    ]
    assert offending == []


def test_no_service_module_imports_grpc() -> None:
    offending = [
        (str(path.relative_to(PACKAGE)), module)
        for path in sorted((PACKAGE / "service").rglob("*.py"))
        for module in _imports(path)
        if module.split(".")[0] in ("grpc", "grpc_health", "grpc_reflection")
        or module.startswith("fedsilo.v1")
    ]
    assert offending == []
