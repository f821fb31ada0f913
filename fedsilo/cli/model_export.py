"""``fedsilo model export --format``: .keras, or a checked SavedModel, TF Lite or TF.js model."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedsilo.config import ConfigError
from fedsilo.tasks import Task

__all__ = ["FORMATS", "QUANTIZATIONS", "add_format_arguments", "export_in_format", "task_config_of"]

# Mirrors participant.training.model_formats and .tflite, which import TensorFlow when used.
FORMATS = ("keras", "savedmodel", "tflite", "tfjs")
QUANTIZATIONS = ("float", "dynamic", "int8")


def export_in_format(
    write_keras: Callable[[Path], Any],
    task: Task,
    task_config: Mapping[str, Any],
    out: Path,
    fmt: str,
    quantization: str = "float",
    tfjs_python: str | None = None,
) -> str:
    """Write the model at ``out`` in ``fmt``; what it measured against Keras, one line.

    ``write_keras`` writes the downloaded weights as a ``.keras`` file on this machine; only that
    local file is ever loaded as a model. The held-out check data (and the int8 calibration
    data) come from ``task``'s own loader with ``task_config``: this organization's data.
    """
    if fmt == "keras":
        write_keras(out)
        return f"Keras model {out}"
    from participant.training.model_formats import convert_keras_file

    if fmt == "tfjs":
        from participant.training.tfjs import tfjs_environment

        try:  # before downloading anything: a missing environment is the likeliest failure
            tfjs_environment(tfjs_python)
        except ValueError as exc:
            raise ConfigError(f"not written: {exc}") from None
    data = task.load_data(task_config)
    with tempfile.TemporaryDirectory(prefix="fedsilo-export-") as scratch:
        keras_path = Path(scratch) / "model.keras"
        write_keras(keras_path)
        try:
            report = convert_keras_file(
                keras_path,
                out,
                fmt,
                data.x_test,
                data.y_test,
                quantization=quantization,
                representative=data.x_train,
                tfjs_python=tfjs_python,
            )
        except ValueError as exc:
            raise ConfigError(f"not written: {exc}") from None
    return report.description


def task_config_of(text: str) -> dict[str, Any]:
    """A ``--task-config`` JSON object."""
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ConfigError("--task-config must be a JSON object")
    return value


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    """``--format``, ``--quantization`` and ``--task-config`` of ``fedsilo model export``."""
    parser.add_argument("--format", choices=FORMATS, default="keras", help="default: keras")
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="float",
        help="TF Lite only; int8 is calibrated on the task's training split (default: float)",
    )
    parser.add_argument(
        "--task-config",
        default="",
        help="JSON task_config whose held-out split checks a savedmodel, tflite or tfjs export "
        "(default: the job's; with --participant-config, the organization's)",
    )
    parser.add_argument(
        "--tfjs-python",
        metavar="PYTHON",
        help="tfjs only: the Python of the TF.js converter's own environment (default: "
        "$FEDSILO_TFJS_PYTHON, else .venv-tfjs/bin/python of the checkout; make tfjs-venv)",
    )
