"""Privacy accounting of a job's released aggregates with Google's ``dp-accounting`` package.

Each round releases the sum of the organizations' clipped updates plus Gaussian noise of standard
deviation at least ``z * C`` (``fedsilo.privacy``). An organization's participation is public in a
cross-silo round (the cohort is known to everyone in it), so neighbouring inputs differ by
replacing one organization's entire data: the sum moves by at most ``2 C`` in L2, and one round is
the Gaussian mechanism with noise multiplier ``z / 2`` relative to that sensitivity. Rounds are
composed without sampling (every organization takes part; sampling probability 1) by the Renyi
DP (RDP) accountant, whose epsilon for the job's delta is an upper bound within a few percent of
the exact one and costs microseconds for any number of rounds (the privacy loss distribution
accountant is tighter but takes seconds to minutes per evaluation at the coordinator).

``dp-accounting`` is the coordinator's optional dependency (the ``dp`` extra); it is imported
only when a job with differential privacy is validated or reported.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from coordinator.domain.rounds import Phase, Round
from coordinator.errors import InvalidRequest
from fedsilo.privacy import DifferentialPrivacy

__all__ = [
    "PrivacySpent",
    "epsilon_after",
    "privacy_spent",
    "released_rounds",
    "rounds_within_budget",
]


@dataclass(frozen=True)
class PrivacySpent:
    """What a job has spent: ``epsilon`` at ``delta`` after ``rounds`` released aggregates."""

    epsilon: float
    delta: float
    rounds: int
    epsilon_budget: float


def _mechanism_noise_multiplier(privacy: DifferentialPrivacy) -> float:
    # Replace-one adjacency: sensitivity 2C against noise z*C (see the module docstring).
    return privacy.noise_multiplier / 2.0


@functools.lru_cache(maxsize=256)
def _epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    try:
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError:
        raise InvalidRequest(
            "differential privacy needs the dp-accounting package at the coordinator "
            "(pip install 'fedsilo[dp]')"
        ) from None
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))


def epsilon_after(privacy: DifferentialPrivacy, rounds: int) -> float:
    """Epsilon at the job's delta after ``rounds`` released aggregates (0 for none)."""
    if rounds <= 0:
        return 0.0
    return _epsilon(_mechanism_noise_multiplier(privacy), rounds, privacy.delta)


def privacy_spent(privacy: DifferentialPrivacy, rounds: int) -> PrivacySpent:
    return PrivacySpent(
        epsilon_after(privacy, rounds), privacy.delta, rounds, privacy.epsilon_budget
    )


def rounds_within_budget(privacy: DifferentialPrivacy, rounds: int) -> bool:
    """Whether ``rounds`` released aggregates stay within the job's epsilon budget (if any)."""
    if not privacy.enabled or privacy.epsilon_budget <= 0.0:
        return True
    epsilon = epsilon_after(privacy, rounds)
    return math.isfinite(epsilon) and epsilon <= privacy.epsilon_budget


def released_rounds(rounds: Iterable[Round]) -> int:
    """How many of a job's rounds released an aggregate: every committed round, and every round
    aborted after its aggregate existed (a failed server step), counted as spent too."""
    return sum(
        1
        for r in rounds
        if r.phase is Phase.COMMITTED or (r.phase is Phase.ABORTED and r.result_ref is not None)
    )
