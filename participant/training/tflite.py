"""Convert a task's Keras model to TF Lite (float, dynamic-range or int8 quantized) and check it.

A converted model is only trusted after it has been run: every conversion here runs the
``.tflite`` model with LiteRT (``ai-edge-litert``, the interpreter TensorFlow's own
``tf.lite.Interpreter`` is being replaced by) on held-out inputs next to the Keras model and
reports the largest difference between their output probabilities and how often their
predicted classes agree. A model with a non-finite output or outside the bounds is refused:
quantization or a converter bug can silently damage a model (NaN outputs have been seen).

- ``float``: weights and activations stay float32; outputs match Keras to float rounding.
- ``dynamic``: dynamic-range quantization (``tf.lite.Optimize.DEFAULT`` without a representative
  dataset): weights are stored as int8, activations stay float, the file is about 4 times
  smaller, and outputs move by the quantization error of the weights.
- ``int8``: full integer quantization of weights and activations, calibrated on a representative
  sample of the organization's own training data (the task's data loader); inputs and outputs
  stay float32 so callers feed the same arrays, and outputs move by the activation ranges'
  quantization error too.

Command line (the Keras file as ``fedsilo model export`` or ``fedsilo demo --export-model``
writes it; the held-out data is the organization's own, loaded by the task)::

    python -m participant.training.tflite MODEL.keras OUT.tflite --quantization dynamic \
        --task gestures --task-config '{"partition": 0, "num_partitions": 3}'
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from participant.training.quiet_import import import_keras

__all__ = [
    "DEFAULT_BOUNDS",
    "QUANTIZATIONS",
    "ParityBounds",
    "ParityReport",
    "TfliteParityError",
    "check_parity",
    "export_tflite",
    "keras_to_tflite",
    "tflite_predict",
]

QUANTIZATIONS = ("float", "dynamic", "int8")

# Calibration examples for int8: enough to see each activation's range, few enough to be quick.
REPRESENTATIVE_EXAMPLES = 200


@dataclass(frozen=True)
class ParityBounds:
    """What a converted model must meet on the held-out inputs to be written."""

    max_abs_difference: float
    min_agreement: float


# float: only float32 rounding separates the two. dynamic: int8 weights move probabilities by a
# few hundredths on the example models; the class decision must stay almost always the same.
DEFAULT_BOUNDS = {
    "float": ParityBounds(max_abs_difference=1e-4, min_agreement=0.999),
    "dynamic": ParityBounds(max_abs_difference=0.1, min_agreement=0.97),
    # int8 activations as well: probabilities move more, the decision must still mostly hold.
    "int8": ParityBounds(max_abs_difference=0.2, min_agreement=0.95),
}


@dataclass(frozen=True)
class ParityReport:
    """TF Lite against Keras on the same inputs."""

    quantization: str
    examples: int
    max_abs_difference: float
    agreement: float
    size_bytes: int
    keras_accuracy: float | None = None
    tflite_accuracy: float | None = None

    def describe(self) -> str:
        text = (
            f"{self.quantization} TF Lite model ({self.size_bytes} bytes) vs Keras on "
            f"{self.examples} held-out examples: max |difference| of probabilities "
            f"{self.max_abs_difference:.3g}, same predicted class {self.agreement:.2%}"
        )
        if self.keras_accuracy is not None and self.tflite_accuracy is not None:
            text += (
                f", accuracy Keras {self.keras_accuracy:.4f} / TF Lite {self.tflite_accuracy:.4f}"
            )
        return text


class TfliteParityError(ValueError):
    """The converted model does not reproduce the Keras model closely enough to be used."""


def keras_to_tflite(
    model: Any, quantization: str = "float", representative: npt.ArrayLike | None = None
) -> bytes:
    """The flatbuffer of ``model`` (a Keras model) converted with TF Lite's Keras converter.

    ``representative`` (inputs of the organization's own data) is required for ``int8``, whose
    activation ranges are calibrated on it.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if quantization == "int8" and representative is None:
        raise ValueError("int8 quantization needs a representative dataset")
    import_keras()  # quietly, before TensorFlow itself
    import tensorflow as tf  # lazily: see participant/training/__init__.py

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        sample = np.asarray(representative, dtype=np.float32)[:REPRESENTATIVE_EXAMPLES]
        if sample.shape[0] == 0:
            raise ValueError("int8 quantization needs at least one representative example")

        def calibration() -> Any:
            for row in sample:
                yield [row[np.newaxis, ...]]

        converter.representative_dataset = calibration
        # Integer kernels only (no float fallback); the float32 interface is kept.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # The converter prints the temporary SavedModel's signature to stdout, which would bury the
    # parity report of a command-line conversion.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # With a float32 interface there are no quantized inputs to give statistics for; the
        # converter still asks for them under integer-only kernels.
        warnings.filterwarnings(
            "ignore", "Statistics for quantized inputs were expected", UserWarning
        )
        content: bytes = converter.convert()
    return content


def tflite_predict(model_content: bytes, inputs: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Run a single-input, single-output ``.tflite`` model on a batch with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    batch = np.ascontiguousarray(inputs, dtype=np.float32)
    interpreter = Interpreter(model_content=model_content)
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    # Converted Keras models declare a batch of 1 with a dynamic batch dimension: resize to ours.
    interpreter.resize_tensor_input(input_detail["index"], list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], batch)
    interpreter.invoke()
    outputs: npt.NDArray[np.float32] = np.array(interpreter.get_tensor(output_detail["index"]))
    return outputs


def check_parity(
    model: Any,
    model_content: bytes,
    inputs: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    *,
    quantization: str = "float",
) -> ParityReport:
    """Compare the Keras model and its TF Lite conversion on the same inputs."""
    batch = np.asarray(inputs, dtype=np.float32)
    if batch.shape[0] == 0:
        raise ValueError("parity needs at least one held-out example")
    expected = np.asarray(model.predict(batch, batch_size=1024, verbose=0), dtype=np.float64)
    actual = tflite_predict(model_content, batch).astype(np.float64)
    if actual.shape != expected.shape:
        raise TfliteParityError(f"TF Lite output shape {actual.shape} != Keras {expected.shape}")
    if not np.isfinite(actual).all():
        raise TfliteParityError("the TF Lite model produced non-finite outputs")
    keras_classes, tflite_classes = expected.argmax(axis=1), actual.argmax(axis=1)
    keras_accuracy = tflite_accuracy = None
    if labels is not None:
        truth = np.asarray(labels)
        keras_accuracy = float(np.mean(keras_classes == truth))
        tflite_accuracy = float(np.mean(tflite_classes == truth))
    return ParityReport(
        quantization=quantization,
        examples=int(batch.shape[0]),
        max_abs_difference=float(np.max(np.abs(actual - expected))),
        agreement=float(np.mean(keras_classes == tflite_classes)),
        size_bytes=len(model_content),
        keras_accuracy=keras_accuracy,
        tflite_accuracy=tflite_accuracy,
    )


def export_tflite(
    model: Any,
    path: Path,
    inputs: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    *,
    quantization: str = "float",
    bounds: ParityBounds | None = None,
    representative: npt.ArrayLike | None = None,
) -> ParityReport:
    """Convert, check against Keras on ``inputs`` and only then write ``path`` (``.tflite``).

    ``representative`` calibrates ``int8``; it should be training data, not ``inputs``, so the
    check runs on examples the calibration has not seen.
    """
    if path.suffix != ".tflite":
        raise ValueError(f"{path}: a TF Lite model file must end in .tflite")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    limits = bounds or DEFAULT_BOUNDS[quantization]
    content = keras_to_tflite(model, quantization, representative)
    report = check_parity(model, content, inputs, labels, quantization=quantization)
    if not (
        report.max_abs_difference <= limits.max_abs_difference
        and report.agreement >= limits.min_agreement
    ):
        raise TfliteParityError(
            f"{report.describe()}; required max |difference| <= {limits.max_abs_difference} and "
            f"agreement >= {limits.min_agreement:.2%}: not written"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Convert a ``.keras`` model of a task to ``.tflite``, checked on the task's held-out data."""
    from fedsilo.tasks import load_task

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("keras_model", type=Path)
    parser.add_argument("out", type=Path, help="the .tflite file to write")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="float")
    parser.add_argument(
        "--task", required=True, help="installed task name, or 'package.module:attribute'"
    )
    parser.add_argument(
        "--task-config",
        default="{}",
        help="JSON task_config whose held-out split is the check data (the organization's own)",
    )
    args = parser.parse_args(argv)
    task = load_task(args.task, {args.task: args.task} if ":" in args.task else None)
    task_config = json.loads(args.task_config)
    if not isinstance(task_config, dict):
        parser.error("--task-config must be a JSON object")
    data = task.load_data(task_config)

    keras = import_keras()

    model = keras.saving.load_model(args.keras_model, compile=False)
    try:
        report = export_tflite(
            model,
            args.out,
            data.x_test,
            data.y_test,
            quantization=args.quantization,
            representative=data.x_train,
        )
    except TfliteParityError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(report.describe())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
