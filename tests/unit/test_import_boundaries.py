"""Only participant/training imports TensorFlow: the coordinator and the CLI never do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

MODULES = [
    "coordinator.main",
    "coordinator.transport.server",
    "fedsilo.cli",
    "fedsilo.demo",
    "participant.main",
    "examples.digits.task",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_does_not_import_tensorflow(module: str) -> None:
    probe = (
        f"import sys, json, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras'))))"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], loaded
