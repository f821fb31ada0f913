"""TF Lite export refuses bad requests before TensorFlow is loaded, and reports what it measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from participant.training.tflite import (
    DEFAULT_BOUNDS,
    QUANTIZATIONS,
    ParityReport,
    export_tflite,
    keras_to_tflite,
)


def test_every_quantization_has_bounds_and_float_is_the_strictest() -> None:
    assert set(DEFAULT_BOUNDS) == set(QUANTIZATIONS) == {"float", "dynamic", "int8"}
    for strict, loose in (("float", "dynamic"), ("dynamic", "int8")):
        assert DEFAULT_BOUNDS[strict].max_abs_difference < DEFAULT_BOUNDS[loose].max_abs_difference
        assert DEFAULT_BOUNDS[strict].min_agreement > DEFAULT_BOUNDS[loose].min_agreement


def test_bad_requests_are_refused_without_converting(tmp_path: Path) -> None:
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\.tflite"):
        export_tflite(object(), tmp_path / "model.keras", x)
    with pytest.raises(ValueError, match="quantization"):
        export_tflite(object(), tmp_path / "model.tflite", x, quantization="int4")
    with pytest.raises(ValueError, match="quantization"):
        keras_to_tflite(object(), "int4")
    with pytest.raises(ValueError, match="representative"):
        keras_to_tflite(object(), "int8")
    assert not list(tmp_path.iterdir())


def test_the_report_prints_difference_agreement_and_accuracies() -> None:
    report = ParityReport("dynamic", 420, 0.0468, 1.0, 23472, 0.75, 0.7476)
    text = report.describe()
    for expected in ("dynamic", "420", "0.0468", "100.00%", "23472", "0.7500", "0.7476"):
        assert expected in text
