"""The layers import only downwards: the static rules over every import statement, and at runtime
only participant/training imports TensorFlow (the coordinator and the CLI never do).

Layers, from the top: the ``fedsilo`` command (``fedsilo/cli/``, ``fedsilo/__main__.py``) and
``examples``; the daemons ``coordinator`` and ``participant``, which never import each other; the
shared base (every other ``fedsilo`` module); and ``secagg``, a pure library that imports nothing of
this repository. Every import statement counts, module-level or inside a function.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("fedsilo", "coordinator", "participant", "secagg", "examples")
# Directories whose Python files are not product code (tests may reach into secagg's internals).
NOT_SCANNED = frozenset({"tests", "build", "dist", "node_modules", "venv"})

MODULES = [
    "coordinator.main",
    "coordinator.transport.server",
    "coordinator.observability.tensorboard",
    "fedsilo.cli",
    "fedsilo.cli.demo",
    "participant.main",
    "examples.digits.task",
]


def test_no_entry_point_imports_tensorflow() -> None:
    # One fresh interpreter imports them in turn (this process may hold TensorFlow from other
    # tests); it stops at the first that brings in tensorflow or keras and names it.
    probe = textwrap.dedent(
        f"""
        import importlib, json, sys
        for module in {MODULES!r}:
            importlib.import_module(module)
            loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
            if loaded:
                print(json.dumps([module, loaded[:5]]))
                break
        else:
            print(json.dumps(None))
        """
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    culprit = json.loads(result.stdout.strip().splitlines()[-1])
    assert culprit is None, f"importing {culprit[0]} loads {culprit[1]}"


# -- the static rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One imported module: where the statement is and whether it runs only inside a function."""

    path: str  # relative to the repository root, with forward slashes
    line: int
    module: str
    in_function: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _package_of(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts if path.name == "__init__.py" else parts[:-1]


def _imports_of(path: Path) -> Iterator[Import]:
    relative = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(relative, node.lineno, alias.name, in_function)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                anchor = package[: len(package) - node.level + 1]
                module = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield Import(relative, node.lineno, module, in_function)
            # ``from secagg.masking import client`` imports the submodule secagg.masking.client.
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if _is_module(submodule):
                    yield Import(relative, node.lineno, submodule, in_function)
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, nested)

    yield from visit(tree, False)


@cache
def _all_imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for top in sorted(ROOT.iterdir()):
        if not top.is_dir() or top.name.startswith(".") or top.name in NOT_SCANNED:
            continue
        if top.name.endswith(".egg-info"):
            continue
        for path in sorted(top.rglob("*.py")):
            found.extend(_imports_of(path))
    return tuple(found)


def _names(module: str, *prefixes: str) -> bool:
    """True if ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _under(path: str, *folders: str) -> bool:
    return any(path.startswith(folder.rstrip("/") + "/") for folder in folders)


def _in_base(path: str) -> bool:
    return (
        _under(path, "fedsilo")
        and not _under(path, "fedsilo/cli")
        and path != ("fedsilo/__main__.py")
    )


def _in_service_package(path: str) -> bool:
    return "service" in Path(path).parts[:-1]


def _secagg_internal(module: str) -> bool:
    if _names(module, "secagg.primitives"):
        return True
    parts = module.split(".")
    return len(parts) >= 3 and parts[:2] in (["secagg", "masking"], ["secagg", "paillier"])


def _tensorflow_allowed(item: Import) -> bool:
    if _under(item.path, "participant/training"):
        return True
    # A task may build its model with Keras, but only when called: importing it must stay cheap.
    return _under(item.path, "examples") and item.in_function


@dataclass(frozen=True)
class Rule:
    name: str
    applies: Callable[[Import], bool]
    forbidden: Callable[[Import], bool]


RULES = [
    Rule(
        "the fedsilo base imports neither the daemons nor examples",
        lambda item: _in_base(item.path),
        lambda item: _names(item.module, "coordinator", "participant", "examples"),
    ),
    Rule(
        "coordinator never imports participant",
        lambda item: _under(item.path, "coordinator"),
        lambda item: _names(item.module, "participant"),
    ),
    Rule(
        "participant never imports coordinator",
        lambda item: _under(item.path, "participant"),
        lambda item: _names(item.module, "coordinator"),
    ),
    Rule(
        "secagg imports nothing of this repository",
        lambda item: _under(item.path, "secagg"),
        lambda item: _names(item.module, "fedsilo", "coordinator", "participant", "examples"),
    ),
    Rule(
        "no service package imports grpc",
        lambda item: _in_service_package(item.path),
        lambda item: (
            item.module.split(".")[0].startswith("grpc") or item.module.endswith("_pb2_grpc")
        ),
    ),
    Rule(
        "tensorflow and keras only in participant/training (examples: inside functions)",
        lambda item: True,
        lambda item: _names(item.module, "tensorflow", "keras") and not _tensorflow_allowed(item),
    ),
    Rule(
        "outside secagg only the public secagg and secagg.paillier APIs are imported",
        lambda item: not _under(item.path, "secagg"),
        lambda item: _secagg_internal(item.module),
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.name)
def test_import_rule(rule: Rule) -> None:
    offenders = [
        str(item) for item in _all_imports() if rule.applies(item) and rule.forbidden(item)
    ]
    assert not offenders, f"{rule.name}; offending imports:\n" + "\n".join(offenders)


def test_the_scan_sees_every_package_and_nested_imports() -> None:
    """The rules would pass vacuously if the scan missed files or imports inside functions."""
    imports = _all_imports()
    scanned = {item.path.split("/")[0] for item in imports}
    assert set(FIRST_PARTY) <= scanned
    # fedsilo/cli/main.py imports the coordinator only when the command runs.
    assert any(
        item.path == "fedsilo/cli/main.py"
        and item.module == "coordinator.main"
        and item.in_function
        for item in imports
    )
    assert any(item.module == "secagg.paillier" for item in imports)
