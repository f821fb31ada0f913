"""Centrally trained baseline: the accuracy federated training is measured against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from examples.digits.data import concat_local_data
from fedsilo.tasks import EvalResult, Task, TrainingSettings

__all__ = ["central_baseline"]


def central_baseline(
    task: Task,
    configs: Sequence[Mapping[str, Any]],
    settings: TrainingSettings,
    rounds: int,
) -> EvalResult:
    """Train on the organizations' pooled training data and evaluate on their pooled test data.

    The model sees ``settings.local_epochs * rounds`` epochs, as many passes over every example
    as the federated run makes, starting from ``task.initial_weights(settings.seed)``. Pooling
    is exactly what federation avoids: this exists only to measure what federation costs.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    pooled = concat_local_data([task.load_data(config) for config in configs])
    weights = task.initial_weights(settings.seed)
    result = task.train(
        weights, pooled, replace(settings, local_epochs=settings.local_epochs * rounds)
    )
    return task.evaluate(result.weights, pooled)
