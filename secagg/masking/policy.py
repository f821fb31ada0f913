"""The cohort policy a participant sets for itself: the smallest threshold and cohort it accepts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from secagg.errors import InvalidInput, ProtocolViolation
from secagg.masking.config import RoundConfig

__all__ = ["CohortPolicy", "secure_threshold"]


def secure_threshold(cohort_size: int) -> int:
    """``max(ceil(2n/3), n // 2 + 1)``: the threshold that bounds colluders at ``c < n/3``.

    docs/threat-model.md derives the bound. The strict majority never exceeds ``ceil(2n/3)``
    (they are equal at n = 1, 2, 4); it stays in the formula to make the rule of ``RoundConfig``,
    ``t > n/2``, visible.
    """
    if not isinstance(cohort_size, int) or cohort_size < 1:
        raise InvalidInput(f"a cohort has at least one member, got {cohort_size!r}")
    return max(math.ceil(Fraction(2 * cohort_size, 3)), cohort_size // 2 + 1)


@dataclass(frozen=True)
class CohortPolicy:
    """What this participant requires of a round before it advertises a key.

    A round of ``n`` members with threshold ``t`` is refused when ``t < ceil(fraction * n)`` or
    ``n < min_cohort``. The server chooses ``t`` and the cohort; the participant does not trust
    that choice, since a low ``t`` lets a server with few colluders recover honest inputs
    (docs/threat-model.md).
    """

    min_threshold_fraction: Fraction = Fraction(2, 3)
    min_cohort: int = 3

    def __post_init__(self) -> None:
        fraction = self.min_threshold_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, Fraction | int):
            raise InvalidInput("min_threshold_fraction must be a Fraction")
        if not Fraction(1, 2) <= fraction <= 1:
            raise InvalidInput(f"min_threshold_fraction must be in [1/2, 1], got {fraction}")
        object.__setattr__(self, "min_threshold_fraction", Fraction(fraction))
        if isinstance(self.min_cohort, bool) or not isinstance(self.min_cohort, int):
            raise InvalidInput("min_cohort must be an integer")
        if self.min_cohort < 2:
            raise InvalidInput(f"min_cohort must be at least 2, got {self.min_cohort}")

    def min_threshold(self, cohort_size: int) -> int:
        """The smallest ``t`` this policy accepts for a cohort of ``cohort_size``."""
        return math.ceil(self.min_threshold_fraction * cohort_size)

    def check(self, config: RoundConfig) -> None:
        """Raise ``ProtocolViolation`` when ``config`` asks for less than this policy requires."""
        n = len(config.cohort)
        if n < self.min_cohort:
            raise ProtocolViolation(
                f"the cohort has {n} members, fewer than this participant's minimum "
                f"{self.min_cohort}"
            )
        needed = self.min_threshold(n)
        if config.threshold < needed:
            raise ProtocolViolation(
                f"the threshold t={config.threshold} for n={n} is below this participant's "
                f"minimum {needed} (= ceil({self.min_threshold_fraction} * n))"
            )
