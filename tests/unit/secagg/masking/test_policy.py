"""The participant's own cohort policy: SecAggClient.start refuses a round below it."""

from __future__ import annotations

from fractions import Fraction

import pytest
from secagg_harness import make_cohort

from secagg import (
    CohortPolicy,
    InvalidInput,
    ProtocolViolation,
    SecAggClient,
    default_threshold,
    secure_threshold,
)


def test_secure_threshold_is_two_thirds_and_never_below_a_strict_majority() -> None:
    assert [secure_threshold(n) for n in range(1, 11)] == [1, 2, 2, 3, 4, 4, 5, 6, 6, 7]
    for n in range(1, 200):
        t = secure_threshold(n)
        assert t > n / 2 and 3 * t >= 2 * n and t >= default_threshold(n)
        # The bound of docs/threat-model.md: two survivor sets of t members overlap in
        # 2t - n members, more than the n/3 colluders the default tolerates.
        assert 2 * t - n >= -(-n // 3)


def test_the_default_policy_refuses_a_strict_majority_of_an_odd_cohort() -> None:
    cohort = make_cohort(5, 3)  # t = 3 = 5 // 2 + 1 < ceil(10/3) = 4
    with pytest.raises(ProtocolViolation, match=r"t=3 for n=5 is below .* minimum 4"):
        SecAggClient.start(cohort.config, cohort.context("org-00"), CohortPolicy())


def test_the_default_policy_accepts_the_secure_threshold() -> None:
    cohort = make_cohort(5, secure_threshold(5))
    client = SecAggClient.start(cohort.config, cohort.context("org-00"), CohortPolicy())
    assert client.config.threshold == 4


def test_a_cohort_below_the_minimum_is_refused() -> None:
    cohort = make_cohort(2, 2)
    with pytest.raises(ProtocolViolation, match="2 members, fewer than .* minimum 3"):
        SecAggClient.start(cohort.config, cohort.context("org-00"), CohortPolicy())
    lenient = CohortPolicy(min_cohort=2)
    assert (
        SecAggClient.start(cohort.config, cohort.context("org-00"), lenient).config.threshold == 2
    )


def test_a_stricter_policy_is_the_participants_choice() -> None:
    cohort = make_cohort(6, 4)
    strict = CohortPolicy(min_threshold_fraction=Fraction(3, 4))
    with pytest.raises(ProtocolViolation, match="minimum 5"):
        SecAggClient.start(cohort.config, cohort.context("org-00"), strict)


def test_the_policy_is_required_and_validated() -> None:
    cohort = make_cohort(3, 2)
    with pytest.raises(InvalidInput, match="CohortPolicy"):
        SecAggClient.start(cohort.config, cohort.context("org-00"), None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"\[1/2, 1\]"):
        CohortPolicy(min_threshold_fraction=Fraction(1, 3))
    with pytest.raises(InvalidInput, match="at least 2"):
        CohortPolicy(min_cohort=1)
    with pytest.raises(InvalidInput, match="Fraction"):
        CohortPolicy(min_threshold_fraction=0.7)  # type: ignore[arg-type]
