"""Classify hand keypoints in a CSV file with a gestures ``.tflite`` model (LiteRT, no TensorFlow).

    python -m examples.gestures.classify gestures.tflite keypoints.csv

Each CSV row holds the 21 landmarks of one hand as MediaPipe reports them (63 numbers
``x0, y0, z0, ..., x20, y20, z20``), optionally preceded by a label (gesture name or 0-6); empty
fields or ``nan`` mark missing landmarks. The keypoints get the same preprocessing as in training
(wrist-relative, divided by the palm size). With labels, the accuracy is printed at the end.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from examples.gestures.data import GESTURES, NUM_CLASSES, normalise_keypoints, read_keypoints_csv

__all__ = ["classify_keypoints", "main"]


def classify_keypoints(model_path: Path, keypoints: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Gesture probabilities (n, 7) of raw keypoints (n, 21, 3) under the ``.tflite`` model."""
    from ai_edge_litert.interpreter import Interpreter

    inputs = normalise_keypoints(keypoints)
    interpreter = Interpreter(model_path=str(model_path))
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(input_detail["index"], list(inputs.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], inputs)
    interpreter.invoke()
    probabilities: npt.NDArray[np.float32] = np.array(
        interpreter.get_tensor(output_detail["index"])
    )
    if probabilities.shape != (inputs.shape[0], NUM_CLASSES):
        raise ValueError(
            f"{model_path}: output shape {probabilities.shape} is not (n, {NUM_CLASSES}); "
            "is this a gestures model?"
        )
    return probabilities


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", type=Path, help="a gestures .tflite model")
    parser.add_argument("keypoints", type=Path, help="CSV: [label,] 63 numbers per row")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    keypoints, labels = read_keypoints_csv(args.keypoints)
    probabilities = classify_keypoints(args.model, keypoints)
    predicted = probabilities.argmax(axis=1)
    if not args.quiet:
        for row, (cls, p) in enumerate(zip(predicted, probabilities.max(axis=1), strict=True)):
            truth = f"  (label {GESTURES[labels[row]]})" if labels is not None else ""
            print(f"{row + 1:>5}  {GESTURES[cls]:<10} {p:.3f}{truth}")
    counts = np.bincount(predicted, minlength=NUM_CLASSES)
    summary = ", ".join(f"{name} {count}" for name, count in zip(GESTURES, counts, strict=True))
    print(f"{predicted.shape[0]} hands: {summary}")
    if labels is not None:
        print(f"accuracy {float(np.mean(predicted == labels)):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
