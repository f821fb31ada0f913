"""``QuantizationSpec.check_in_range``: every honest aggregate passes, nothing else does."""

from __future__ import annotations

import numpy as np
import pytest

from secagg import InvalidInput
from secagg.masking import QuantizationSpec, WeightedMean

SPEC = QuantizationSpec(
    clip=0.5, levels_bits=10, modulus_bits=32, max_participants=8, max_weight=50
)


def honest_sum(updates: list[np.ndarray], weights: list[int]) -> WeightedMean:
    total = sum(
        (SPEC.quantize(u, w).astype(np.uint64) for u, w in zip(updates, weights, strict=True)),
        start=np.zeros(updates[0].size + 1, dtype=np.uint64),
    )
    return SPEC.dequantize((total % (1 << 32)).astype(np.uint32))


@pytest.mark.parametrize("seed", range(5))
def test_honest_aggregates_pass_even_at_the_edges_of_the_box(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, SPEC.max_participants + 1))
    # Far outside the box before clipping, and exactly on its edges: all must pass.
    updates = [rng.normal(0, 3, 64) for _ in range(count)]
    updates[0][:4] = [SPEC.clip, -SPEC.clip, 10.0, -10.0]
    weights = [int(w) for w in rng.integers(1, SPEC.max_weight + 1, count)]
    weights[0] = SPEC.max_weight
    SPEC.check_in_range(honest_sum(updates, weights), count)


def test_a_mean_outside_the_box_is_refused() -> None:
    aggregate = WeightedMean(np.array([0.0, SPEC.clip + 0.01]), total_weight=10)
    with pytest.raises(InvalidInput, match="outside the clip box"):
        SPEC.check_in_range(aggregate, 2)


@pytest.mark.parametrize("total_weight", [1, 2 * SPEC.max_weight + 1])
def test_a_weight_sum_no_two_inputs_can_make_is_refused(total_weight: int) -> None:
    with pytest.raises(InvalidInput, match="out-of-range weight"):
        SPEC.check_in_range(WeightedMean(np.zeros(3), total_weight), 2)


def test_nan_in_the_mean_is_refused() -> None:
    with pytest.raises(InvalidInput, match="outside the clip box"):
        SPEC.check_in_range(WeightedMean(np.array([np.nan]), total_weight=3), 3)
