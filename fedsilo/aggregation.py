"""Weighted FedAvg arithmetic shared by the plain round engine and the in-process simulation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def fold_weighted(
    accumulator: Sequence[npt.NDArray[np.float64]],
    weights: Sequence[npt.NDArray[Any]],
    num_examples: int,
) -> None:
    """Add ``weights * num_examples`` to the float64 running sum, in place."""
    for acc, array in zip(accumulator, weights, strict=True):
        acc += array.astype(np.float64) * float(num_examples)


def weighted_mean(
    accumulator: Sequence[npt.NDArray[np.float64]], total_weight: int
) -> list[npt.NDArray[np.float32]]:
    """The running sum divided by the total number of examples, as the float32 model."""
    return [(acc / float(total_weight)).astype(np.float32) for acc in accumulator]
