"""Convert a task's SavedModel to a TensorFlow.js graph model and check it under Node.js.

The ``tensorflowjs`` converter cannot be installed next to fedsilo: its declared dependencies
replace TensorFlow and bring packages that crash on import with TensorFlow 2.21. It lives in an
optional environment of its own, ``.venv-tfjs`` in the checkout (``make tfjs-venv``), and this
module never imports it: it runs ``tfjs_convert.py`` with that environment's Python on the
SavedModel fedsilo has just written and checked, and gets a graph model (``model.json`` and
weight shards) that ``tf.loadGraphModel`` reads in a browser or in Node.js.

A converted model is only trusted after it has been run: the graph model is loaded by TF.js
itself (``@tensorflow/tfjs-core`` with its pure-JavaScript CPU backend, which ``make tfjs-venv``
installs in ``.venv-tfjs/node``) under Node.js, run on held-out inputs, and its outputs are
compared with the Keras model's. It is written only when the largest difference is within
:data:`TFJS_MAX_DIFFERENCE`. (A Keras 3 model converted to a TF.js *layers* model does not load
in TF.js 4.22, whose layers reader expects Keras 2 configurations; the graph model does.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "TFJS_MAX_DIFFERENCE",
    "TfjsEnvironment",
    "convert_savedmodel",
    "export_tfjs",
    "tfjs_environment",
    "tfjs_predict",
]

# Both sides compute in float32; only kernel order and the JavaScript math library differ.
TFJS_MAX_DIFFERENCE = 1e-4

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parents[1]
_CONVERT_SCRIPT = _HERE / "tfjs_convert.py"
_PREDICT_SCRIPT = _HERE / "tfjs_predict.js"
_TIMEOUT_SECONDS = 600
_MAKE_HINT = "run `make tfjs-venv` in the fedsilo checkout"


@dataclass(frozen=True)
class TfjsEnvironment:
    """The converter's Python and the Node.js packages that run a converted model."""

    python: Path
    node: Path
    node_modules: Path


def tfjs_environment(python: str | Path | None = None) -> TfjsEnvironment:
    """The environment ``make tfjs-venv`` creates, or the one ``python`` (or the variable
    ``FEDSILO_TFJS_PYTHON``) names; ``ValueError`` with a one-line remedy when it is missing."""
    configured = python or os.environ.get("FEDSILO_TFJS_PYTHON")
    # absolute(), not resolve(): a virtual environment's python is a symlink to the system one.
    interpreter = Path(configured).absolute() if configured else _CHECKOUT / ".venv-tfjs/bin/python"
    if not interpreter.is_file():
        raise ValueError(
            f"the TF.js converter lives in its own environment and {interpreter} does not exist: "
            f"{_MAKE_HINT}, or point --tfjs-python (FEDSILO_TFJS_PYTHON) at its Python"
        )
    node_modules = interpreter.parent.parent / "node" / "node_modules"
    if not (node_modules / "@tensorflow" / "tfjs-core").is_dir():
        raise ValueError(
            f"TF.js for checking the converted model is not installed in {node_modules}: "
            f"{_MAKE_HINT}"
        )
    node = shutil.which("node")
    if node is None:
        raise ValueError(
            "node (Node.js 18 or later) is needed to check a TF.js model and is not on PATH"
        )
    return TfjsEnvironment(interpreter, Path(node), node_modules)


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    try:
        result = subprocess.run(  # noqa: S603  (fixed programs, arguments as a list, no shell)
            command,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_SECONDS,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"{what} took more than {_TIMEOUT_SECONDS} s") from None
    except OSError as exc:  # e.g. a --tfjs-python that is not an executable
        raise ValueError(f"{what} could not start: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ValueError(f"{what} failed: {lines[-1] if lines else f'exit {result.returncode}'}")


def convert_savedmodel(environment: TfjsEnvironment, savedmodel: Path, out: Path) -> None:
    """Convert the SavedModel directory ``savedmodel`` to a TF.js graph model directory ``out``."""
    # -I: neither PYTHONPATH nor this directory (whose module names could shadow packages) on
    # the path; TF's C++ log lines would bury the converter's own error message.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [str(environment.python), "-I", str(_CONVERT_SCRIPT)]
    arguments = ["--input_format=tf_saved_model", "--output_format=tfjs_graph_model"]
    _run([*command, *arguments, str(savedmodel), str(out)], env, "the TF.js converter")


def tfjs_predict(
    environment: TfjsEnvironment, model_dir: Path, inputs: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Run the graph model in ``model_dir`` on ``inputs`` with TF.js under Node.js."""
    batch = np.asarray(inputs, dtype=np.float32)
    env = {**os.environ, "NODE_PATH": str(environment.node_modules)}
    with tempfile.TemporaryDirectory(prefix="fedsilo-tfjs-") as scratch:
        inputs_path = Path(scratch) / "inputs.json"
        outputs_path = Path(scratch) / "outputs.json"
        # float32 -> Python float -> JSON -> JavaScript number -> float32 is exact.
        inputs_path.write_text(json.dumps(batch.tolist()))
        command = [str(environment.node), str(_PREDICT_SCRIPT), str(model_dir)]
        _run([*command, str(inputs_path), str(outputs_path)], env, "running the model in TF.js")
        return np.asarray(json.loads(outputs_path.read_text()), dtype=np.float64)


def export_tfjs(
    environment: TfjsEnvironment,
    savedmodel: Path,
    out: Path,
    inputs: npt.ArrayLike,
    expected: npt.ArrayLike,
) -> str:
    """Convert ``savedmodel``, check it against ``expected`` (Keras's outputs for ``inputs``) and
    write the graph model to the new directory ``out``; what was measured, one line."""
    if out.exists():
        raise ValueError(f"{out} exists; a TF.js model is written to a new directory")
    want = np.asarray(expected, dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="fedsilo-tfjs-") as scratch:
        converted = Path(scratch) / "tfjs"
        convert_savedmodel(environment, savedmodel, converted)
        got = tfjs_predict(environment, converted, inputs)
        if got.shape != want.shape:
            raise ValueError(f"TF.js outputs have shape {got.shape}, Keras's {want.shape}")
        difference = float(np.max(np.abs(got - want)))
        if not difference <= TFJS_MAX_DIFFERENCE:  # also refuses NaN
            raise ValueError(
                f"the TF.js model differs from Keras by {difference:.3g} "
                f"(> {TFJS_MAX_DIFFERENCE}) on {want.shape[0]} held-out examples"
            )
        shutil.copytree(converted, out)
    return (
        f"TF.js graph model (Node.js, CPU backend) vs Keras on {want.shape[0]} held-out examples: "
        f"max |difference| {difference:.3g} (bound {TFJS_MAX_DIFFERENCE})"
    )
