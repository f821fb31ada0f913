"""A numpy task with a model as large as its ``task_config`` asks, for network-limit tests.

The model is one float32 vector of ``size`` weights; "training" adds the organization's
``offset`` to every weight, so the FedAvg of a round is known exactly. Participants load it as
``wide_task:task`` with this directory on their ``PYTHONPATH``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.tasks import EvalResult, LocalData, TrainingSettings, TrainResult

__all__ = ["EXAMPLES", "TASK_SPEC", "WideTask", "task"]

TASK_SPEC = {"wide": "wide_task:task"}
EXAMPLES = 10

Weights = list[npt.NDArray[Any]]


class WideTask:
    """Implements ``fedsilo.tasks.Task``: a model of ``size`` weights and a known update."""

    name = "wide"

    def initial_weights(self, seed: int) -> Weights:
        raise NotImplementedError("the test makes the initial weights (their size is its choice)")

    def load_data(self, config: Mapping[str, Any]) -> LocalData:
        offset = np.float32(config["offset"])
        x = np.full((EXAMPLES, 1), offset, dtype=np.float32)
        y = np.zeros(EXAMPLES, dtype=np.int64)
        return LocalData(x_train=x, y_train=y, x_test=x, y_test=y)

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        offset = np.float32(data.x_train[0, 0])
        moved = [np.asarray(w, dtype=np.float32) + offset for w in weights]
        return TrainResult(weights=moved, num_examples=data.num_train, loss=float(abs(offset)))

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        return EvalResult(num_examples=data.num_test, loss=0.0, accuracy=0.0)


task = WideTask()
