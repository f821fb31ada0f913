"""The ``digits-linear`` task: softmax regression on the digits partitions, in plain numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from examples.digits.data import NUM_CLASSES, NUM_FEATURES, load_partition
from fedsilo.tasks import (
    EvalResult,
    LocalData,
    TrainingSettings,
    TrainResult,
    as_float32,
)
from participant.training.validation import check_settings, check_weights

__all__ = ["SoftmaxRegressionTask", "default_rounds", "default_settings", "task"]

Weights = list[npt.NDArray[Any]]
_SHAPES = [(NUM_FEATURES, NUM_CLASSES), (NUM_CLASSES,)]

# Tuned with `python -m examples.digits.simulate --task digits-linear`.
default_settings = TrainingSettings(local_epochs=5, batch_size=32, learning_rate=0.5, seed=0)
default_rounds = 10


def _log_softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Shift by the row maximum so exp() cannot overflow.
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def _cross_entropy(
    log_probs: npt.NDArray[np.float64], labels: npt.NDArray[np.integer[Any]]
) -> float:
    return float(-log_probs[np.arange(labels.shape[0]), labels].mean())


class SoftmaxRegressionTask:
    """Implements ``fedsilo.tasks.Task`` with mini-batch gradient descent, no framework."""

    name = "digits-linear"

    def initial_weights(self, seed: int) -> Weights:
        rng = np.random.default_rng(seed)
        # Small random weights rather than zeros, so that the seed visibly matters.
        kernel = rng.normal(0.0, 0.01, size=_SHAPES[0])
        return as_float32([kernel, np.zeros(_SHAPES[1])])

    def load_data(self, config: Mapping[str, Any]) -> LocalData:
        return load_partition(config)

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        check_settings(settings)
        check_weights(weights, _SHAPES)
        if data.num_train == 0:
            raise ValueError("cannot train on an empty training split")
        try:
            # Overflow means divergence: fail loudly instead of returning Inf/NaN weights that
            # would poison the aggregate of every organization.
            with np.errstate(over="raise", invalid="raise"):
                new_weights, loss = self._fit(weights, data, settings)
        except FloatingPointError as exc:
            raise FloatingPointError(
                f"local training diverged ({exc}); lower the learning rate"
            ) from exc
        return TrainResult(weights=new_weights, num_examples=data.num_train, loss=loss)

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        check_weights(weights, _SHAPES)
        if data.num_test == 0:
            raise ValueError("cannot evaluate on an empty test split")
        x = np.asarray(data.x_test, dtype=np.float64)
        y = np.asarray(data.y_test, dtype=np.int64)
        log_probs = _log_softmax(x @ np.asarray(weights[0], np.float64) + weights[1])
        accuracy = float((log_probs.argmax(axis=1) == y).mean())
        return EvalResult(
            num_examples=data.num_test, loss=_cross_entropy(log_probs, y), accuracy=accuracy
        )

    def _fit(
        self, weights: Weights, data: LocalData, settings: TrainingSettings
    ) -> tuple[Weights, float]:
        # float64 inside, float32 out: the wire format is float32, the arithmetic need not be.
        kernel = np.array(weights[0], dtype=np.float64)
        bias = np.array(weights[1], dtype=np.float64)
        x = np.asarray(data.x_train, dtype=np.float64)
        y = np.asarray(data.y_train, dtype=np.int64)
        rng = np.random.default_rng(settings.seed)
        epoch_loss = 0.0
        for _ in range(settings.local_epochs):
            order = rng.permutation(data.num_train)
            batch_losses = []
            for start in range(0, data.num_train, settings.batch_size):
                batch = order[start : start + settings.batch_size]
                xb, yb = x[batch], y[batch]
                log_probs = _log_softmax(xb @ kernel + bias)
                batch_losses.append(_cross_entropy(log_probs, yb))
                # d(mean CE)/d(logits) = softmax - one_hot, averaged over the batch.
                grad_logits = np.exp(log_probs)
                grad_logits[np.arange(yb.shape[0]), yb] -= 1.0
                grad_logits /= yb.shape[0]
                kernel -= settings.learning_rate * (xb.T @ grad_logits)
                bias -= settings.learning_rate * grad_logits.sum(axis=0)
            # Like Keras' history: the mean loss over the last epoch's batches.
            epoch_loss = float(np.mean(batch_losses))
        new_weights = as_float32([kernel, bias])
        if not np.isfinite(epoch_loss) or not all(np.isfinite(w).all() for w in new_weights):
            raise FloatingPointError(f"non-finite loss or weights (loss={epoch_loss})")
        return new_weights, epoch_loss


task = SoftmaxRegressionTask()
