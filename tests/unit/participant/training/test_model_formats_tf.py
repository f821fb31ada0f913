"""Every export format of the digits model reproduces the Keras model on held-out data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fedsilo.tasks import LocalData, TrainingSettings, load_task
from participant.training.model_formats import FORMATS, convert_keras_file, savedmodel_predict
from participant.training.tfjs import (
    TFJS_MAX_DIFFERENCE,
    export_tfjs,
    tfjs_environment,
    tfjs_predict,
)
from participant.training.tflite import DEFAULT_BOUNDS, QUANTIZATIONS, tflite_predict

pytestmark = pytest.mark.tf

REPO = Path(__file__).resolve().parents[4]


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


def _tfjs_python() -> Path | None:
    configured = os.environ.get("FEDSILO_TFJS_PYTHON")
    candidate = Path(configured) if configured else REPO / ".venv-tfjs" / "bin" / "python"
    return candidate if candidate.exists() else None


@pytest.fixture(scope="module")
def tfjs_python() -> Path:
    python = _tfjs_python()
    if python is None:
        pytest.skip(
            "the TF.js converter lives in its own environment (its dependencies conflict with "
            "TensorFlow 2.21): `make tfjs-venv` creates .venv-tfjs (make test does), or set "
            "FEDSILO_TFJS_PYTHON"
        )
    return python


def test_the_tfjs_graph_model_matches_keras_in_tfjs(
    trained: tuple[Path, LocalData], tmp_path: Path, tfjs_python: Path
) -> None:
    path, data = trained
    out = tmp_path / "digits-tfjs"
    report = convert_keras_file(path, out, "tfjs", data.x_test, tfjs_python=tfjs_python)
    print(report.description)
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["format"] == "graph-model"
    shards = [shard for group in manifest["weightsManifest"] for shard in group["paths"]]
    assert shards and all((out / shard).is_file() for shard in shards)
    # Run again, apart from the export's own check, in TF.js under Node.js.
    outputs = tfjs_predict(tfjs_environment(tfjs_python), out, data.x_test)
    difference = float(np.max(np.abs(outputs - _keras_outputs(path, data.x_test))))
    print(f"tfjs: max |difference| {difference:.3g} (bound {TFJS_MAX_DIFFERENCE})")
    assert outputs.shape == (len(data.x_test), 10)
    assert difference <= TFJS_MAX_DIFFERENCE


def test_a_tfjs_model_that_differs_from_keras_is_not_written(
    trained: tuple[Path, LocalData], tmp_path: Path, tfjs_python: Path
) -> None:
    path, data = trained
    convert_keras_file(path, tmp_path / "saved", "savedmodel", data.x_test)
    expected = _keras_outputs(path, data.x_test)
    expected[0, 0] += 10 * TFJS_MAX_DIFFERENCE  # what a wrong conversion would look like
    out = tmp_path / "digits-tfjs"
    environment = tfjs_environment(tfjs_python)
    with pytest.raises(ValueError, match="differs from Keras"):
        export_tfjs(environment, tmp_path / "saved", out, data.x_test, expected)
    assert not out.exists()
