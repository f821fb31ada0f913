"""The one interface the driver and the use cases call a protection's round engine through.

A round engine owns everything a protection mode does differently: which cohort a round may
open with, how an open round's phases close, what a participant is asked in it, how an input
is checked and added to the round's running sum, and in which form model versions are served.
What all modes share (jobs, deduplicated submissions, commits, metrics) stays in the use cases.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from coordinator.domain.jobs import Job, ParticipantStatus, PhaseMessage
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import WrongRoundPhase
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext
from coordinator.service.engines.paillier_ceremony import CeremonyStep
from coordinator.service.payloads import ReceivedPayload
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.views import MessageSubmission, UpdateSubmission, WorkItem
from fedsilo.codec import TensorSpec
from fedsilo.paillier_inputs import RoundInputs

__all__ = ["CeremonyRow", "FoldedInput", "RoundEngine", "check_phase", "revoked_orgs"]

CeremonyRow = tuple[str, bytes, bytes]
"""A key-ceremony row to store: (kind, body, certificate PEM)."""


@dataclass(frozen=True)
class FoldedInput:
    """An input added to a round's running sum: the new sum's blob and the examples it adds
    in the clear (0 when the example count travels inside a masked input)."""

    accumulator_ref: str
    examples: int


class RoundEngine(abc.ABC):
    """How rounds of one protection mode run (see ``registry`` for the modes).

    The defaults describe a mode without key ceremony, small phase messages or threshold;
    an engine overrides what its mode adds.
    """

    has_key_ceremony = False
    """Whether a job of this mode runs a key ceremony before its first round."""

    def __init__(self, ctx: ServiceContext, ledger: RoundLedger) -> None:
        self._ctx = ctx
        self._ledger = ledger

    def select_cohort(
        self, tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        """The cohort a new round opens with, from the live active organizations (sorted);
        None when the mode cannot open a round yet."""
        return live

    @abc.abstractmethod
    def advance(self, round_: Round, now: float) -> bool:
        """Close the open round's current phase if it is due (before AGGREGATED); True if the
        round changed."""

    def threshold(self, job: Job, round_: Round) -> int:
        """How many survivors the round needs (0 when nothing is unmasked)."""
        return 0

    @abc.abstractmethod
    def round_work(
        self, tx: Transaction, round_: Round, org_id: str, now: float
    ) -> WorkItem | None:
        """The work ``org_id`` has in one open round of its cohort, if any."""

    def holds_cohort(self, tx: Transaction, round_: Round, org_id: str) -> bool:
        """Whether ``org_id`` takes part in a short step of the round the cohort waits for."""
        return False

    def round_inputs(self, tx: Transaction, round_: Round, org_id: str) -> RoundInputs:
        """The signed inputs ``org_id`` vets now (DownloadRoundInputs); WrongRoundPhase unless
        it is a member of U3 of a round whose inputs are vetted, in its consistency phase."""
        raise WrongRoundPhase("the inputs of this round's protection are not vetted by members")

    def status_note(self, tx: Transaction, job: Job) -> str:
        """What the admin should know about the job's organizations ("" if nothing)."""
        return ""

    def ceremony_step(self, tx: Transaction, job: Job, org_id: str) -> CeremonyStep | None:
        """The key-ceremony task of ``org_id`` in ``job`` now, if any."""
        return None

    def check_ceremony(
        self,
        tx: Transaction,
        job: Job,
        org_id: str,
        action: str,
        body: bytes,
        certificate_pem: bytes,
    ) -> list[CeremonyRow]:
        """Validate a key-ceremony message; the rows to store."""
        raise WrongRoundPhase("this job has no key ceremony")

    def check_message(
        self,
        tx: Transaction,
        round_: Round,
        job: Job,
        org_id: str,
        message: MessageSubmission,
        certificate_pem: bytes,
        now: float,
    ) -> PhaseMessage:
        """Validate a small phase message; the row to store."""
        raise WrongRoundPhase("this round does not use secure aggregation")

    @abc.abstractmethod
    def check_input_header(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, update: UpdateSubmission
    ) -> None:
        """Refuse an input from its header alone, before its payload is received (the round's
        phase, cohort and deadline are already checked)."""

    @abc.abstractmethod
    def fold_input(
        self,
        round_: Round,
        job: Job,
        org_id: str,
        update: UpdateSubmission,
        payload: ReceivedPayload,
    ) -> FoldedInput:
        """Validate an input and add it to the round's running sum (the caller holds the lock
        and records it)."""

    @abc.abstractmethod
    def input_recorded(self, round_: Round, org_id: str, update: UpdateSubmission) -> None:
        """Called once an input is stored, before the superseded sum is deleted."""

    def model_specs(
        self, job: Job, version: int, size: int, *, encrypted: bool
    ) -> tuple[TensorSpec, ...]:
        """The tensors a stored model version of ``size`` bytes is served as."""
        return job.weight_specs


def revoked_orgs(tx: Transaction) -> set[str]:
    """Organizations whose membership is revoked: they cannot call in, so no phase waits."""
    return {p.org_id for p in tx.list_participants() if p.status is ParticipantStatus.REVOKED}


def check_phase(round_: Round, phase: Phase, org_id: str, now: float) -> None:
    """A submission fits the round: its phase, a member of its cohort, before its deadline."""
    if round_.phase is not phase:
        raise WrongRoundPhase(f"round is in phase {round_.phase.value}, not {phase.value}")
    if org_id not in round_.cohort:
        raise WrongRoundPhase("this organization is not in the round's cohort")
    if now > round_.deadline_at:
        raise WrongRoundPhase("the phase deadline has passed")
