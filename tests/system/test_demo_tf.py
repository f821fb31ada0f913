"""The README's demo with the Keras digits task meets the accuracy bar, with and without secagg."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.system, pytest.mark.slow]


def _demo(tmp_path: Path, *options: str) -> dict[str, Any]:
    summary = tmp_path / f"summary-{len(list(tmp_path.glob('summary-*.json')))}.json"
    # In a session of its own: if it must be killed, its coordinator and daemons go with it.
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "fedsilo", "demo", "--summary-json", str(summary), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError("the demo did not end in 900 s: " + stdout[-4000:] + stderr[-4000:])
    assert process.returncode == 0, stdout[-4000:] + stderr[-4000:]
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default demo (secure aggregation), run once for both comparisons below."""
    return _demo(tmp_path_factory.mktemp("secure-demo"))


def test_default_secure_demo_reaches_central_accuracy_and_matches_plain_fedavg(
    tmp_path: Path, secure: dict[str, Any]
) -> None:
    assert secure["protection"] == "secagg"
    assert secure["participants"] == 3
    assert secure["final_accuracy"] >= 0.90
    assert abs(secure["central_accuracy"] - secure["final_accuracy"]) <= 0.03
    # The same job in the clear: secure aggregation changes the model only by its quantization
    # error (at most 2^-14 per coordinate and round), which moves held-out accuracy by at most
    # a few of the 360 test examples.
    plain = _demo(tmp_path, "--protection", "none")
    assert plain["protection"] == "none"
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01


def test_paillier_demo_matches_the_secure_demo(tmp_path: Path, secure: dict[str, Any]) -> None:
    # Paillier sums the same masked integers exactly, so the model equals secagg's.
    exported = tmp_path / "paillier.keras"
    paillier = _demo(tmp_path, "--protection", "paillier", "--export-model", str(exported))
    assert paillier["protection"] == "paillier"
    assert secure["protection"] == "secagg"
    assert abs(paillier["final_accuracy"] - secure["final_accuracy"]) <= 0.01
    assert paillier["final_accuracy"] >= 0.90
    # The model org-1 exported (decrypted there: the coordinator never had it) is the one the
    # organizations evaluated: its accuracy on their pooled held-out data is the job's.
    import keras

    from examples.digits.task import task

    weights = keras.saving.load_model(exported, compile=False).get_weights()
    configs = [{"partition": i, "num_partitions": 3, "seed": 0} for i in range(3)]
    results = [task.evaluate(weights, task.load_data(config)) for config in configs]
    correct = sum(r.accuracy * r.num_examples for r in results)
    accuracy = correct / sum(r.num_examples for r in results)
    assert abs(accuracy - paillier["final_accuracy"]) <= 1e-6
