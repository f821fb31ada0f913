"""The README's demo with the Keras digits task meets the accuracy bar."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.system, pytest.mark.slow]


def test_default_demo_reaches_central_accuracy(tmp_path: Path) -> None:
    summary = tmp_path / "out.json"
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "fedsilo", "demo", "--summary-json", str(summary)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    data = json.loads(summary.read_text())
    assert data["participants"] == 3
    assert data["final_accuracy"] >= 0.90
    assert abs(data["central_accuracy"] - data["final_accuracy"]) <= 0.03
