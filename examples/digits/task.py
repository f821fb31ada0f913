"""The ``digits`` task: a small Keras MLP on non-IID partitions of scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy.typing as npt

from examples.digits.data import NUM_CLASSES, NUM_FEATURES, load_partition
from fedsilo.tasks import EvalResult, LocalData, TrainingSettings, TrainResult
from participant.training.keras_runtime import KerasTaskRuntime

__all__ = ["DigitsTask", "build_model", "default_rounds", "default_settings", "task"]

Weights = list[npt.NDArray[Any]]

# Tuned with `python -m examples.digits.simulate` (3 organizations, Dirichlet(0.5) label skew):
# short local training keeps the organizations' models from drifting apart between averages.
default_settings = TrainingSettings(local_epochs=2, batch_size=32, learning_rate=0.003, seed=0)
default_rounds = 8


def build_model(keras: ModuleType) -> Any:
    """The model architecture; receives the keras module so this file never imports it."""
    return keras.Sequential(
        [
            keras.Input(shape=(NUM_FEATURES,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="digits_mlp",
    )


class DigitsTask:
    """Implements ``fedsilo.tasks.Task``; the Keras work happens in ``KerasTaskRuntime``."""

    name = "digits"

    def __init__(self) -> None:
        self._runtime = KerasTaskRuntime(build_model)

    def initial_weights(self, seed: int) -> Weights:
        return self._runtime.initial_weights(seed)

    def load_data(self, config: Mapping[str, Any]) -> LocalData:
        return load_partition(config)

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        return self._runtime.train(weights, data, settings)

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        return self._runtime.evaluate(weights, data)


task = DigitsTask()
