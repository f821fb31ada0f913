"""A numpy-only task whose training result is known exactly, so FedAvg can be checked to the bit.

"Training" adds the organization's ``offset`` to every weight and reports ``examples`` training
examples; both come from the organization's own ``task_config``. One round of weighted FedAvg
therefore moves every weight by ``sum(n_i * offset_i) / sum(n_i)``, which differs from the
unweighted mean for the settings in ``ORG_SETTINGS``.

Participants load it as ``integration_shift_task:task``; tests/integration/conftest.py puts this
directory on ``sys.path`` because pytest imports test modules with ``--import-mode=importlib``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.tasks import EvalResult, LocalData, TrainingSettings, TrainResult

__all__ = ["ORG_SETTINGS", "TASK_NAME", "TASK_SPEC", "ShiftTask", "expected_fedavg", "task"]

TASK_NAME = "shift"
TASK_SPEC = {TASK_NAME: "integration_shift_task:task"}

# offset and number of examples per organization: weighted mean shift 0.4, unweighted 0.8333.
ORG_SETTINGS: dict[str, dict[str, float | int]] = {
    "org-a": {"offset": 1.0, "examples": 10},
    "org-b": {"offset": 2.0, "examples": 30},
    "org-c": {"offset": -0.5, "examples": 60},
}

Weights = list[npt.NDArray[Any]]


class ShiftTask:
    """Implements ``fedsilo.tasks.Task`` without any learning: the update is a known shift."""

    name = TASK_NAME

    def initial_weights(self, seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        return [
            rng.standard_normal((4, 3)).astype(np.float32),
            rng.standard_normal(3).astype(np.float32),
        ]

    def load_data(self, config: Mapping[str, Any]) -> LocalData:
        examples = int(config["examples"])
        offset = float(config["offset"])
        # The offset travels inside the (private) data so that train() needs nothing else.
        x_train = np.full((examples, 1), offset, dtype=np.float32)
        return LocalData(
            x_train=x_train,
            y_train=np.zeros(examples, dtype=np.int64),
            x_test=np.full((examples, 1), offset, dtype=np.float32),
            y_test=np.zeros(examples, dtype=np.int64),
        )

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        offset = np.float32(data.x_train[0, 0])
        shifted = [np.asarray(w, dtype=np.float32) + offset for w in weights]
        return TrainResult(weights=shifted, num_examples=data.num_train, loss=abs(float(offset)))

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        loss = float(np.mean([np.abs(w).mean() for w in weights]))
        return EvalResult(num_examples=data.num_test, loss=loss, accuracy=0.5)


task = ShiftTask()


def expected_fedavg(
    weights: Sequence[npt.NDArray[np.float32]], contributions: Sequence[tuple[float, int]]
) -> list[npt.NDArray[np.float32]]:
    """One round of weighted FedAvg over (offset, examples) contributions, as float32."""
    total = sum(n for _, n in contributions)
    result = []
    for w in weights:
        acc = np.zeros(w.shape, dtype=np.float64)
        for offset, n in contributions:
            acc += (w + np.float32(offset)).astype(np.float64) * float(n)
        result.append((acc / float(total)).astype(np.float32))
    return result
