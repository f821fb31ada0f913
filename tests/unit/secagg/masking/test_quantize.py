"""Quantization: the documented mapping, two's complement sums, the error bound, the bit budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import BitBudgetExceeded, InvalidInput, QuantizationSpec, check_bit_budget


def _spec(**changes: object) -> QuantizationSpec:
    fields: dict[str, object] = {
        "clip": 1.0,
        "levels_bits": 8,
        "modulus_bits": 32,
        "max_participants": 10,
        "max_weight": 1000,
    }
    fields.update(changes)
    return QuantizationSpec(**fields)  # type: ignore[arg-type]


def test_mapping_clip_scale_round_weight_and_twos_complement() -> None:
    spec = _spec(levels_bits=2)  # 4 levels per unit
    update = np.array([0.3, -0.3, 5.0, -5.0, 0.125, 0.375], dtype=np.float32)
    encoded = spec.quantize(update, weight=3)
    # rint(x * 4): 1.2 -> 1, -1.2 -> -1, clip 1 -> 4, -4, 0.5 -> 0 (ties to even), 1.5 -> 2.
    levels = np.array([1, -1, 4, -4, 0, 2]) * 3
    assert encoded.dtype == np.uint32
    assert encoded.tolist() == [int(v) % 2**32 for v in levels] + [3]
    assert spec.encoded_length(update.size) == encoded.size


def test_k64_uses_uint64() -> None:
    encoded = _spec(modulus_bits=64).quantize(np.array([-1.0]), weight=2)
    assert encoded.dtype == np.uint64
    assert encoded.tolist() == [2**64 - 2 * 256, 2]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 10),
    dim=st.integers(1, 20),
    q=st.integers(0, 20),
    k=st.sampled_from([32, 64]),
    clip=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_sum_decodes_to_the_weighted_mean_within_the_bound(
    data: st.DataObject, n: int, dim: int, q: int, k: int, clip: float
) -> None:
    w_max = 50
    if n * w_max * round(clip * 2**q) >= 2 ** (k - 1) or clip * 2**q < 1:
        return
    spec = _spec(levels_bits=q, modulus_bits=k, max_participants=n, max_weight=w_max, clip=clip)
    floats = st.floats(-4.0, 4.0, allow_nan=False, width=32)
    updates = [
        np.array(data.draw(st.lists(floats, min_size=dim, max_size=dim)), dtype=np.float32)
        for _ in range(n)
    ]
    weights = data.draw(st.lists(st.integers(1, w_max), min_size=n, max_size=n))
    total = np.zeros(dim + 1, dtype=spec.dtype)
    for update, weight in zip(updates, weights, strict=True):
        total += spec.quantize(update, weight)
    decoded = spec.dequantize(total)
    clipped = [np.clip(u.astype(np.float64), -clip, clip) for u in updates]
    expected = sum(w * c for w, c in zip(weights, clipped, strict=True)) / sum(weights)
    assert decoded.total_weight == sum(weights)
    assert spec.mean_error_bound == 2.0 ** -(q + 1)
    error = np.max(np.abs(decoded.mean - expected))
    assert error <= spec.mean_error_bound + 1e-12 * clip


def test_the_bound_is_attained() -> None:
    # 0.5 / 2^q is exactly half a level: the documented bound is tight, not loose.
    spec = _spec(levels_bits=0, clip=4.0)
    decoded = spec.dequantize(spec.quantize(np.array([1.5]), 1))
    assert abs(decoded.mean[0] - 1.5) == spec.mean_error_bound


def test_bit_budget_boundary_is_exact() -> None:
    # n * w * rint(c * 2^q) must be <= 2^31 - 1 for k = 32.
    check_bit_budget(n_max=1, w_max=2**31 - 1, clip=1.0, q=0, k=32)
    with pytest.raises(BitBudgetExceeded) as error:
        check_bit_budget(n_max=2, w_max=2**30, clip=1.0, q=0, k=32)
    message = str(error.value)
    assert "2 * 1073741824 * 1 = 2147483648 > 2^31 - 1 = 2147483647" in message
    assert "k=64" in message


def test_weights_fit_whenever_the_coordinates_do() -> None:
    # rint(c * 2^q) >= 1, so n * w_max <= n * w_max * M: the weight coordinate never overflows.
    spec = _spec(clip=0.5, levels_bits=1, max_participants=2**20, max_weight=2**10)
    # The sum of 2^20 identical encodings is one encoding times 2^20 (mod 2^32).
    total = spec.quantize(np.array([0.5]), 2**10) * np.uint32(2**20)
    decoded = spec.dequantize(total)
    assert decoded.total_weight == 2**30 and decoded.mean.tolist() == [0.5]


def test_budget_failure_at_construction() -> None:
    with pytest.raises(BitBudgetExceeded, match="bit budget exceeded"):
        _spec(levels_bits=24, max_weight=10_000)
    _spec(levels_bits=24, max_weight=10_000, modulus_bits=64)


def test_overflowing_scale_is_a_budget_error() -> None:
    with pytest.raises(BitBudgetExceeded, match="overflows"):
        check_bit_budget(1, 1, 1e300, 62, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1, 1.0, 8, 32), "n_max"),
        ((1, True, 1.0, 8, 32), "w_max"),
        ((1, 1, 0.0, 8, 32), "clip"),
        ((1, 1, math.inf, 8, 32), "clip"),
        ((1, 1, 1.0, 63, 64), "q must be"),
        ((1, 1, 1.0, 8, 16), "k must be"),
        ((1, 1, 0.1, 2, 32), "rounds to 0"),
    ],
)
def test_bad_parameters(args: tuple[int, int, float, int, int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_bit_budget(*args)


@pytest.mark.parametrize(
    ("update", "weight", "message"),
    [
        (np.array([[1.0]]), 1, "1-D"),
        ([1.0], 1, "1-D"),
        (np.array([1], dtype=np.int64), 1, "floating point"),
        (np.array([np.nan]), 1, "NaN or Inf"),
        (np.array([np.inf]), 1, "NaN or Inf"),
        (np.array([1.0]), 0, "weight must be in 1..1000"),
        (np.array([1.0]), 1001, "weight must be in 1..1000"),
        (np.array([1.0]), 1.5, "must be an integer"),
        (np.array([1.0]), True, "must be an integer"),
    ],
)
def test_bad_updates(update: object, weight: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _spec().quantize(update, weight)  # type: ignore[arg-type]


def test_numpy_integer_weight_is_accepted() -> None:
    assert _spec().quantize(np.array([0.0]), np.int64(7))[-1] == 7


@pytest.mark.parametrize(
    ("total", "message"),
    [
        (np.zeros(1, dtype=np.uint32), "at least two words"),
        (np.zeros(3, dtype=np.uint64), "must be uint32"),
        (np.zeros(3, dtype=np.uint32), "not positive"),
    ],
)
def test_bad_aggregates(total: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _spec().dequantize(total)
