"""The package surface: exports, error tree, purity (no gRPC/SQL/TF/numpy.random), docstrings."""

from __future__ import annotations

import ast
import importlib
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import secagg
import secagg.masking
from secagg import errors

PACKAGE = Path(secagg.__file__).resolve().parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = [
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in SOURCES
]

PUBLIC = {
    "BitBudgetExceeded",
    "ClientPhase",
    "CohortPolicy",
    "ConsistencySignature",
    "DecryptionFailed",
    "EncryptedShare",
    "InvalidInput",
    "InvalidShare",
    "InvalidSignature",
    "MaskedInput",
    "NotEnoughSurvivors",
    "ParticipantContext",
    "ProtocolViolation",
    "QuantizationSpec",
    "RevealedShare",
    "RoundConfig",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "ServerPhase",
    "SignedKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "WeightedMean",
    "WrongPhase",
    "check_bit_budget",
    "default_threshold",
    "secure_threshold",
}
PRIMITIVES = {
    "AgreementKeyPair",
    "RandomSource",
    "SigningKey",
    "VerifyingKey",
    "decode_fields",
    "decode_text",
    "decode_uint",
    "encode_fields",
    "encode_text",
    "encode_uint",
    "sign",
    "verify",
    "verifying_key",
}
"""The building blocks other packages need, re-exported so nothing imports secagg.primitives."""


def test_public_api_is_exactly_the_documented_names() -> None:
    assert set(secagg.__all__) == PUBLIC | PRIMITIVES
    assert set(secagg.masking.__all__) == PUBLIC - set(errors.__all__)
    for name in PUBLIC | PRIMITIVES:
        assert getattr(secagg, name) is not None


@pytest.mark.parametrize("module", MODULES)
def test_every_module_declares_its_exports(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in getattr(loaded, "__all__", ()):
        assert hasattr(loaded, name), f"{module}.{name}"


def test_error_tree_matches_the_package_docstring() -> None:
    parents = {
        "InvalidInput": "SecAggError",
        "BitBudgetExceeded": "InvalidInput",
        "WrongPhase": "SecAggError",
        "InvalidSignature": "SecAggError",
        "DecryptionFailed": "SecAggError",
        "InvalidShare": "SecAggError",
        "ProtocolViolation": "SecAggError",
        "NotEnoughSurvivors": "SecAggError",
    }
    assert set(parents) | {"SecAggError"} == set(errors.__all__)
    for child, parent in parents.items():
        assert getattr(errors, child).__bases__ == (getattr(errors, parent),)
        assert f"{child} " in secagg.__doc__
    assert errors.SecAggError.__bases__ == (Exception,)


def test_importing_secagg_loads_no_grpc_sql_tensorflow_or_numpy_random() -> None:
    code = (
        "import json, sys, secagg, secagg.masking, secagg.primitives.prg\n"
        "banned = ('grpc', 'sqlalchemy', 'tensorflow', 'keras', 'torch')\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in banned or m.startswith('numpy.random'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=60,
    )
    assert json.loads(result.stdout) == []


ALLOWED_IMPORTS = {
    "__future__",
    "collections",
    "concurrent",
    "cryptography",
    "dataclasses",
    "enum",
    "fractions",
    "functools",
    "gmpy2",
    "hashlib",
    "logging",
    "math",
    "multiprocessing",
    "numpy",
    "os",
    "phe",
    "secagg",
    "threading",
    "time",
    "typing",
}


def _violations(text: str) -> set[str]:
    """Forbidden names in code (strings and comments excluded) and imports outside the list."""
    code = "".join(
        token.string if token.type in (tokenize.NAME, tokenize.OP) else " "
        for token in tokenize.generate_tokens(io.StringIO(text).readline)
    )
    found = {
        needle
        for needle in ("numpy.random", "np.random", "pickle", "marshal", "eval(", "exec(")
        if needle in code
    }
    tree = ast.parse(text)
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    return found | (imported - ALLOWED_IMPORTS)


def test_the_purity_check_catches_violations() -> None:
    assert _violations("import numpy as np\nx = np.random.rand(3)\n") == {"np.random"}
    assert _violations("import grpc\nfrom sqlalchemy import orm\n") == {"grpc", "sqlalchemy"}
    assert _violations('"""numpy.random is forbidden"""  # np.random too\n') == set()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sources_use_no_forbidden_modules(path: Path) -> None:
    assert _violations(path.read_text()) == set()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_starts_with_a_one_line_summary(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert docstring, path
    summary = docstring.splitlines()[0]
    assert summary.endswith(".") and len(summary) <= 100
