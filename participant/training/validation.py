"""Checks every training runtime applies to its inputs before touching a model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.tasks import TrainingSettings

__all__ = ["check_settings", "check_weights"]


def check_settings(settings: TrainingSettings) -> None:
    """Raise ``ValueError`` naming the first hyper-parameter that cannot be trained with."""
    if settings.local_epochs < 1:
        raise ValueError(f"local_epochs must be >= 1, got {settings.local_epochs}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {settings.batch_size}")
    if not (math.isfinite(settings.learning_rate) and settings.learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {settings.learning_rate}")
    if settings.seed < 0:
        raise ValueError(f"seed must be >= 0, got {settings.seed}")
    if not (math.isfinite(settings.proximal_mu) and settings.proximal_mu >= 0):
        raise ValueError(f"proximal_mu must be a number >= 0, got {settings.proximal_mu}")


def check_weights(
    weights: Sequence[npt.NDArray[Any]], expected_shapes: Sequence[tuple[int, ...]]
) -> None:
    """Raise ``ValueError`` unless ``weights`` match the model's arrays and are all finite."""
    if len(weights) != len(expected_shapes):
        raise ValueError(f"expected {len(expected_shapes)} weight arrays, got {len(weights)}")
    for i, (w, shape) in enumerate(zip(weights, expected_shapes, strict=True)):
        if tuple(np.shape(w)) != tuple(shape):
            raise ValueError(f"weight {i}: expected shape {tuple(shape)}, got {np.shape(w)}")
        # Received weights are the aggregate of other parties' updates: one NaN would silently
        # poison every later round, so refuse it at the door.
        if not np.isfinite(w).all():
            raise ValueError(f"weight {i} contains NaN or Inf")
