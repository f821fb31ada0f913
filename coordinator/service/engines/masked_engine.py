"""What the ``secagg`` and ``paillier`` round engines share: the phases of pairwise masking.

CREATED -> KEYS -> SHARES -> INPUTS -> CONSISTENCY -> UNMASK -> AGGREGATED (Bonawitz et al.
2017). A phase closes once everyone expected answered, or at its deadline with at least ``t``
answers (INPUTS: at least ``max(t, min_participants)``); with fewer the round aborts. What each
mode adds (how an input is checked and summed, what closing UNMASK produces) is left to the
subclasses.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable

from coordinator.domain.jobs import Job, PhaseMessage
from coordinator.domain.rounds import Phase, Round, RoundEvent
from coordinator.errors import InvalidRequest
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext, require_job
from coordinator.service.engines.base import FoldedInput, RoundEngine, check_phase, revoked_orgs
from coordinator.service.engines.secure_rounds import SMALL_PHASES, SecureRoundCoordinator
from coordinator.service.payloads import ReceivedPayload, check_payload_size
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.views import MessageSubmission, UpdateSubmission, WorkItem, WorkKind
from fedsilo.faults import crash_point
from fedsilo.logs import context

__all__ = ["MaskedRoundEngine"]

log = logging.getLogger("coordinator")


class MaskedRoundEngine(RoundEngine):
    """The secure-aggregation phases over ``SecureRoundCoordinator``; subclasses sum inputs."""

    def __init__(
        self,
        ctx: ServiceContext,
        ledger: RoundLedger,
        key_fingerprint: Callable[[Transaction, Job], bytes] | None = None,
    ) -> None:
        super().__init__(ctx, ledger)
        # key_fingerprint: what a round's context binds of the job key (paillier only).
        self._secure = SecureRoundCoordinator(ctx.blobs, key_fingerprint=key_fingerprint)

    # -- opening and closing phases -------------------------------------------------------------

    def select_cohort(
        self, tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        # The bit budget holds for at most max_participants; t must not exceed the cohort.
        cohort = live[: job.spec.secagg.max_participants]
        # No organization live (all of them down at once): no cohort, and no threshold of one.
        if not cohort or job.spec.secagg.threshold_for(len(cohort)) > len(cohort):
            return None
        return cohort

    def advance(self, round_: Round, now: float) -> bool:
        """Close the current phase once everyone expected answered, or at its deadline."""
        if round_.phase not in (Phase.CREATED, *SMALL_PHASES, Phase.INPUTS):
            return False
        with self._ctx.store.transaction() as tx:
            job = require_job(tx, round_.job_id)
            expected = self._secure.expected(tx, round_)
            answered = self._secure.senders(tx, round_, round_.phase)
            # A revoked organization can no longer call in: waiting for it until the deadline
            # would only stall the round, so it counts as a dropout at once.
            revoked = revoked_orgs(tx)
        spec = job.spec
        phase_deadline = now + spec.phase_timeout_seconds
        if round_.phase is Phase.CREATED:
            self._ledger.write_transition(
                round_, RoundEvent.PHASE_COMPLETE, now, deadline_at=phase_deadline
            )
            return True
        waiting = set(expected) - revoked - set(answered)
        if waiting and now <= round_.deadline_at:
            return False
        threshold = spec.secagg.threshold_for(len(round_.cohort))
        needed = (
            max(threshold, spec.min_participants) if round_.phase is Phase.INPUTS else threshold
        )
        if len(answered) < needed:
            self._ledger.abort(
                round_,
                job,
                f"phase {round_.phase.value} closed with {len(answered)} of {len(expected)} "
                f"answers, fewer than the {needed} required",
                now,
            )
            return True
        if round_.phase is Phase.UNMASK:
            self._unmask(round_, job, now)
            return True
        following_deadline = (
            now + spec.round_timeout_seconds if round_.phase is Phase.SHARES else phase_deadline
        )
        self._ledger.write_transition(
            round_, RoundEvent.PHASE_COMPLETE, now, deadline_at=following_deadline
        )
        return True

    @abc.abstractmethod
    def _unmask(self, round_: Round, job: Job, now: float) -> None:
        """Close UNMASK: store the round's result (AGGREGATED), or abort the round."""

    def threshold(self, job: Job, round_: Round) -> int:
        return job.spec.secagg.threshold_for(len(round_.cohort))

    # -- what participants are asked ------------------------------------------------------------

    def round_work(
        self, tx: Transaction, round_: Round, org_id: str, now: float
    ) -> WorkItem | None:
        left = round_.deadline_at - now
        job = require_job(tx, round_.job_id)
        step = self._secure.step_for(tx, round_, job, org_id)
        if step is None:
            return None
        kind = WorkKind.TRAIN if round_.phase is Phase.INPUTS else WorkKind.SECAGG_STEP
        return WorkItem(kind, job, round_, round_.base_version, left, step)

    def holds_cohort(self, tx: Transaction, round_: Round, org_id: str) -> bool:
        if round_.phase not in (Phase.CREATED, *SMALL_PHASES):
            return False
        return org_id in self._secure.expected(tx, round_)

    # -- receiving ------------------------------------------------------------------------------

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
        if message.phase not in SMALL_PHASES:
            raise InvalidRequest(f"phase {message.phase.value} is not answered with a message")
        check_phase(round_, message.phase, org_id, now)
        return self._secure.check_message(
            tx, round_, job, org_id, message.phase, message.body, certificate_pem
        )

    def fold_input(
        self,
        round_: Round,
        job: Job,
        org_id: str,
        update: UpdateSubmission,
        payload: ReceivedPayload,
    ) -> FoldedInput:
        """Add a masked input to the round's running sum modulo R (the caller holds the lock)."""
        _check_no_clear_counts(update)
        check_payload_size(update.header.total_bytes, self._ctx.settings.max_payload_bytes)
        return FoldedInput(self._fold_masked(round_, job, org_id, update, payload), 0)

    def check_input_header(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, update: UpdateSubmission
    ) -> None:
        _check_no_clear_counts(update)
        self._check_masked_header(tx, round_, job, org_id, update)

    @abc.abstractmethod
    def _check_masked_header(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, update: UpdateSubmission
    ) -> None:
        """Refuse a masked input from its header: its sender and its tensor layout."""

    @abc.abstractmethod
    def _fold_masked(
        self,
        round_: Round,
        job: Job,
        org_id: str,
        update: UpdateSubmission,
        payload: ReceivedPayload,
    ) -> str:
        """Check one masked input and add it to the round's sum; the new sum's blob."""

    def input_recorded(self, round_: Round, org_id: str, update: UpdateSubmission) -> None:
        crash_point("coordinator.secagg.after_inputs_commit")
        log.info(
            "masked input accepted (%d bytes)",
            update.header.total_bytes,
            **context(job=round_.job_id, round=str(round_.number), phase="inputs", org=org_id),
        )


def _check_no_clear_counts(update: UpdateSubmission) -> None:
    if update.num_examples != 0 or update.train_loss != 0.0:
        raise InvalidRequest(
            "under secure aggregation the example count travels inside the masked input: "
            "num_examples and train_loss must be 0"
        )
