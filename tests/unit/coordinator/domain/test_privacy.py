"""The privacy accountant against dp-accounting itself and the Gaussian mechanism's exact epsilon;
the job spec's differential-privacy checks; which rounds count as released."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from scipy import optimize, stats

from coordinator.domain.jobs import JobSpec, SecAggSettings
from coordinator.domain.privacy import (
    epsilon_after,
    privacy_spent,
    released_rounds,
    rounds_within_budget,
)
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import InvalidRequest
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection

dp_accounting = pytest.importorskip("dp_accounting", reason="needs the dp extra (dp-accounting)")

DP = DifferentialPrivacy(clip=1.0, noise_multiplier=4.0, delta=1e-5)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a mu-GDP mechanism at delta (Balle and Wang 2018; Dong, Roth and Su
    2019: composing k Gaussian mechanisms of mu_i is sqrt(sum mu_i^2)-GDP)."""

    def excess(epsilon: float) -> float:
        return (
            stats.norm.cdf(-epsilon / mu + mu / 2)
            - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2)
            - delta
        )

    return float(optimize.brentq(excess, 0.0, 500.0))


@pytest.mark.parametrize("rounds", [1, 10, 100])
def test_epsilon_matches_the_gaussian_mechanism_with_sensitivity_two_clips(rounds: int) -> None:
    # Replace-one: the sum moves by 2C against noise zC, so one round is (2/z)-GDP.
    exact = gaussian_epsilon(2.0 / DP.noise_multiplier * math.sqrt(rounds), DP.delta)
    got = epsilon_after(DP, rounds)
    # The RDP accountant's epsilon is an upper bound, within a few percent of the exact one.
    assert exact <= got <= 1.1 * exact, (exact, got)


def test_epsilon_matches_dp_accountings_own_accountants() -> None:
    # z = 4 against sensitivity 2C: GaussianDpEvent(2.0), composed over 20 rounds.
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 20)
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(event)
    got = epsilon_after(DP, 20)
    assert got == pytest.approx(rdp.get_epsilon(DP.delta), rel=1e-12)
    # The privacy loss distribution accountant is tighter, and RDP stays close above it.
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    pld.compose(event)
    assert pld.get_epsilon(DP.delta) - 1e-3 <= got <= 1.1 * pld.get_epsilon(DP.delta)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    assert epsilon_after(DP, 0) == 0.0
    assert epsilon_after(DP, 1) < epsilon_after(DP, 2) < epsilon_after(DP, 5)
    louder = DifferentialPrivacy(clip=1.0, noise_multiplier=8.0, delta=1e-5)
    assert epsilon_after(louder, 5) < epsilon_after(DP, 5)
    spent = privacy_spent(DP, 3)
    assert (spent.rounds, spent.delta, spent.epsilon) == (3, 1e-5, epsilon_after(DP, 3))


def test_the_budget_admits_rounds_up_to_its_epsilon() -> None:
    budget = (epsilon_after(DP, 4) + epsilon_after(DP, 5)) / 2
    capped = DifferentialPrivacy(1.0, 4.0, 1e-5, epsilon_budget=budget)
    assert rounds_within_budget(capped, 4)
    assert not rounds_within_budget(capped, 5)
    assert rounds_within_budget(DP, 10_000)  # no budget


def _round(number: int, phase: Phase, result_ref: str | None = None) -> Round:
    return Round(
        round_id=f"r{number}",
        job_id="j",
        number=number,
        protection=Protection.SECAGG,
        phase=phase,
        row_version=1,
        base_version=0,
        cohort=("a", "b"),
        deadline_at=0.0,
        created_at=0.0,
        result_ref=result_ref,
    )


def test_released_rounds_count_commits_and_aborts_after_the_aggregate() -> None:
    rounds = [
        _round(1, Phase.COMMITTED, "aa"),
        _round(2, Phase.ABORTED),  # too few inputs: nothing was unmasked
        _round(3, Phase.ABORTED, "bb"),  # the aggregate existed, the server step failed
        _round(4, Phase.INPUTS),
    ]
    assert released_rounds(rounds) == 2


def _spec(**changes: object) -> JobSpec:
    values: dict[str, object] = {
        "name": "j",
        "task_name": "digits-linear",
        "protection": Protection.SECAGG,
        "min_participants": 3,
        "secagg": SecAggSettings(clip=4.0, max_weight=1),
        "dp": DifferentialPrivacy(clip=0.5, noise_multiplier=1.0, delta=1e-5),
    }
    values.update(changes)
    return JobSpec(**values)  # type: ignore[arg-type]


def test_a_valid_dp_job_passes() -> None:
    _spec().validate()
    _spec(protection=Protection.NONE, secagg=SecAggSettings()).validate()


def test_the_quantization_box_must_hold_the_noisy_update() -> None:
    # The secure threshold of 3 participants is 2: share deviation 0.5/sqrt(2), so the box
    # needs 0.5 + 4 * 0.3536 = 1.914.
    with pytest.raises(InvalidRequest, match=r"secagg.clip 1 is too small .* at least 1.914"):
        _spec(secagg=SecAggSettings(clip=1.0, max_weight=1)).validate()
    _spec(secagg=SecAggSettings(clip=1.92, max_weight=1)).validate()


def test_a_budget_spent_by_the_first_round_is_refused() -> None:
    first = epsilon_after(_spec().dp, 1)
    too_small = DifferentialPrivacy(0.5, 1.0, 1e-5, epsilon_budget=first * 0.9)
    with pytest.raises(InvalidRequest, match="is spent by the first round alone"):
        _spec(dp=too_small).validate()
    _spec(dp=DifferentialPrivacy(0.5, 1.0, 1e-5, epsilon_budget=first * 1.1)).validate()


def test_incomplete_dp_settings_are_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"dp.delta must be in \(0, 1\)"):
        _spec(dp=DifferentialPrivacy(clip=0.5, noise_multiplier=1.0)).validate()


def test_the_accountant_does_not_load_tensorflow() -> None:
    # The coordinator never imports TensorFlow; dp-accounting must not bring it in either.
    probe = (
        "import sys, json; from coordinator.domain.privacy import epsilon_after; "
        "from fedsilo.privacy import DifferentialPrivacy; "
        "epsilon_after(DifferentialPrivacy(1.0, 1.0, 1e-5), 3); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tensorflow_privacy'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
