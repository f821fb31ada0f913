"""Fixed-point encoding of weighted updates into Z_R, R = 2^k, and the bit budget.

The requirements it meets are in docs/requirements.md#encoding.

Encoding of a participant's update ``x`` (floats) with weight ``w`` (its number of examples,
an integer in ``1..w_max``), clip ``c`` and ``2^q`` levels per unit::

    level_i = rint(clip(x_i, -c, c) * 2^q)        # float64, exact: 2^q only shifts the exponent;
                                                  # rint rounds half to even
    v_i     = w * level_i                         # exact int64
    encoded = [v_0, ..., v_{d-1}, w] mod 2^k      # two's complement in uint32/uint64

Sign handling is two's complement: a negative ``v`` becomes ``2^k + v``. The modular sum over the
participants is decoded by reading each word as a signed k-bit integer, which is the true
integer sum as long as ``|sum| <= 2^(k-1) - 1``. With ``M = rint(c * 2^q)`` (the largest
``|level|``), :func:`check_bit_budget` guarantees that for up to ``n_max`` participants::

    n_max * w_max * M <= 2^(k-1) - 1          (M >= 1 is required, so the weights fit too)

The weighted mean is ``sum(v) / (2^q * sum(w))``. Since ``|level_i - x_i * 2^q| <= 1/2`` for the
clipped ``x_i``, the error against the weighted mean of the clipped updates is at most
``sum(w_u / 2) / (2^q * sum(w)) = 2^-(q+1)`` per coordinate, plus one float64 rounding of the final
division (relative ``2^-53``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.errors import BitBudgetExceeded, InvalidInput
from secagg.primitives.prg import SUPPORTED_MODULUS_BITS, MaskVector, mask_dtype

__all__ = ["MAX_LEVEL_BITS", "QuantizationSpec", "WeightedMean", "check_bit_budget"]

MAX_LEVEL_BITS = 62


def check_bit_budget(n_max: int, w_max: int, clip: float, q: int, k: int) -> None:
    """Raise BitBudgetExceeded unless a sum over ``n_max`` encoded updates cannot overflow ``2^k``.

    The signed sum must satisfy ``|sum| <= 2^(k-1) - 1`` (one bit is the sign):
    ``n_max * w_max * rint(clip * 2^q)`` bounds the update coordinates, and since
    ``rint(clip * 2^q) >= 1`` is required it also bounds the weight coordinate ``n_max * w_max``.
    """
    _check_parameters(n_max, w_max, clip, q, k)
    largest_level = _largest_level(clip, q)
    limit = 2 ** (k - 1) - 1
    worst = n_max * w_max * largest_level
    if worst > limit:
        raise BitBudgetExceeded(
            f"bit budget exceeded: n_max * w_max * rint(clip * 2^q) = {n_max} * {w_max} * "
            f"{largest_level} = {worst} > 2^{k - 1} - 1 = {limit} (clip={clip}, q={q}, k={k}); "
            f"the signed sum needs {worst.bit_length() + 1} bits: lower q, clip, w_max or n_max, "
            "or use k=64"
        )


@dataclass(frozen=True)
class WeightedMean:
    """The decoded aggregate: ``sum(w*x) / sum(w)`` per coordinate and ``sum(w)``."""

    mean: npt.NDArray[np.float64]
    total_weight: int


@dataclass(frozen=True)
class QuantizationSpec:
    """Clip ``c``, ``2^q`` levels per unit, modulus ``2^k``, and the worst case it must fit.

    Construction runs :func:`check_bit_budget`, so a job whose parameters cannot fit fails before
    its first round.
    """

    clip: float
    levels_bits: int
    modulus_bits: int
    max_participants: int
    max_weight: int

    def __post_init__(self) -> None:
        check_bit_budget(
            self.max_participants, self.max_weight, self.clip, self.levels_bits, self.modulus_bits
        )

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        return mask_dtype(self.modulus_bits)

    @staticmethod
    def encoded_length(dimension: int) -> int:
        """Length of an encoded vector: the update coordinates and the weight."""
        return dimension + 1

    @property
    def mean_error_bound(self) -> float:
        """``2^-(q+1)``: the largest error of a decoded mean coordinate (before float rounding)."""
        return math.ldexp(1.0, -(self.levels_bits + 1))

    def quantize(
        self, update: npt.NDArray[np.floating[Any]], weight: int | np.integer[Any]
    ) -> MaskVector:
        """Encode a 1-D float update with weight ``weight`` (see the module docstring)."""
        if not isinstance(update, np.ndarray) or update.ndim != 1:
            raise InvalidInput("the update must be a 1-D numpy array")
        if not np.issubdtype(update.dtype, np.floating):
            raise InvalidInput(f"the update must be floating point, not {update.dtype}")
        if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
            raise InvalidInput("the weight must be an integer")
        count = int(weight)
        if not 1 <= count <= self.max_weight:
            raise InvalidInput(f"the weight must be in 1..{self.max_weight}, got {count}")
        values = update.astype(np.float64)
        if not np.isfinite(values).all():
            raise InvalidInput("the update contains NaN or Inf")
        np.clip(values, -self.clip, self.clip, out=values)
        values *= math.ldexp(1.0, self.levels_bits)
        np.rint(values, out=values)
        levels = values.astype(np.int64)
        levels *= count
        encoded = np.empty(update.size + 1, dtype=np.int64)
        encoded[:-1] = levels
        encoded[-1] = count
        # Two's complement: reinterpreting int64 as uint64 is reduction mod 2^64; narrowing an
        # unsigned integer to uint32 is reduction mod 2^32.
        unsigned = encoded.view(np.uint64)
        return unsigned if self.modulus_bits == 64 else unsigned.astype(np.uint32)

    def check_in_range(self, aggregate: WeightedMean, contributors: int) -> None:
        """Refuse an aggregate that no ``contributors`` honest inputs can add up to.

        Each honest input clips every coordinate to ``[-clip, clip]`` before it is quantized and
        carries a weight in ``1..max_weight``, so a weighted mean has every coordinate within the
        largest level, ``rint(clip * 2^q) / 2^q``, and ``sum(w)`` lies in ``contributors ..
        contributors * max_weight``. Anything else means some contributor sent words outside its
        range (the masked sum hides who); committing it would make that input the model.
        """
        if contributors < 1:
            raise InvalidInput("an aggregate needs at least one contributor")
        if not contributors <= aggregate.total_weight <= contributors * self.max_weight:
            raise InvalidInput(
                f"the aggregate's weight sum {aggregate.total_weight} is outside what "
                f"{contributors} inputs of weight 1..{self.max_weight} can add up to: "
                "a contributor sent an out-of-range weight"
            )
        limit = _largest_level(self.clip, self.levels_bits) / math.ldexp(1.0, self.levels_bits)
        # The extremes rather than max |mean|: two reductions and no temporary the vector's size.
        # A NaN fails both comparisons.
        high = float(np.max(aggregate.mean)) if aggregate.mean.size else 0.0
        low = float(np.min(aggregate.mean)) if aggregate.mean.size else 0.0
        worst = max(abs(high), abs(low))
        if not (-limit <= low and high <= limit):
            raise InvalidInput(
                f"the aggregate's mean reaches {worst:.6g}, outside the clip box of {limit:.6g}: "
                "a contributor sent out-of-range values"
            )

    def dequantize(self, total: MaskVector) -> WeightedMean:
        """Decode the modular sum of encoded vectors into the weighted mean and ``sum(w)``."""
        if not isinstance(total, np.ndarray) or total.ndim != 1 or total.size < 2:
            raise InvalidInput("the aggregate must be a 1-D array of at least two words")
        if total.dtype != self.dtype:
            raise InvalidInput(f"the aggregate must be {self.dtype}, not {total.dtype}")
        signed = total.view(np.int64 if self.modulus_bits == 64 else np.int32)
        total_weight = int(signed[-1])
        if total_weight < 1:
            raise InvalidInput("the aggregate's weight sum is not positive: not a valid sum")
        scale = math.ldexp(float(total_weight), self.levels_bits)
        # Widened and divided in one pass (int to float64 is exact, as astype would be).
        mean = np.divide(signed[:-1], scale, dtype=np.float64)
        return WeightedMean(mean, total_weight)


def _check_parameters(n_max: int, w_max: int, clip: float, q: int, k: int) -> None:
    for name, value in (("n_max", n_max), ("w_max", w_max)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0:
        raise InvalidInput(f"clip must be a positive finite number, got {clip!r}")
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= MAX_LEVEL_BITS:
        raise InvalidInput(f"q must be an integer in 0..{MAX_LEVEL_BITS}, got {q!r}")
    if k not in SUPPORTED_MODULUS_BITS:
        raise InvalidInput(f"k must be one of {SUPPORTED_MODULUS_BITS}, got {k!r}")


def _largest_level(clip: float, q: int) -> int:
    try:
        scaled = math.ldexp(float(clip), q)
    except OverflowError:
        raise BitBudgetExceeded(f"clip * 2^q overflows (clip={clip}, q={q})") from None
    largest = int(np.rint(scaled))
    if largest < 1:
        raise InvalidInput(
            f"clip * 2^q = {scaled} rounds to 0: every coordinate would quantize to 0; raise q"
        )
    return largest
