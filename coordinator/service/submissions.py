"""Submissions: updates, small phase messages and key-ceremony messages, each accepted once.

Every submission is unique on (round, participant, phase) with a stored content hash: a retry
with identical bytes gets the original acknowledgement, different bytes are rejected and
audited. The round engine of the round's protection checks the content and adds inputs to the
round's running sum; this module records them.

An update's header is checked against the round before its payload is received, and the payload
goes to the upload spool as it arrives, so a refused or stalled upload costs no memory. Each
submission is written with a compare-and-set on the round's row: when another writer (another
coordinator process on the same database) changed the round first, the submission is checked
and folded again from the new state, up to ``MAX_ATTEMPTS`` times (then UNAVAILABLE, retried by
the participant), never half-applied and never an internal error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from coordinator.domain.jobs import JobMessage, JobState, PhaseMessage, Submission
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import ConflictingSubmission, NotFound, WrongRoundPhase
from coordinator.persistence.spool import UploadSpool
from coordinator.persistence.store import DuplicateKey, StaleWrite, Transaction
from coordinator.service.context import ServiceContext, require_job, sha256
from coordinator.service.driver import RoundDriver
from coordinator.service.engines.base import check_phase
from coordinator.service.engines.registry import RoundEngines
from coordinator.service.payloads import ReceivedPayload, check_payload_size
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.views import Acknowledgement, MessageSubmission, UpdateSubmission
from fedsilo.faults import crash_point
from fedsilo.logs import context

__all__ = ["SubmissionService"]

log = logging.getLogger("coordinator")

MAX_ATTEMPTS = 8
"""How often a submission is tried against a round that another writer keeps changing."""

_T = TypeVar("_T")


class SubmissionService:
    """Accepts what participants send, exactly once."""

    def __init__(
        self,
        ctx: ServiceContext,
        ledger: RoundLedger,
        engines: RoundEngines,
        driver: RoundDriver,
        spool: UploadSpool,
    ) -> None:
        self._ctx = ctx
        self._ledger = ledger
        self._engines = engines
        self._driver = driver
        self._spool = spool

    def receive_update(
        self, org_id: str, update: UpdateSubmission, chunks: Iterable[bytes]
    ) -> Acknowledgement:
        """Check an update's header against its round, receive its payload into the spool
        (one chunk in memory at a time), then accept it; the spool file is removed whatever
        happens."""
        self.check_update(org_id, update)
        header = update.header
        with self._spool.receive(chunks, header.total_bytes, header.sha256, org_id) as upload:
            return self.submit_update(org_id, update, upload)

    def check_update(self, org_id: str, update: UpdateSubmission) -> None:
        """Refuse an update from its header alone: too large, unknown round, wrong phase, not in
        the cohort, late, wrong base version or layout, or a different one already accepted."""
        check_payload_size(update.header.total_bytes, self._ctx.settings.max_payload_bytes)
        now = self._ctx.clock()
        with self._ctx.store.transaction() as tx:
            round_, previous = _round_and_previous(tx, update, org_id)
            if previous is None:
                job = require_job(tx, update.job_id)
                _check_fits(round_, update, org_id, now)
                self._engines[round_.protection].check_input_header(tx, round_, job, org_id, update)
        if previous is not None and previous.content_sha256 != update.header.sha256:
            self._repeated(
                previous, update.header.sha256, org_id, update.round_id, update.phase, now
            )

    def submit_update(
        self, org_id: str, update: UpdateSubmission, payload: ReceivedPayload
    ) -> Acknowledgement:
        """Accept one participant's input into the round's running sum, exactly once."""
        return _retried(
            lambda: self._submit_update_once(org_id, update, payload),
            "update",
            {"round": update.round_id, "org": org_id},
        )

    def _submit_update_once(
        self, org_id: str, update: UpdateSubmission, payload: ReceivedPayload
    ) -> Acknowledgement:
        now = self._ctx.clock()
        with self._ctx.lock:
            with self._ctx.store.transaction() as tx:
                round_, previous = _round_and_previous(tx, update, org_id)
                if previous is None:
                    job = require_job(tx, update.job_id)
                    _check_fits(round_, update, org_id, now)
            if previous is not None:
                return self._repeated(
                    previous, update.header.sha256, org_id, update.round_id, update.phase, now
                )
            engine = self._engines[round_.protection]
            try:
                folded = engine.fold_input(round_, job, org_id, update, payload)
            except NotFound:
                self._raise_if_moved(round_)
                raise
            ack = Acknowledgement(self._ctx.new_id(), duplicate=False)
            updated = dataclasses.replace(
                round_,
                row_version=round_.row_version + 1,
                contributors=(*round_.contributors, org_id),
                total_weight=round_.total_weight + folded.examples,
                train_loss_sum=round_.train_loss_sum + update.train_loss * folded.examples,
                accumulator_ref=folded.accumulator_ref,
            )
            submission = Submission(
                round_.round_id,
                org_id,
                update.phase.value,
                update.header.sha256,
                update.header.total_bytes,
                folded.examples,
                ack.acknowledgement_id,
                now,
            )
            try:
                winner = self._record(round_, submission, updated, now)
            except StaleWrite:
                # Another writer moved the round: this sum was built on a stale one.
                self._ledger.discard_blob(folded.accumulator_ref)
                raise
            if winner is not None:
                return winner
            engine.input_recorded(round_, org_id, update)
            if folded.accumulator_ref != round_.accumulator_ref:
                self._ledger.discard_blob(round_.accumulator_ref)
        self._driver.tick()
        return ack

    def submit_message(
        self, org_id: str, message: MessageSubmission, certificate_pem: bytes
    ) -> Acknowledgement:
        """Accept one small secure-aggregation message, exactly once (duplicates acknowledged)."""
        return _retried(
            lambda: self._submit_message_once(org_id, message, certificate_pem),
            message.phase.value,
            {"round": message.round_id, "org": org_id},
        )

    def _submit_message_once(
        self, org_id: str, message: MessageSubmission, certificate_pem: bytes
    ) -> Acknowledgement:
        now = self._ctx.clock()
        digest = sha256(message.body)
        with self._ctx.lock:
            with self._ctx.store.transaction() as tx:
                round_, previous = _round_and_previous(tx, message, org_id)
                if previous is None:
                    job = require_job(tx, message.job_id)
                    row = self._engines[round_.protection].check_message(
                        tx, round_, job, org_id, message, certificate_pem, now
                    )
            # Checking a message can change the round (an exclusion replaces the running sum).
            for ref in tx.superseded_blobs:
                self._ledger.discard_blob(ref)
            if previous is not None:
                return self._repeated(
                    previous, digest, org_id, message.round_id, message.phase, now
                )
            ack = Acknowledgement(self._ctx.new_id(), duplicate=False)
            submission = Submission(
                round_.round_id,
                org_id,
                message.phase.value,
                digest,
                len(message.body),
                0,
                ack.acknowledgement_id,
                now,
            )
            # Bumping the row version serializes this with any concurrent phase change.
            bumped = dataclasses.replace(round_, row_version=round_.row_version + 1)
            winner = self._record(round_, submission, bumped, now, row)
            if winner is not None:
                return winner
        crash_point(f"coordinator.secagg.after_{message.phase.value}_commit")
        log.info(
            "%s message accepted",
            message.phase.value,
            **context(
                job=round_.job_id, round=str(round_.number), phase=message.phase.value, org=org_id
            ),
        )
        self._driver.tick()
        return ack

    def submit_ceremony(
        self, org_id: str, job_id: str, action: str, body: bytes, certificate_pem: bytes
    ) -> Acknowledgement:
        """Accept one key-ceremony message of a job, exactly once."""

        def attempt() -> Acknowledgement:
            try:
                return self._submit_ceremony_once(org_id, job_id, action, body, certificate_pem)
            except DuplicateKey as exc:
                # Another writer stored a row of this organization first: the next attempt
                # sees it and answers a repeat or a conflict.
                raise StaleWrite("a key-ceremony row was stored concurrently") from exc

        return _retried(attempt, f"key ceremony {action}", {"job": job_id, "org": org_id})

    def _submit_ceremony_once(
        self, org_id: str, job_id: str, action: str, body: bytes, certificate_pem: bytes
    ) -> Acknowledgement:
        now = self._ctx.clock()
        with self._ctx.lock:
            with self._ctx.store.transaction() as tx:
                job = require_job(tx, job_id)
                engine = self._engines[job.spec.protection]
                if not engine.has_key_ceremony:
                    raise WrongRoundPhase("this job has no key ceremony")
                if job.state is not JobState.RUNNING:
                    raise WrongRoundPhase(f"the job is {job.state.value}")
                # In the order accepted: a repeat is answered with the newest row's ack.
                existing = {
                    (m.kind, m.body): m for m in tx.list_job_messages(job_id) if m.org_id == org_id
                }
                accepted = list(existing.values())
                rows = engine.check_ceremony(tx, job, org_id, action, body, certificate_pem)
                repeats = [existing.get((kind, data)) for kind, data, _ in rows]
                stored = [m for m in repeats if m is not None]
                if len(stored) == len(rows):
                    latest = max(stored, key=accepted.index)
                    return Acknowledgement(latest.acknowledgement_id, duplicate=True)
                # A message may repeat rows already stored (a holder sealing for newcomers
                # resends the keys it sealed before): those are kept, the new rows added. A row
                # that replaces a stored one with other bytes is a conflict.
                rows = [row for row, repeat in zip(rows, repeats, strict=True) if repeat is None]
                kinds = {m.kind for m in existing.values()}
                conflict = any(kind in kinds for kind, _, _ in rows)
                ack = Acknowledgement(self._ctx.new_id(), duplicate=False)
                if not conflict:
                    for kind, data, pem in rows:
                        tx.add_job_message(
                            JobMessage(job_id, org_id, kind, data, pem, ack.acknowledgement_id, now)
                        )
            if conflict:
                with self._ctx.store.transaction() as tx:
                    tx.add_audit(
                        now, org_id, "ceremony.conflict", "rejected", f"job={job_id} {action}"
                    )
                raise ConflictingSubmission(
                    f"a different {action} message was already accepted for this job"
                )
            crash_point("coordinator.ceremony.after_commit")
        log.info("key ceremony: %s accepted", action, **context(job=job_id, org=org_id))
        self._driver.tick()
        return ack

    def _raise_if_moved(self, round_: Round) -> None:
        """StaleWrite if another writer changed the round since it was read: the running sum
        it named may be gone (superseded and deleted), which is a lost race, not a lost blob."""
        with self._ctx.store.transaction() as tx:
            current = tx.get_round(round_.round_id)
        if current is None or current.row_version != round_.row_version:
            raise StaleWrite(f"round {round_.round_id} changed while its sum was read")

    def _record(
        self,
        round_: Round,
        submission: Submission,
        updated: Round,
        now: float,
        message: PhaseMessage | None = None,
    ) -> Acknowledgement | None:
        """Store a submission (and its phase message) with the round's new state in one
        transaction. None when stored; the answer to give instead when an identical retry on
        another stream won the race (a different one is refused as a conflict)."""
        try:
            with self._ctx.store.transaction() as tx:
                tx.add_submission(submission)
                if message is not None:
                    tx.add_phase_message(message)
                tx.update_round(updated, expected_row_version=round_.row_version)
        except DuplicateKey as exc:
            with self._ctx.store.transaction() as tx:
                previous = tx.get_submission(round_.round_id, submission.org_id, submission.phase)
            if previous is None:
                # Another row of the round (a phase message) came first: try again from there.
                raise StaleWrite("a row of this round was stored concurrently") from exc
            return self._repeated(
                previous,
                submission.content_sha256,
                submission.org_id,
                round_.round_id,
                Phase(submission.phase),
                now,
            )
        return None

    def _repeated(
        self,
        previous: Submission,
        digest: bytes,
        org_id: str,
        round_id: str,
        phase: Phase,
        now: float,
    ) -> Acknowledgement:
        if previous.content_sha256 == digest:
            return Acknowledgement(previous.acknowledgement_id, duplicate=True)
        with self._ctx.store.transaction() as tx:
            tx.add_audit(
                now,
                org_id,
                "submission.conflict",
                "rejected",
                f"round={round_id} phase={phase.value}",
            )
        log.warning("conflicting re-submission rejected", **context(round=round_id, org=org_id))
        raise ConflictingSubmission(
            "a different submission was already accepted for this round and phase"
        )


def _round_and_previous(
    tx: Transaction, submission: UpdateSubmission | MessageSubmission, org_id: str
) -> tuple[Round, Submission | None]:
    """The round a submission names, and what org_id already had accepted for its phase."""
    round_ = tx.get_round(submission.round_id)
    if round_ is None or round_.job_id != submission.job_id:
        raise NotFound("no such round in this job")
    return round_, tx.get_submission(round_.round_id, org_id, submission.phase.value)


def _check_fits(round_: Round, update: UpdateSubmission, org_id: str, now: float) -> None:
    """An update fits its round: phase, cohort, deadline and the model version it trained."""
    check_phase(round_, update.phase, org_id, now)
    if update.base_version != round_.base_version:
        raise WrongRoundPhase(
            f"update is based on model version {update.base_version}, "
            f"the round trains version {round_.base_version}"
        )


def _retried(attempt: Callable[[], _T], what: str, fields: dict[str, str]) -> _T:
    """Run ``attempt`` again while another writer wins the compare-and-set (StaleWrite); each
    attempt reads the new state, so a repeat or a conflict is answered as such. The last
    StaleWrite is a ConcurrentUpdate: UNAVAILABLE to the caller."""
    for number in range(1, MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except StaleWrite:
            if number == MAX_ATTEMPTS:
                log.warning(
                    "%s lost the race for its round %d times; the caller retries",
                    what,
                    number,
                    **context(**fields),
                )
                raise
            log.info(
                "%s lost the race for its round; trying again (%d of %d)",
                what,
                number + 1,
                MAX_ATTEMPTS,
                **context(**fields),
            )
    raise AssertionError("unreachable")
