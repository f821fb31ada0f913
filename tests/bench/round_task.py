"""The ``bench-round`` task: one float32 tensor, training and evaluation that return at once.

``bench_round.py`` runs it in real participant daemons (``tasks: {"bench-round":
"round_task:task"}`` with this directory on ``PYTHONPATH``) so that a round's time is the
protocol's, not training's. The daemons' ``task`` has ``parameters_from_env()`` parameters (the
benchmark sets ``PARAMETERS_ENV`` for them); the benchmark builds its own ``InstantTask`` of the
same size.

Organization ``i`` (``task_config: {"org_index": i}``) trains on ``100 + i`` examples and moves
every weight by ``(i + 1) * PATTERN``, a fixed vector of magnitude at most ``PATTERN_SCALE``, so
the FedAvg of a round is known in advance (``expected_weights``) and the benchmark can check the
model it measured.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.tasks import EvalResult, LocalData, TrainingSettings, TrainResult

__all__ = [
    "DEFAULT_PARAMETERS",
    "NAME",
    "PARAMETERS_ENV",
    "PATTERN_SCALE",
    "ROW",
    "InstantTask",
    "examples_of",
    "expected_weights",
    "parameters_from_env",
    "shape_of",
    "task",
]

NAME = "bench-round"
PARAMETERS_ENV = "FEDSILO_BENCH_PARAMETERS"
"""The model size of the module's ``task`` (a multiple of ``ROW``), read once at import."""
DEFAULT_PARAMETERS = 1_000_000
ROW = 1000
PATTERN_SCALE = 0.01
"""Largest per-coordinate change of one organization's unit delta (well inside secagg's clip)."""

_BASE_EXAMPLES = 100
_TEST_EXAMPLES = 10

Weights = list[npt.NDArray[Any]]


def shape_of(parameters: int) -> tuple[int, int]:
    """The (rows, ``ROW``) shape of a model of ``parameters`` float32 parameters."""
    if parameters <= 0 or parameters % ROW:
        raise ValueError(f"the parameter count must be a positive multiple of {ROW}")
    return parameters // ROW, ROW


def parameters_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """The model size ``PARAMETERS_ENV`` asks for (``DEFAULT_PARAMETERS`` when unset)."""
    value = environ.get(PARAMETERS_ENV, "")
    try:
        return int(value) if value else DEFAULT_PARAMETERS
    except ValueError:
        raise ValueError(f"{PARAMETERS_ENV} must be an integer, not {value!r}") from None


@functools.cache
def _pattern(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    # Deterministic and varied (not a constant) so a mis-summed coordinate shows up in the check.
    values = np.sin(np.arange(shape[0] * shape[1], dtype=np.float64)) * PATTERN_SCALE
    pattern = values.astype(np.float32).reshape(shape)
    pattern.setflags(write=False)
    return pattern


def examples_of(org_index: int) -> int:
    """The number of training examples organization ``org_index`` reports (its FedAvg weight)."""
    return _BASE_EXAMPLES + org_index


def expected_weights(
    initial: npt.NDArray[np.float32], org_indices: list[int], rounds: int
) -> npt.NDArray[np.float64]:
    """The global model after ``rounds`` FedAvg rounds of every organization in ``org_indices``,
    from the ``initial`` tensor (of an ``InstantTask`` of the same size)."""
    weights = np.array([examples_of(i) for i in org_indices], dtype=np.float64)
    factors = np.array([i + 1 for i in org_indices], dtype=np.float64)
    mean_factor = float((weights * factors).sum() / weights.sum())
    expected: npt.NDArray[np.float64] = initial.astype(np.float64) + rounds * mean_factor * (
        _pattern(initial.shape).astype(np.float64)
    )
    return expected


class InstantTask:
    """Implements ``fedsilo.tasks.Task`` for a model of ``parameters`` float32 parameters;
    ``train`` is one vector addition."""

    name = NAME

    def __init__(self, parameters: int = DEFAULT_PARAMETERS) -> None:
        self.shape = shape_of(parameters)
        self._deltas: dict[int, npt.NDArray[np.float32]] = {}

    def initial_weights(self, seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        return [rng.uniform(-0.5, 0.5, size=self.shape).astype(np.float32)]

    def load_data(self, config: Mapping[str, Any]) -> LocalData:
        org_index = int(config.get("org_index", 0))
        if org_index < 0:
            raise ValueError("org_index must be >= 0")
        # The delta is computed here, once per job, so that train() stays a single addition.
        unit = _pattern(self.shape)
        self._deltas[org_index] = (unit * np.float32(org_index + 1)).astype(np.float32)
        # Only the row counts matter: num_train is the FedAvg weight and names the organization.
        return LocalData(
            x_train=np.zeros((examples_of(org_index), 1), dtype=np.float32),
            y_train=np.zeros(examples_of(org_index), dtype=np.int64),
            x_test=np.zeros((_TEST_EXAMPLES, 1), dtype=np.float32),
            y_test=np.zeros(_TEST_EXAMPLES, dtype=np.int64),
        )

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        org_index = data.num_train - _BASE_EXAMPLES
        if len(weights) != 1 or weights[0].shape != self.shape:
            raise ValueError(f"expected one tensor of shape {self.shape}")
        if org_index not in self._deltas:
            raise ValueError("load_data was not called for this organization")
        trained = np.asarray(weights[0], dtype=np.float32) + self._deltas[org_index]
        return TrainResult(weights=[trained], num_examples=data.num_train, loss=0.1)

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        return EvalResult(num_examples=data.num_test, loss=0.1, accuracy=1.0)


task = InstantTask(parameters_from_env())
