"""The deadline driver: advance open rounds, commit aggregates, open the next round of each job.

It runs on the coordinator's clock only, on a timer and after every accepted submission; what a
protection mode does in its phases is its round engine's, committing is shared by all modes.
Several coordinators on one database may tick the same round: the one that loses the round's
compare-and-set (or the insert of the next round) changed nothing and logs one INFO line; the
next tick reads the new state.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from coordinator.domain.jobs import Job, JobState, ParticipantStatus
from coordinator.domain.rounds import Phase, Round
from coordinator.persistence.store import DuplicateKey, StaleWrite, Transaction
from coordinator.service.context import ServiceContext
from coordinator.service.engines.registry import RoundEngines
from coordinator.service.initial_weights import initial_weights_reason, pending_initial_weights
from coordinator.service.round_ledger import RoundLedger
from fedsilo.logs import context

__all__ = ["RoundDriver"]

log = logging.getLogger("coordinator")


class RoundDriver:
    """Moves every running job forward."""

    def __init__(self, ctx: ServiceContext, ledger: RoundLedger, engines: RoundEngines) -> None:
        self._ctx = ctx
        self._ledger = ledger
        self._engines = engines

    def tick(self) -> None:
        """Advance every job: finish or abort rounds, commit aggregates, open new rounds."""
        changed = False
        with self._ctx.lock:
            with self._ctx.store.transaction() as tx:
                open_rounds = tx.open_rounds()
                # A job whose version 0 the participants still build has nothing to start from.
                running = [
                    job
                    for job in tx.list_jobs((JobState.RUNNING,))
                    if not pending_initial_weights(tx, job)
                ]
            for round_ in open_rounds:
                changed |= self._unless_overtaken(
                    functools.partial(self._advance_round, round_), round_.job_id
                )
            busy = {r.job_id for r in open_rounds}
            for job in running:
                if job.job_id not in busy:
                    changed |= self._unless_overtaken(
                        functools.partial(self._open_round, job), job.job_id
                    )
        if changed:
            self._ctx.changes.notify()

    @staticmethod
    def _unless_overtaken(step: Callable[[], bool], job_id: str) -> bool:
        """Run one job's step; another coordinator moving the job first is no error (nothing of
        this step was written): one INFO line, no traceback, and the state changed."""
        try:
            return step()
        except (StaleWrite, DuplicateKey) as exc:
            log.info(
                "another coordinator moved this job first (%s); read again on the next tick",
                exc,
                **context(job=job_id),
            )
            return True

    def _advance_round(self, round_: Round) -> bool:
        now = self._ctx.clock()
        if round_.phase is Phase.AGGREGATED:
            self._ledger.commit(round_, now)
            return True
        return self._engines[round_.protection].advance(round_, now)

    def live_organizations(self, tx: Transaction, now: float) -> tuple[str, ...]:
        """Active organizations seen within the liveness window, sorted: who a round may ask."""
        live_after = now - self._ctx.settings.liveness_seconds
        return tuple(
            sorted(
                p.org_id
                for p in tx.list_participants()
                if p.status is ParticipantStatus.ACTIVE and p.last_seen >= live_after
            )
        )

    def waiting_reason(self, tx: Transaction, job: Job, rounds: tuple[Round, ...]) -> str:
        """Why ``job`` makes no progress now, or "" when a round is open or the job has ended."""
        if job.state is JobState.CREATED:
            return "created, not started (fedsilo job start)"
        if job.state is JobState.PAUSED:
            if any(not r.is_terminal for r in rounds):
                return "paused by admin; the open round finishes first"
            return "paused by admin (fedsilo job resume)"
        if job.state is not JobState.RUNNING:
            return ""
        if any(not r.is_terminal for r in rounds):
            return ""
        # E.g. organizations that stopped serving a paillier job: why no cohort forms.
        note = self._engines[job.spec.protection].status_note(tx, job)
        suffix = f"; {note}" if note else ""
        live = self.live_organizations(tx, self._ctx.clock())
        needed = job.spec.min_participants
        if pending_initial_weights(tx, job):
            suffix = f"; {len(live)} organizations live{suffix}"
            return initial_weights_reason(tx, job) + suffix
        if len(live) < needed:
            names = ", ".join(live) if live else "none"
            return f"needs {needed} live organizations, {len(live)} active: {names}{suffix}"
        return f"waiting for the next round to open{suffix}"

    def _open_round(self, job: Job) -> bool:
        now = self._ctx.clock()
        with self._ctx.store.transaction() as tx:
            live = self.live_organizations(tx, now)
            cohort = self._engines[job.spec.protection].select_cohort(tx, job, live, now)
            if cohort is None or len(cohort) < job.spec.min_participants:
                return False
            number = len(tx.list_rounds(job.job_id)) + 1
            round_ = Round(
                round_id=self._ctx.new_id(),
                job_id=job.job_id,
                number=number,
                protection=job.spec.protection,
                phase=Phase.CREATED,
                row_version=0,
                base_version=job.model_version,
                cohort=cohort,
                deadline_at=now + job.spec.round_timeout_seconds,
                created_at=now,
            )
            tx.add_round(round_)
        log.info(
            "round opened with cohort of %d",
            len(cohort),
            **context(job=job.job_id, round=str(number), phase="created"),
        )
        self._advance_round(round_)
        return True
