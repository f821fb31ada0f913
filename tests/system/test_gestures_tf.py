"""The gestures example end to end: federated demo, TF Lite export, classifying keypoints with it.

The keypoints are SYNTHETIC (examples/gestures/hand_model.py); the organizations' test splits
hold people their training never saw.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.tf, pytest.mark.system, pytest.mark.slow]

ORGANIZATIONS = 3
ROUNDS = 5


def _run(*args: str) -> str:
    result = subprocess.run(  # noqa: S603
        [sys.executable, *args], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_gestures_train_federated_export_to_tflite_and_classify_keypoints(tmp_path: Path) -> None:
    summary_path, keras_path = tmp_path / "summary.json", tmp_path / "gestures.keras"
    _run(
        "-m", "fedsilo", "demo", "--task", "gestures", "--rounds", str(ROUNDS),
        "--participants", str(ORGANIZATIONS), "--summary-json", str(summary_path),
        "--export-model", str(keras_path),
    )  # fmt: skip
    summary = json.loads(summary_path.read_text())
    assert summary["protection"] == "secagg" and summary["rounds"] == ROUNDS
    # People held out: well above chance (1/7), below the unrealistic 100 %.
    assert 0.75 <= summary["final_accuracy"] < 0.99
    assert summary["central_accuracy"] - summary["final_accuracy"] <= 0.08

    import keras

    from examples.gestures.data import (
        parse_gesture_config,
        read_keypoints_csv,
        synthetic_organization,
        write_keypoints_csv,
    )
    from examples.gestures.task import task
    from participant.training.tflite import export_tflite, tflite_predict

    configs = [
        {"partition": i, "num_partitions": ORGANIZATIONS, "seed": 0} for i in range(ORGANIZATIONS)
    ]
    held_out = [task.load_data(config) for config in configs]
    x_test = np.concatenate([d.x_test for d in held_out])
    y_test = np.concatenate([d.y_test for d in held_out])
    model = keras.saving.load_model(keras_path, compile=False)

    reports = {}
    for quantization in ("float", "dynamic"):
        path = tmp_path / f"gestures-{quantization}.tflite"
        reports[quantization] = export_tflite(
            model, path, x_test, y_test, quantization=quantization
        )
        assert path.stat().st_size == reports[quantization].size_bytes
    float_report, dynamic_report = reports["float"], reports["dynamic"]
    # The exported model is the job's final model: same accuracy as the organizations measured.
    assert float_report.keras_accuracy == pytest.approx(summary["final_accuracy"], abs=1e-6)
    assert float_report.max_abs_difference <= 1e-4 and float_report.agreement == 1.0
    assert dynamic_report.agreement >= 0.97 and dynamic_report.size_bytes < float_report.size_bytes
    assert dynamic_report.tflite_accuracy == pytest.approx(float_report.tflite_accuracy, abs=0.02)

    # Raw keypoints of org-1's held-out people, as a tracker reports them, through the script.
    org = synthetic_organization(parse_gesture_config(configs[0]))
    csv_path = tmp_path / "held-out.csv"
    write_keypoints_csv(csv_path, org.test_keypoints, org.test_labels)
    output = _run(
        "-m", "examples.gestures.classify", str(tmp_path / "gestures-float.tflite"),
        str(csv_path), "--quiet",
    )  # fmt: skip
    printed = float(re.search(r"accuracy (\d\.\d+)", output).group(1))  # type: ignore[union-attr]
    float_model = (tmp_path / "gestures-float.tflite").read_bytes()
    predicted = tflite_predict(float_model, held_out[0].x_test).argmax(axis=1)
    expected = float(np.mean(predicted == held_out[0].y_test))
    # The CSV keeps 6 decimals: at most a borderline sample or two may flip.
    assert abs(printed - expected) <= 2 / held_out[0].num_test
    assert read_keypoints_csv(csv_path)[0].shape == (held_out[0].num_test, 21, 3)
