"""Writes every round engine and the driver share: phase transitions, aborts, superseded blobs.

State changes of a round go through the pure ``transition`` of the domain and are written with a
compare-and-set on the round's row version, one transaction each.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from coordinator.domain.jobs import Job, JobState, ModelVersion
from coordinator.domain.privacy import epsilon_after, released_rounds, rounds_within_budget
from coordinator.domain.rounds import Phase, Round, RoundEvent, transition
from coordinator.errors import NotFound
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext, require_job
from coordinator.service.server_step import next_model
from fedsilo.logs import context
from fedsilo.strategies import StrategyError

__all__ = ["RoundLedger"]

log = logging.getLogger("coordinator")


class RoundLedger:
    """Round and model-version writes over the shared store and blob store."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        # When each open round entered its current phase, as seen by this process.
        self._phase_started: dict[str, float] = {}

    def phase_ended(self, before: Round, after: Round, now: float) -> None:
        """Tell the phase listeners how long ``before``'s phase lasted, now that ``after`` is
        written. A phase a restart interrupted has no known start and is not reported (except
        CREATED, which starts with the round)."""
        started = self._phase_started.pop(before.round_id, None)
        if started is None and before.phase is Phase.CREATED:
            started = before.created_at
        if not after.is_terminal:
            self._phase_started[after.round_id] = now
        if started is None:
            return
        for listener in self._ctx.phase_listeners:
            listener(before.protection.value, before.phase.value, max(0.0, now - started))

    def write_transition(
        self, round_: Round, event: RoundEvent, now: float, **changes: Any
    ) -> Round:
        following = dataclasses.replace(transition(round_, event, now=now), **changes)
        with self._ctx.store.transaction() as tx:
            tx.update_round(following, expected_row_version=round_.row_version)
        self.phase_ended(round_, following, now)
        log.info(
            "round %s -> %s",
            round_.phase.value,
            following.phase.value,
            **context(job=round_.job_id, round=str(round_.number), phase=following.phase.value),
        )
        return following

    def abort(self, round_: Round, job: Job, reason: str, now: float) -> None:
        following = transition(round_, RoundEvent.ABORT, now=now, reason=reason)
        failed = job.failed_rounds + 1
        exhausted = failed > job.spec.max_failed_rounds
        updated_job = dataclasses.replace(
            job,
            failed_rounds=failed,
            state=JobState.FAILED if exhausted else job.state,
            failure_reason=f"{failed} rounds failed in a row; last: {reason}"
            if exhausted
            else None,
        )
        with self._ctx.store.transaction() as tx:
            tx.update_round(following, expected_row_version=round_.row_version)
            tx.update_job(updated_job)
        self.phase_ended(round_, following, now)
        self.discard_blob(round_.accumulator_ref)
        log.warning(
            "round aborted: %s%s",
            reason,
            "; job failed" if exhausted else "",
            **context(job=job.job_id, round=str(round_.number), phase="aborted"),
        )

    def commit(self, round_: Round, now: float) -> None:
        """AGGREGATED -> COMMITTED: the round's result becomes the job's next model version."""
        following = transition(round_, RoundEvent.PHASE_COMPLETE, now=now)
        with self._ctx.store.transaction() as tx:
            job = require_job(tx, round_.job_id)
        try:
            model = next_model(self._ctx, job, round_)
        except StrategyError as exc:
            self.abort(round_, job, f"the {job.spec.algorithm} server step failed: {exc}", now)
            return
        with self._ctx.store.transaction() as tx:
            job = require_job(tx, round_.job_id)
            version = round_.base_version + 1
            tx.add_model_version(
                ModelVersion(
                    job.job_id,
                    version,
                    model.model_ref,
                    round_.round_id,
                    now,
                    model.optimizer_state_ref,
                )
            )
            state = JobState.COMPLETED if version >= job.spec.num_rounds else job.state
            tx.update_round(following, expected_row_version=round_.row_version)
            stop = None if state is JobState.COMPLETED else _budget_stop(tx, job)
            if stop is not None:
                state = JobState.COMPLETED
            tx.update_job(
                dataclasses.replace(
                    job,
                    model_version=version,
                    state=state,
                    failed_rounds=0,
                    failure_reason=stop or job.failure_reason,
                )
            )
        self.phase_ended(round_, following, now)
        self.discard_blob(round_.accumulator_ref)
        log.info(
            "model version %d committed from %d updates%s",
            version,
            len(round_.contributors),
            "; job completed" if state is JobState.COMPLETED else "",
            **context(job=job.job_id, round=str(round_.number), phase="committed"),
        )
        if stop is not None:
            log.warning("%s", stop, **context(job=job.job_id, round=str(round_.number)))

    def discard_blob(self, ref: str | None) -> bool:
        """Delete a superseded blob unless another round or model version still points at it.

        Blobs are content-addressed, so two jobs whose running sums happen to be equal share one.
        Returns whether the blob was deleted.
        """
        if ref is None:
            return False
        with self._ctx.store.transaction() as tx:
            in_use = tx.blob_in_use(ref)
        if not in_use:
            self._ctx.blobs.delete(ref)
        return not in_use

    def model_payload(self, job_id: str, version: int) -> tuple[Job, int, bytes]:
        """A committed model version (-1: the latest): the job, the version number, the payload."""
        job, wanted, blob_ref = self.model_blob(job_id, version)
        return job, wanted, self._ctx.blobs.get(blob_ref)

    def model_blob(self, job_id: str, version: int) -> tuple[Job, int, str]:
        """A committed model version (-1: the latest): the job, the version number, its blob."""
        with self._ctx.store.transaction() as tx:
            job = require_job(tx, job_id)
            wanted = job.model_version if version < 0 else version
            model = tx.get_model_version(job_id, wanted)
        if model is None:
            if wanted == 0 and job.spec.initial_weights_from_seed:
                raise NotFound(
                    "version 0 is not built yet: the organizations build it from the job's seed "
                    "once the job runs (fedsilo job status says what it waits for)"
                )
            raise NotFound(f"model version {version} does not exist for this job")
        return job, wanted, model.blob_ref


def _budget_stop(tx: Transaction, job: Job) -> str | None:
    """Why the job stops before its next round: that round would overspend its epsilon budget
    (docs/differential-privacy.md); None when it may go on. Read after this round's commit."""
    dp = job.spec.dp
    if not dp.enabled or dp.epsilon_budget <= 0.0:
        return None
    released = released_rounds(tx.list_rounds(job.job_id))
    if rounds_within_budget(dp, released + 1):
        return None
    return (
        f"stopped by the privacy budget: after {released} released rounds epsilon is "
        f"{epsilon_after(dp, released):.4g} at delta {dp.delta:g}, and one more round would "
        f"reach {epsilon_after(dp, released + 1):.4g}, above the budget {dp.epsilon_budget:g}"
    )
