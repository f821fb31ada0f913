"""Every export format of the digits model reproduces the Keras model on held-out data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsilo.tasks import LocalData, TrainingSettings, load_task
from participant.training.model_formats import FORMATS, convert_keras_file, savedmodel_predict
from participant.training.tflite import DEFAULT_BOUNDS, QUANTIZATIONS, tflite_predict

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LocalData]:
    """A digits model trained one epoch on organization 0's data, exported as .keras."""
    task = load_task("digits")
    data = task.load_data({"partition": 0, "num_partitions": 2})
    result = task.train(task.initial_weights(0), data, TrainingSettings(local_epochs=1))
    path = tmp_path_factory.mktemp("export") / "digits.keras"
    task.export_keras(result.weights, path)  # type: ignore[attr-defined]
    return path, data


def _keras_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(path, compile=False)  # written by the fixture above
    return np.asarray(model.predict(inputs, verbose=0), dtype=np.float64)


def test_the_keras_format_is_the_file_itself(trained: tuple[Path, LocalData]) -> None:
    path, _ = trained
    report = convert_keras_file(path, path, "keras")
    assert report.path == path and "keras" in FORMATS


def test_the_savedmodel_matches_keras(trained: tuple[Path, LocalData], tmp_path: Path) -> None:
    path, data = trained
    report = convert_keras_file(path, tmp_path / "saved", "savedmodel", data.x_test)
    print(report.description)
    outputs = savedmodel_predict(tmp_path / "saved", data.x_test)
    difference = np.max(np.abs(outputs - _keras_outputs(path, data.x_test)))
    print(f"savedmodel: max |difference| {difference:.3g} (bound 1e-5)")
    assert difference <= 1e-5


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_each_tflite_quantization_agrees_with_keras(
    trained: tuple[Path, LocalData], tmp_path: Path, quantization: str
) -> None:
    path, data = trained
    out = tmp_path / f"digits-{quantization}.tflite"
    report = convert_keras_file(
        path,
        out,
        "tflite",
        data.x_test,
        data.y_test,
        quantization=quantization,
        representative=data.x_train,
    )
    print(report.description)
    bounds = DEFAULT_BOUNDS[quantization]
    expected = _keras_outputs(path, data.x_test)
    actual = tflite_predict(out.read_bytes(), data.x_test).astype(np.float64)
    difference = float(np.max(np.abs(actual - expected)))
    agreement = float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1)))
    print(
        f"{quantization}: max |difference| {difference:.3g} (bound {bounds.max_abs_difference}), "
        f"agreement {agreement:.2%} (bound {bounds.min_agreement:.2%})"
    )
    assert difference <= bounds.max_abs_difference
    assert agreement >= bounds.min_agreement
