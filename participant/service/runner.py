"""The participant daemon's loop: wait for work, train or evaluate locally, answer exactly once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import numpy.typing as npt

from fedsilo.codec import encode_tensors
from fedsilo.logs import context
from fedsilo.privacy import privatize_weights
from fedsilo.protection import Protection
from fedsilo.tasks import LocalData, Task, TaskNotFoundError, TrainResult, as_float32, load_task
from participant.domain.assignments import Assignment, AssignmentKind, StepOutcome
from participant.errors import (
    CallFailed,
    CallStatus,
    NotSupported,
    ParticipantError,
    Revoked,
    Stopped,
    TaskFailed,
    UntrustedMessage,
    is_revocation,
)
from participant.service.answers import AnswerStore, StoredAnswer
from participant.service.calls import DaemonCalls
from participant.service.identity import OrgIdentity
from participant.service.job_terms import JobTermsStore
from participant.service.key_ceremony import CeremonyParticipant, KeyGenerator
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore
from participant.service.model_cache import ModelCache
from participant.service.paillier_jobs import PaillierJobs
from participant.service.paillier_state import PaillierStateStore
from participant.service.secagg_state import SecAggStateStore
from participant.service.secure_rounds import SecureRoundParticipant
from participant.service.version_zero import CheckedCalls, VersionZero
from secagg.paillier import PaillierWorkers

__all__ = ["ParticipantDaemon", "WorkObserver"]

log = logging.getLogger("participant")

# Answers the coordinator will never accept again: drop the work and ask for the next.
GIVE_UP = frozenset(
    {
        CallStatus.FAILED_PRECONDITION,
        CallStatus.NOT_FOUND,
        CallStatus.ALREADY_EXISTS,
        CallStatus.INVALID_ARGUMENT,
        CallStatus.PERMISSION_DENIED,
    }
)

T = TypeVar("T")


class WorkObserver(Protocol):
    """What the daemon's loop reports for monitoring (``participant.metrics``)."""

    def contact(self) -> None:
        """The coordinator answered a request for work."""
        ...

    def work(self, kind: str, outcome: str, seconds: float) -> None:
        """A work item of ``kind`` ended: ``answered``, ``unanswered`` (a secure step left
        unanswered), ``failed`` (it could not run here) or ``coordinator_error``."""
        ...

    def coordinator_error(self, code: str) -> None:
        """A call to the coordinator failed with the gRPC status ``code``."""
        ...


class ParticipantDaemon:
    """Runs until ``stop`` is set: outbound calls only, local data never leaves this process.

    ``identity`` gives the organization's key and certificate for secure aggregation; without it
    (a participant without TLS) secure-aggregation and paillier work is refused and plain rounds
    still run. ``paillier_states`` enables paillier jobs (their key ceremony, rounds and
    models); ``paillier_workers`` is the process pool for Paillier encryption and decryption,
    stopped when :meth:`run` returns; ``generate_paillier_key`` replaces the dealer's key
    generation (tests). ``job_terms`` holds the organization's own limits (``accept:``) and the
    terms of each job as first seen: every round it trains in or answers is checked against both;
    ``ledger`` is what it contributed to each job's secure rounds (one input per base version).
    ``membership`` holds the consortium CA's newest membership list, taken from the replies:
    every peer of a secure round or key ceremony must be a member it admits. Version 0 of a job
    built from its seed is built here when asked, and every downloaded version 0 of such a job
    is checked against it (``VersionZero``).
    """

    def __init__(
        self,
        client: DaemonCalls,
        answers: AnswerStore,
        secagg_states: SecAggStateStore,
        identity: Callable[[], OrgIdentity] | None,
        tasks: Mapping[str, str],
        task_config: Mapping[str, Any],
        stop: threading.Event,
        poll_seconds: float = 20.0,
        *,
        job_terms: JobTermsStore,
        ledger: ContributionLedger,
        membership: MembershipStore,
        paillier_states: PaillierStateStore | None = None,
        paillier_workers: PaillierWorkers | None = None,
        generate_paillier_key: KeyGenerator | None = None,
        observer: WorkObserver | None = None,
    ) -> None:
        self._observer = observer
        self._version_zero = VersionZero(tasks, job_terms.seeded)
        client = CheckedCalls(client, self._version_zero)
        self._client = client
        # A round's base version is the version the organization evaluates: fetched once.
        self._models = ModelCache(client)
        self._answers = answers
        self._terms = job_terms
        self._tasks = dict(tasks)
        self._task_config = dict(task_config)
        self._stop = stop
        self._poll = poll_seconds
        self._data: dict[tuple[str, str], tuple[Task, LocalData]] = {}
        self._membership = membership
        self._paillier: PaillierJobs | None = None
        self._ceremony: CeremonyParticipant | None = None
        if paillier_states is not None:
            self._paillier = PaillierJobs(
                paillier_states,
                client,
                identity=identity,
                membership=membership,
                ledger=ledger,
                workers=paillier_workers,
            )
            self._ceremony = CeremonyParticipant(
                client,
                paillier_states,
                identity,
                membership=membership,
                ledger=ledger,
                generate_key=generate_paillier_key,
                min_key_bits=job_terms.policy.min_paillier_key_bits,
            )
        self._secure = SecureRoundParticipant(
            client,
            secagg_states,
            answers,
            identity,
            self._train_round,
            terms=job_terms,
            ledger=ledger,
            membership=membership,
            paillier=self._paillier,
            models=self._models,
        )

    def run(self) -> None:
        log.info("participant daemon started")
        try:
            self._loop()
        finally:
            if self._paillier is not None:
                self._paillier.close()
        log.info("participant daemon stopped")

    def _loop(self) -> None:
        while not self._stop.is_set():
            assignment: Assignment | None = None
            try:
                if self._ceremony is not None:
                    # Key-ceremony messages a restart interrupted (the coordinator does not ask
                    # the dealer twice), and the report of a job this daemon stopped serving.
                    stopped = self._paillier is not None and self._paillier.take_new_stops()
                    self._ceremony.resume(again=stopped)
                reply = self._client.retrying(
                    lambda: self._client.get_assignment(
                        self._poll, self._secure.held_round_ids(), self._membership.serial
                    )
                )
                if self._observer is not None:
                    self._observer.contact()
                self._secure.finish_rounds(reply.finished_rounds)
                if reply.membership_list:
                    self._take_membership_list(reply.membership_list)
                assignment = reply.assignment
                if not self._observed(assignment) and self._client.pause():
                    # Work left unanswered (a refused secure round) is offered again at once:
                    # wait a backoff step rather than ask again in a tight loop.
                    break
            except Stopped:
                break
            except CallFailed as exc:
                if self._observer is not None:
                    self._observer.coordinator_error(exc.status.name)
                if is_revocation(exc) and not self._client.certificate_renewal_pending():
                    # Permanent: retrying would only fill the coordinator's audit log.
                    raise Revoked(
                        f"the coordinator refused this organization for good: {exc.details}"
                    ) from exc
                # A certificate revoked right after it was renewed (the call left on the old
                # channel a moment before the new files appeared, or they are not complete yet)
                # is not the end: the next call presents the renewed one.
                # A long-lived daemon outlives refusals (pending approval, a certificate being
                # rotated, a coordinator error): report and try again after a backoff.
                log.warning("coordinator answered %s: %s; retrying", exc.status.name, exc.details)
                if self._client.pause():
                    break
            except (ParticipantError, TaskNotFoundError) as exc:
                # A work item that cannot run (an untrusted task, missing support, a failing
                # task, damaged local state) is skipped; anything else is a defect and surfaces.
                log.error("cannot run this work item: %s", exc, **_work_context(assignment))
                if self._client.pause():
                    break

    def _observed(self, assignment: Assignment) -> bool:
        """``handle``, timed and reported to the observer with its outcome."""
        if self._observer is None:
            return self.handle(assignment)
        started = time.perf_counter()
        outcome = "failed"
        try:
            answered = self.handle(assignment)
            outcome = "answered" if answered else "unanswered"
            return answered
        except CallFailed:
            outcome = "coordinator_error"
            raise
        finally:
            self._observer.work(assignment.kind.value, outcome, time.perf_counter() - started)

    def handle(self, assignment: Assignment) -> bool:
        """Do one unit of work; False if a secure-aggregation or key-ceremony task was left
        unanswered."""
        ctx = _work_context(assignment)
        secure = assignment.kind in (AssignmentKind.SECAGG_STEP, AssignmentKind.KEY_CEREMONY) or (
            assignment.kind is AssignmentKind.TRAIN and assignment.protection is not Protection.NONE
        )
        # Before any model of the job is downloaded: whether its version 0 comes from a seed.
        self._version_zero.note(assignment)
        try:
            if assignment.kind is AssignmentKind.INITIAL_WEIGHTS:
                self._send_initial_weights(assignment)
                return True
            if assignment.kind is AssignmentKind.TRAIN and not secure:
                # Before anything is trained or sent: the organization's bounds and the job's
                # terms as first seen (UntrustedMessage names the setting; nothing is sent).
                # Secure rounds check the same in every phase (SecureRoundParticipant).
                self._terms.check(assignment)
            if assignment.kind is AssignmentKind.KEY_CEREMONY:
                return self._require_ceremony().step(assignment) is StepOutcome.ANSWERED
            if secure:
                if assignment.protection is Protection.PAILLIER and self._paillier is None:
                    raise NotSupported("protection paillier is not supported by this participant")
                return self._secure.step(assignment) is StepOutcome.ANSWERED
            if assignment.kind is AssignmentKind.TRAIN:
                if self._paillier is not None and self._paillier.is_paillier_job(assignment.job_id):
                    # The coordinator would see this organization's update in the clear.
                    raise UntrustedMessage("refusing a round without protection in a paillier job")
                self._train(assignment)
            elif assignment.kind is AssignmentKind.EVALUATE:
                self._evaluate(assignment)
        except CallFailed as exc:
            if exc.status not in GIVE_UP:
                raise
            log.warning("coordinator refused: %s", exc.details, **ctx)
            return not secure
        return True

    def _take_membership_list(self, document: bytes) -> None:
        """Keep a newer list the CA signed; a refused one is logged and the held one stays."""
        try:
            self._membership.offer(document)
        except ParticipantError as exc:
            log.error("%s", exc)

    def _require_ceremony(self) -> CeremonyParticipant:
        if self._ceremony is None:
            raise NotSupported("protection paillier is not supported by this participant")
        return self._ceremony

    def _model(self, assignment: Assignment) -> tuple[int, list[npt.NDArray[Any]]]:
        """The global model the assignment names; rebuilt from encrypted versions in a paillier
        job (its versions after 0 exist only encrypted at the coordinator)."""
        job_id, version = assignment.job_id, assignment.model_version
        if self._paillier is not None and (
            assignment.protection is Protection.PAILLIER or self._paillier.is_paillier_job(job_id)
        ):
            return self._paillier.model(job_id, version, assignment.strategy)
        if assignment.protection is Protection.PAILLIER:
            raise NotSupported("protection paillier is not supported by this participant")
        model = self._models.fetch(job_id, version)
        return model.version, model.weights

    def _task_and_data(self, assignment: Assignment) -> tuple[Task, LocalData]:
        key = (assignment.job_id, assignment.task_name)
        if key not in self._data:
            task = load_task(assignment.task_name, self._tasks or None)
            # The organization's own settings (where its data lives) win over the job's.
            config = {**assignment.task_config, **self._task_config}
            self._data[key] = (task, _task_call(lambda: task.load_data(config)))
        return self._data[key]

    def _train(self, assignment: Assignment) -> None:
        ctx = context(
            job=assignment.job_id, round=str(assignment.round_number), phase=assignment.phase
        )
        answer = self._answers.load(assignment.round_id, assignment.phase)
        if answer is None:
            task, data = self._task_and_data(assignment)
            model = self._models.fetch(assignment.job_id, assignment.model_version)
            version, weights = model.version, model.weights
            if version != assignment.model_version:
                log.warning(
                    "coordinator sent version %d, expected %d",
                    version,
                    assignment.model_version,
                    **ctx,
                )
                return
            result = _task_call(lambda: task.train(weights, data, assignment.round_settings()))
            sent, weight = as_float32(result.weights), result.num_examples
            if assignment.privacy.enabled:
                # Clipped delta plus this organization's noise share, weight 1: the coordinator
                # averages without example counts (docs/differential-privacy.md).
                sent = privatize_weights(
                    weights, sent, assignment.privacy, assignment.min_participants
                )
                weight = 1
            header, payload = _task_call(lambda: encode_tensors(sent))
            # Saved before it is sent: a retry sends the same noisy update, never a fresh draw.
            answer = StoredAnswer(header, payload, weight, float(result.loss))
            self._answers.save(assignment.round_id, assignment.phase, answer)
            log.info("trained on %d examples, loss %.4f", result.num_examples, result.loss, **ctx)
        else:
            log.info("re-sending the stored answer for this round", **ctx)
        stored = answer
        receipt = self._client.retrying(
            lambda: self._client.submit_update(
                assignment, stored.num_examples, stored.train_loss, stored.header, stored.payload
            )
        )
        log.info("update acknowledged%s", " (duplicate)" if receipt.duplicate else "", **ctx)

    def _send_initial_weights(self, assignment: Assignment) -> None:
        """Build the job's version 0 from its seed and send it: nothing private is used."""
        # The job's terms as first seen (its seed among them) and the organization's bounds.
        self._terms.check(assignment)
        header, payload = self._version_zero.build(assignment.job_id)
        receipt = self._client.retrying(
            lambda: self._client.submit_initial_weights(assignment.job_id, header, payload)
        )
        log.info(
            "version 0 built from seed %d and sent (sha256 %s)%s",
            assignment.training.seed,
            header.sha256.hex()[:12],
            " (duplicate)" if receipt.duplicate else "",
            **context(job=assignment.job_id),
        )

    def _train_round(self, assignment: Assignment, weights: list[npt.NDArray[Any]]) -> TrainResult:
        """Local training for a secure round, exactly as for a plain one (same round seed)."""
        task, data = self._task_and_data(assignment)
        return _task_call(lambda: task.train(weights, data, assignment.round_settings()))

    def _evaluate(self, assignment: Assignment) -> None:
        task, data = self._task_and_data(assignment)
        version, weights = self._model(assignment)
        result = _task_call(lambda: task.evaluate(weights, data))
        self._client.retrying(
            lambda: self._client.report_metrics(
                assignment.job_id, version, result.num_examples, result.loss, result.accuracy
            )
        )
        log.info(
            "model version %d: loss %.4f accuracy %.4f on %d held-out examples",
            version,
            result.loss,
            result.accuracy,
            result.num_examples,
            **context(job=assignment.job_id),
        )


def _work_context(assignment: Assignment | None) -> dict[str, Any]:
    """The log context of a work item: its job and round, where it has them."""
    if assignment is None:
        return context()
    return context(job=assignment.job_id or None, round=str(assignment.round_number or "-"))


def _task_call(call: Callable[[], T]) -> T:
    """Run the organization's task code: the errors a task raises for settings, data or
    weights it cannot use (``ValueError``, ``ArithmeticError``) fail this work item only."""
    try:
        return call()
    except (ValueError, ArithmeticError) as exc:
        raise TaskFailed(str(exc)) from exc
