"""Shamir t-out-of-n sharing of 32-byte secrets over GF(p), p = 2^521 - 1 (Bonawitz 2017: SS.share).

A secret ``s`` (32 bytes, read big-endian, so ``s < 2^256 < p``) is the constant term of a random
polynomial ``f`` of degree ``t - 1``; the share for ``x`` is ``(x, f(x))`` with ``x`` in 1..65535.
Any ``t`` shares give ``s = f(0)`` by Lagrange interpolation; fewer reveal nothing. Extra shares
beyond ``t`` are checked against the interpolated polynomial, so an inconsistent share is detected
instead of silently giving a wrong secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from secagg.errors import InvalidInput, InvalidShare
from secagg.primitives.randomness import RandomSource, random_bytes

__all__ = [
    "FIELD_PRIME",
    "MAX_X",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "LagrangeBasis",
    "Share",
    "combine_shares",
    "split_secret",
]

FIELD_PRIME = 2**521 - 1
"""The Mersenne prime M521: larger than every 256-bit secret, so no secret is reduced."""
SECRET_BYTES = 32
MAX_X = 2**16 - 1
_X_BYTES = 2
_Y_BYTES = (FIELD_PRIME.bit_length() + 7) // 8
SHARE_BYTES = _X_BYTES + _Y_BYTES
_COEFFICIENT_MASK = (1 << FIELD_PRIME.bit_length()) - 1


@dataclass(frozen=True)
class Share:
    """One point ``(x, y)`` of the sharing polynomial; ``y`` never appears in ``repr``."""

    x: int
    y: int = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.x, int) or not 1 <= self.x <= MAX_X:
            raise InvalidShare(f"share x must be in 1..{MAX_X}")
        if not isinstance(self.y, int) or not 0 <= self.y < FIELD_PRIME:
            raise InvalidShare("share y is outside the field")

    def to_bytes(self) -> bytes:
        """``x`` as 2 bytes then ``y`` as 66 bytes, both big-endian."""
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Invert :meth:`to_bytes`; a wrong length or an out-of-range value is an InvalidShare."""
        if not isinstance(data, bytes) or len(data) != SHARE_BYTES:
            raise InvalidShare(f"an encoded share is {SHARE_BYTES} bytes")
        return cls(int.from_bytes(data[:_X_BYTES], "big"), int.from_bytes(data[_X_BYTES:], "big"))


def split_secret(
    secret: bytes, threshold: int, xs: Sequence[int], random: RandomSource
) -> tuple[Share, ...]:
    """Shares of ``secret`` for ``xs`` (in order); any ``threshold`` of them recover it."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise InvalidInput(f"a shared secret is exactly {SECRET_BYTES} bytes")
    if len(set(xs)) != len(xs):
        raise InvalidInput("share x coordinates must be distinct")
    if not all(isinstance(x, int) and 1 <= x <= MAX_X for x in xs):
        raise InvalidInput(f"share x coordinates must be in 1..{MAX_X}")
    if not 1 <= threshold <= len(xs):
        raise InvalidInput(f"threshold must be in 1..{len(xs)}, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients.extend(_random_field_element(random) for _ in range(threshold - 1))
    return tuple(Share(x, _evaluate(coefficients, x)) for x in xs)


def combine_shares(shares: Sequence[Share], threshold: int) -> bytes:
    """The secret behind ``shares``: at least ``threshold`` of them, all on one polynomial."""
    basis = LagrangeBasis([share.x for share in shares], threshold)
    return basis.combine([share.y for share in shares])


class LagrangeBasis:
    """Interpolation weights for one set of ``x`` coordinates, reused for many secrets.

    The server reconstructs one secret per participant from shares held by the same responders,
    so the modular inverses are computed once per round rather than once per secret.
    """

    def __init__(self, xs: Sequence[int], threshold: int) -> None:
        if threshold < 1:
            raise InvalidShare("threshold must be at least 1")
        if len(xs) < threshold:
            raise InvalidShare(f"{len(xs)} shares are fewer than the threshold {threshold}")
        if len(set(xs)) != len(xs):
            raise InvalidShare("two shares have the same x coordinate")
        if not all(isinstance(x, int) and 1 <= x <= MAX_X for x in xs):
            raise InvalidShare(f"share x must be in 1..{MAX_X}")
        self._xs = tuple(xs)
        self._threshold = threshold
        used = self._xs[:threshold]
        # Weights of f(0) and of f(x_e) for every extra point x_e, in terms of the first t values.
        self._at_zero = _lagrange_weights(used, 0)
        self._at_extra = [_lagrange_weights(used, x) for x in self._xs[threshold:]]

    def combine(self, ys: Sequence[int]) -> bytes:
        """The 32-byte secret ``f(0)`` from the ``y`` values in the order of the basis's ``xs``."""
        if len(ys) != len(self._xs):
            raise InvalidShare(f"expected {len(self._xs)} share values, got {len(ys)}")
        if not all(isinstance(y, int) and 0 <= y < FIELD_PRIME for y in ys):
            raise InvalidShare("share y is outside the field")
        used = ys[: self._threshold]
        for weights, y in zip(self._at_extra, ys[self._threshold :], strict=True):
            if _weighted_sum(weights, used) != y:
                raise InvalidShare("the shares do not lie on one polynomial")
        secret = _weighted_sum(self._at_zero, used)
        if secret >= 1 << (8 * SECRET_BYTES):
            raise InvalidShare("the shares reconstruct a value that is not a 32-byte secret")
        return secret.to_bytes(SECRET_BYTES, "big")


def _lagrange_weights(xs: Sequence[int], point: int) -> list[int]:
    weights = []
    for i, xi in enumerate(xs):
        numerator = 1
        denominator = 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * (point - xj) % FIELD_PRIME
                denominator = denominator * (xi - xj) % FIELD_PRIME
        weights.append(numerator * pow(denominator, -1, FIELD_PRIME) % FIELD_PRIME)
    return weights


def _weighted_sum(weights: Sequence[int], ys: Sequence[int]) -> int:
    return sum(w * y for w, y in zip(weights, ys, strict=True)) % FIELD_PRIME


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):
        result = (result * x + coefficient) % FIELD_PRIME
    return result


def _random_field_element(random: RandomSource) -> int:
    # Rejection sampling of 521-bit strings: uniform on GF(p) (reducing a longer string mod p
    # would be biased). Only the single value 2^521 - 1 = p is ever rejected.
    while True:
        candidate = int.from_bytes(random_bytes(random, _Y_BYTES), "big") & _COEFFICIENT_MASK
        if candidate < FIELD_PRIME:
            return candidate
