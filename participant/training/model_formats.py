"""Turn an exported ``.keras`` file into a SavedModel, a TF Lite or a TF.js model, each checked."""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from participant.training.quiet_import import import_keras
from participant.training.tfjs import TfjsEnvironment, export_tfjs, tfjs_environment
from participant.training.tflite import export_tflite

__all__ = [
    "FORMATS",
    "FormatReport",
    "convert_keras_file",
    "savedmodel_predict",
]

FORMATS = ("keras", "savedmodel", "tflite", "tfjs")

# A SavedModel runs the same float32 graph as Keras; only kernel order can differ.
SAVEDMODEL_MAX_DIFFERENCE = 1e-5


@dataclass(frozen=True)
class FormatReport:
    """What a conversion wrote and how closely it reproduces the Keras model."""

    format: str
    path: Path
    description: str


def savedmodel_predict(path: Path, inputs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Run the ``serve`` endpoint of a SavedModel written by :func:`convert_keras_file`."""
    import_keras()  # quietly, before TensorFlow itself
    import tensorflow as tf  # lazily: see participant/training/__init__.py

    loaded = tf.saved_model.load(str(path))  # a directory this process has just written
    outputs = loaded.serve(tf.constant(np.asarray(inputs, dtype=np.float32)))
    return np.asarray(outputs, dtype=np.float64)


def convert_keras_file(
    keras_path: Path,
    out: Path,
    fmt: str,
    inputs: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    *,
    quantization: str = "float",
    representative: npt.ArrayLike | None = None,
    tfjs_python: str | Path | None = None,
) -> FormatReport:
    """Convert ``keras_path`` to ``fmt`` at ``out``, checked against Keras on ``inputs``.

    ``keras_path`` must be a file this machine has just written from a downloaded (or locally
    decrypted) list of weights: Keras model files can carry code, so nothing received over the
    network is ever loaded as a model, only as weight arrays. ``tfjs_python`` is the Python of the
    TF.js converter's environment (default: see :func:`participant.training.tfjs.tfjs_environment`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "keras":
        return FormatReport(fmt, keras_path, f"Keras model {keras_path}")
    if inputs is None:
        raise ValueError(f"a {fmt} export is checked on held-out inputs; none were given")
    if fmt == "tfjs":
        # Before any TensorFlow work: a missing environment is the likeliest failure.
        environment = tfjs_environment(tfjs_python)
    keras = import_keras()

    model = keras.saving.load_model(keras_path, compile=False)
    if fmt == "tflite":
        report = export_tflite(
            model,
            out,
            inputs,
            labels,
            quantization=quantization,
            representative=representative,
        )
        return FormatReport(fmt, out, report.describe())
    if fmt == "tfjs":
        return _export_tfjs(model, out, inputs, environment)
    return _export_savedmodel(model, out, inputs)


def _export_tfjs(
    model: Any, out: Path, inputs: npt.ArrayLike, environment: TfjsEnvironment
) -> FormatReport:
    if out.exists():
        raise ValueError(f"{out} exists; a TF.js model is written to a new directory")
    batch = np.asarray(inputs, dtype=np.float32)
    expected = np.asarray(model.predict(batch, batch_size=1024, verbose=0), dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="fedsilo-export-") as scratch:
        # The converter reads the SavedModel this process writes and checks, not the .keras
        # file: its Keras 3 reader makes layers models TF.js cannot load (see tfjs.py).
        savedmodel = Path(scratch) / "savedmodel"
        _export_savedmodel(model, savedmodel, batch)
        description = export_tfjs(environment, savedmodel, out, batch, expected)
    return FormatReport("tfjs", out, description)


def _export_savedmodel(model: Any, out: Path, inputs: npt.ArrayLike) -> FormatReport:
    if out.exists():
        raise ValueError(f"{out} exists; a SavedModel is written to a new directory")
    batch = np.asarray(inputs, dtype=np.float32)
    # Keras prints the exported endpoints to stdout, which would bury the report.
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(out), format="tf_saved_model")
    expected = np.asarray(model.predict(batch, batch_size=1024, verbose=0), dtype=np.float64)
    difference = float(np.max(np.abs(savedmodel_predict(out, batch) - expected)))
    if not difference <= SAVEDMODEL_MAX_DIFFERENCE:
        raise ValueError(
            f"the SavedModel differs from Keras by {difference:.3g} "
            f"(> {SAVEDMODEL_MAX_DIFFERENCE}) on {batch.shape[0]} held-out examples"
        )
    return FormatReport(
        "savedmodel",
        out,
        f"SavedModel vs Keras on {batch.shape[0]} held-out examples: max |difference| "
        f"{difference:.3g}",
    )
