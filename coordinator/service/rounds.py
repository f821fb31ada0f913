"""Coordinator use cases: jobs, rounds, submissions, FedAvg aggregation, metrics and membership.

Every use case runs in one database transaction. State changes of a round go through the pure
``transition`` of the domain and are written with a compare-and-set on the round's row version.
A single process-wide lock serializes writers, so the running FedAvg sum is read, extended and
written back by one submitter at a time; the accumulator lives in the blob store, so memory is
O(model) whatever the number of participants.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.domain.jobs import (
    Job,
    JobMessage,
    JobSpec,
    JobState,
    MetricReport,
    ModelVersion,
    ParticipantStatus,
    PhaseMessage,
    Submission,
)
from coordinator.domain.rounds import Phase, Round, RoundEvent, transition
from coordinator.errors import (
    ConflictingSubmission,
    InvalidInput,
    NotFound,
    WrongPhase,
)
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import DuplicateKey, Store, Transaction
from coordinator.service.key_ceremony import CeremonyStep, KeyCeremony
from coordinator.service.secure_rounds import SMALL_PHASES, SecAggStep, SecureRounds
from fedsilo.codec import (
    CodecError,
    PayloadHeader,
    TensorSpec,
    check_finite,
    decode_tensors,
    encode_tensors,
)
from fedsilo.faults import crash_point
from fedsilo.logs import context
from fedsilo.protection import Protection
from secagg.errors import SecAggError

__all__ = [
    "Acknowledgement",
    "CoordinatorService",
    "CoordinatorSettings",
    "JobView",
    "MessageSubmission",
    "MetricsSummary",
    "RoundOutcome",
    "UpdateSubmission",
    "WorkItem",
    "WorkKind",
]

log = logging.getLogger("coordinator")

_SECURE = frozenset({Protection.SECAGG, Protection.PAILLIER})
"""Protections whose rounds run the secure-aggregation phases."""

_MAX_HELD_ROUNDS = 100
"""At most this many held rounds are looked up per GetTask call."""


@dataclass(frozen=True)
class CoordinatorSettings:
    """Operational limits of the coordinator (see docs/configuration.md)."""

    liveness_seconds: float = 30.0
    max_payload_bytes: int = 1 << 30
    max_examples: int = 1 << 40


class WorkKind(enum.StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    SECAGG_STEP = "secagg_step"
    KEY_CEREMONY = "key_ceremony"


@dataclass(frozen=True)
class WorkItem:
    """What a participant should do next."""

    kind: WorkKind
    job: Job | None = None
    round: Round | None = None
    model_version: int = 0
    seconds_left: float = 0.0
    secagg: SecAggStep | None = None
    ceremony: CeremonyStep | None = None


@dataclass(frozen=True)
class RoundOutcome:
    """How a round a participant asked about ended (COMMITTED or ABORTED)."""

    round_id: str
    phase: Phase
    reason: str


@dataclass(frozen=True)
class MessageSubmission:
    """A small secure-aggregation message (KEYS, SHARES, CONSISTENCY, UNMASK) as received."""

    job_id: str
    round_id: str
    phase: Phase
    body: bytes


@dataclass(frozen=True)
class UpdateSubmission:
    """A participant's update for one round, as received (payload checked separately)."""

    job_id: str
    round_id: str
    phase: Phase
    base_version: int
    num_examples: int
    train_loss: float
    header: PayloadHeader


@dataclass(frozen=True)
class Acknowledgement:
    acknowledgement_id: str
    duplicate: bool


@dataclass(frozen=True)
class MetricsSummary:
    """Evaluation of one model version, weighted by each reporter's number of examples."""

    version: int
    reports: int
    num_examples: int
    loss: float
    accuracy: float


@dataclass(frozen=True)
class JobView:
    """A job with its rounds and per-version metrics, for status displays."""

    job: Job
    rounds: tuple[Round, ...]
    metrics: tuple[MetricsSummary, ...]


class CoordinatorService:
    """The coordinator's use cases over a Store and a BlobStore."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        settings: CoordinatorSettings | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._settings = settings or CoordinatorSettings()
        self._clock = clock
        self._new_id = new_id
        self._secure = SecureRounds(blobs)
        self._ceremony = KeyCeremony()
        self._lock = threading.RLock()
        # Per organization: the ceremony steps offered since it was last given other work.
        self._ceremony_offered: dict[str, set[int]] = {}
        self._changed = threading.Condition()
        self._generation = 0

    @property
    def settings(self) -> CoordinatorSettings:
        return self._settings

    # -- change notification (long polls) -------------------------------------------------------

    def _notify(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait_for_work(
        self, org_id: str, wait_seconds: float, still_wanted: Callable[[], bool] = lambda: True
    ) -> WorkItem:
        """Long poll: return as soon as there is work for org_id, or WAIT after wait_seconds."""
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            with self._changed:
                generation = self._generation
            item = self.next_work(org_id)
            remaining = deadline - time.monotonic()
            if item.kind is not WorkKind.WAIT or remaining <= 0 or not still_wanted():
                return item
            with self._changed:
                if self._generation == generation:
                    self._changed.wait(timeout=min(remaining, 1.0))

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, spec: JobSpec, header: PayloadHeader, payload: bytes, actor: str) -> Job:
        """Validate the spec and initial weights, store them as model version 0."""
        spec.validate()
        weights = _decode(header, payload, self._settings.max_payload_bytes)
        for index, array in enumerate(weights):
            if array.dtype != np.float32:
                raise InvalidInput(
                    f"initial weight tensor {index} must be float32, not {array.dtype}"
                )
        check_finite_or_invalid(weights)
        now = self._clock()
        job = Job(
            job_id=self._new_id(),
            spec=spec,
            state=JobState.CREATED,
            model_version=0,
            weight_specs=header.tensors,
            created_at=now,
        )
        blob_ref = self._blobs.put(payload)
        with self._lock, self._store.transaction() as tx:
            tx.add_job(job)
            tx.add_model_version(ModelVersion(job.job_id, 0, blob_ref, None, now))
            tx.add_audit(now, actor, "job.create", "ok", f"job={job.job_id} task={spec.task_name}")
        log.info(
            "job created: %s (%d rounds, protection %s)",
            spec.name,
            spec.num_rounds,
            spec.protection.value,
            **context(job=job.job_id),
        )
        if spec.protection is Protection.NONE:
            log.warning(
                "job %s uses protection 'none': the coordinator sees every update in the clear",
                spec.name,
                **context(job=job.job_id),
            )
        return job

    def start_job(self, job_id: str, actor: str) -> Job:
        with self._lock, self._store.transaction() as tx:
            job = _require_job(tx, job_id)
            if job.state is not JobState.CREATED:
                raise WrongPhase(f"job is {job.state.value}; only a created job can be started")
            job = dataclasses.replace(job, state=JobState.RUNNING)
            tx.update_job(job)
            tx.add_audit(self._clock(), actor, "job.start", "ok", f"job={job_id}")
        log.info("job started", **context(job=job_id))
        self.tick()
        return job

    def get_job(self, job_id: str) -> JobView:
        with self._store.transaction() as tx:
            job = _require_job(tx, job_id)
            return JobView(job, tuple(tx.list_rounds(job_id)), _summaries(tx.list_metrics(job_id)))

    def list_jobs(self) -> list[JobView]:
        with self._store.transaction() as tx:
            return [
                JobView(j, tuple(tx.list_rounds(j.job_id)), _summaries(tx.list_metrics(j.job_id)))
                for j in tx.list_jobs()
            ]

    def read_model(
        self, job_id: str, version: int, *, encrypted: bool = False
    ) -> tuple[int, PayloadHeader, bytes]:
        """A committed model version (-1: the latest): its number, header and payload.

        Versions after 0 of a paillier job exist only encrypted (the summed ciphertexts and the
        mask correction): they are served only with ``encrypted`` (to participants, who hold
        the key); anyone else is told to export the model from a participant.
        """
        with self._store.transaction() as tx:
            job = _require_job(tx, job_id)
            wanted = job.model_version if version < 0 else version
            model = tx.get_model_version(job_id, wanted)
        if model is None:
            raise NotFound(f"model version {version} does not exist for this job")
        payload = self._blobs.get(model.blob_ref)
        specs = job.weight_specs
        if job.spec.protection is Protection.PAILLIER and wanted >= 1:
            if not encrypted:
                raise WrongPhase(
                    "the models of a paillier job exist only encrypted at the coordinator; "
                    "export the model from a participant "
                    "(fedsilo model export --participant-config ORG.yaml)"
                )
            correction = self._secure.input_spec(job)
            size = len(payload) - correction.nbytes
            specs = (TensorSpec("uint8", (size,)), correction)
        return wanted, PayloadHeader(specs, len(payload), _sha256(payload)), payload

    # -- participant work -----------------------------------------------------------------------

    def next_work(self, org_id: str) -> WorkItem:
        """What org_id should do next, most latency-sensitive first.

        1. A small secure-aggregation step (KEYS, SHARES, CONSISTENCY, UNMASK): the whole cohort
           waits for it and it takes milliseconds.
        2. A key-ceremony step of a paillier job.
        3. EVALUATE the latest model it helped build, unless it takes part in a small phase now
           (then it waits for the next step instead of holding the cohort up).
        4. TRAIN in an open round (plain, or the masked INPUTS of a secure round).
        5. WAIT.

        A participant refuses a ceremony step by going silent, and nothing ends a ceremony step
        the way a phase deadline ends a round's: a ceremony step offered before and still
        unanswered therefore alternates with the organization's other work (its other jobs'
        ceremonies first), so one refused job never starves the others.
        """
        now = self._clock()
        with self._store.transaction() as tx:
            work = self._round_and_model_work(tx, org_id, now)
            if work.kind is WorkKind.SECAGG_STEP:
                return work
            ceremonies = [
                WorkItem(WorkKind.KEY_CEREMONY, job, ceremony=step)
                for job in tx.list_jobs((JobState.RUNNING,))
                if job.spec.protection is Protection.PAILLIER
                and (
                    step := self._ceremony.step_for(
                        tx, job, org_id, self._secure.job_parameters(job)
                    )
                )
                is not None
            ]
        if not ceremonies:
            return work
        with self._lock:
            offered = self._ceremony_offered.setdefault(org_id, set())
            fresh = [item for item in ceremonies if _ceremony_key(item) not in offered]
            if not fresh:
                # Every step was offered since the last other work: that work's turn, if any.
                offered.clear()
                if work.kind is not WorkKind.WAIT:
                    return work
                fresh = ceremonies
            offered.add(_ceremony_key(fresh[0]))
            return fresh[0]

    def _round_and_model_work(self, tx: Transaction, org_id: str, now: float) -> WorkItem:
        """org_id's work in open rounds and models to evaluate (1, 3, 4 and 5 of next_work)."""
        training: WorkItem | None = None
        in_small_phase = False
        for round_ in tx.open_rounds():
            if org_id not in round_.cohort or now > round_.deadline_at:
                continue
            item = self._round_work(tx, round_, org_id, now)
            if item is not None and item.kind is WorkKind.SECAGG_STEP:
                return item
            training = training or item
            in_small_phase = in_small_phase or (
                round_.protection in _SECURE
                and round_.phase in (Phase.CREATED, *SMALL_PHASES)
                and org_id in self._secure.expected(tx, round_)
            )
        if in_small_phase:
            return WorkItem(WorkKind.WAIT)
        for job in tx.list_jobs((JobState.RUNNING, JobState.COMPLETED)):
            if (
                job.model_version >= 1
                and tx.get_metric(job.job_id, job.model_version, org_id) is None
            ):
                latest = tx.get_model_version(job.job_id, job.model_version)
                producer = tx.get_round(latest.round_id) if latest and latest.round_id else None
                if producer is not None and org_id in producer.contributors:
                    return WorkItem(WorkKind.EVALUATE, job, None, job.model_version)
        return training or WorkItem(WorkKind.WAIT)

    def _round_work(
        self, tx: Transaction, round_: Round, org_id: str, now: float
    ) -> WorkItem | None:
        """The work org_id has in one open round it belongs to, if any."""
        left = round_.deadline_at - now
        if round_.protection in _SECURE:
            job = _require_job(tx, round_.job_id)
            step = self._secure.step_for(tx, round_, job, org_id)
            if step is None:
                return None
            kind = WorkKind.TRAIN if round_.phase is Phase.INPUTS else WorkKind.SECAGG_STEP
            return WorkItem(kind, job, round_, round_.base_version, left, step)
        if round_.phase is Phase.INPUTS and org_id not in round_.contributors:
            job = _require_job(tx, round_.job_id)
            return WorkItem(WorkKind.TRAIN, job, round_, round_.base_version, left)
        return None

    def round_outcomes(self, round_ids: list[str]) -> list[RoundOutcome]:
        """Of the given rounds, those that ended; an unknown round counts as aborted."""
        outcomes = []
        with self._store.transaction() as tx:
            for round_id in round_ids[:_MAX_HELD_ROUNDS]:
                round_ = tx.get_round(round_id)
                if round_ is None:
                    outcomes.append(RoundOutcome(round_id, Phase.ABORTED, "no such round"))
                elif round_.is_terminal:
                    outcomes.append(RoundOutcome(round_id, round_.phase, round_.abort_reason or ""))
        return outcomes

    def submit_ceremony(
        self, org_id: str, job_id: str, action: str, body: bytes, certificate_pem: bytes
    ) -> Acknowledgement:
        """Accept one key-ceremony message of a paillier job, exactly once."""
        now = self._clock()
        with self._lock:
            with self._store.transaction() as tx:
                job = _require_job(tx, job_id)
                if job.spec.protection is not Protection.PAILLIER:
                    raise WrongPhase("this job has no key ceremony")
                if job.state is not JobState.RUNNING:
                    raise WrongPhase(f"the job is {job.state.value}")
                # In the order accepted: a repeat is answered with the newest row's ack.
                existing = {
                    (m.kind, m.body): m for m in tx.list_job_messages(job_id) if m.org_id == org_id
                }
                accepted = list(existing.values())
                rows = self._ceremony.check(tx, job, org_id, action, body, certificate_pem)
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
                ack = Acknowledgement(self._new_id(), duplicate=False)
                if not conflict:
                    for kind, data, pem in rows:
                        tx.add_job_message(
                            JobMessage(job_id, org_id, kind, data, pem, ack.acknowledgement_id, now)
                        )
            if conflict:
                with self._store.transaction() as tx:
                    tx.add_audit(
                        now, org_id, "ceremony.conflict", "rejected", f"job={job_id} {action}"
                    )
                raise ConflictingSubmission(
                    f"a different {action} message was already accepted for this job"
                )
            crash_point("coordinator.ceremony.after_commit")
        log.info("key ceremony: %s accepted", action, **context(job=job_id, org=org_id))
        self.tick()
        return ack

    def submit_message(
        self, org_id: str, message: MessageSubmission, certificate_pem: bytes
    ) -> Acknowledgement:
        """Accept one small secure-aggregation message, exactly once (duplicates acknowledged)."""
        now = self._clock()
        digest = _sha256(message.body)
        with self._lock:
            with self._store.transaction() as tx:
                round_ = tx.get_round(message.round_id)
                if round_ is None or round_.job_id != message.job_id:
                    raise NotFound("no such round in this job")
                previous = tx.get_submission(round_.round_id, org_id, message.phase.value)
                if previous is None:
                    job = _require_job(tx, message.job_id)
                    if round_.protection not in _SECURE:
                        raise WrongPhase("this round does not use secure aggregation")
                    if message.phase not in SMALL_PHASES:
                        raise InvalidInput(
                            f"phase {message.phase.value} is not answered with a message"
                        )
                    self._check_phase(round_, message.phase, org_id, now)
                    row = self._secure.check_message(
                        tx, round_, job, org_id, message.phase, message.body, certificate_pem
                    )
            if previous is not None:
                return self._repeated(
                    previous, digest, org_id, message.round_id, message.phase, now
                )
            ack = Acknowledgement(self._new_id(), duplicate=False)
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
        self.tick()
        return ack

    def submit_update(
        self, org_id: str, update: UpdateSubmission, payload: bytes
    ) -> Acknowledgement:
        """Accept one participant's update into the round's running weighted sum, exactly once."""
        now = self._clock()
        with self._lock:
            with self._store.transaction() as tx:
                round_ = tx.get_round(update.round_id)
                if round_ is None or round_.job_id != update.job_id:
                    raise NotFound("no such round in this job")
                previous = tx.get_submission(round_.round_id, org_id, update.phase.value)
                if previous is None:
                    job = _require_job(tx, update.job_id)
                    self._check_admissible(round_, update, org_id, now)
            if previous is not None:
                return self._repeated(
                    previous, update.header.sha256, org_id, update.round_id, update.phase, now
                )
            if round_.protection in _SECURE:
                return self._submit_masked(org_id, round_, job, update, payload, now)
            weights = _decode(update.header, payload, self._settings.max_payload_bytes)
            _check_layout(weights, job)
            check_finite_or_invalid(weights)
            if not 1 <= update.num_examples <= self._settings.max_examples:
                raise InvalidInput(
                    f"num_examples must be between 1 and {self._settings.max_examples}"
                )
            if not np.isfinite(update.train_loss):
                raise InvalidInput("train_loss must be finite")
            accumulator = self._accumulator(round_, job)
            for acc, array in zip(accumulator, weights, strict=True):
                acc += array.astype(np.float64) * float(update.num_examples)
            _, acc_payload = encode_tensors(accumulator)
            acc_ref = self._blobs.put(acc_payload)
            ack = Acknowledgement(self._new_id(), duplicate=False)
            updated = dataclasses.replace(
                round_,
                row_version=round_.row_version + 1,
                contributors=(*round_.contributors, org_id),
                total_weight=round_.total_weight + update.num_examples,
                train_loss_sum=round_.train_loss_sum + update.train_loss * update.num_examples,
                accumulator_ref=acc_ref,
            )
            submission = _update_submission(round_, org_id, update, update.num_examples, ack, now)
            winner = self._record(round_, submission, updated, now)
            if winner is not None:
                return winner
            self._discard_blob(round_.accumulator_ref)
        log.info(
            "update accepted (%d examples, %d bytes)",
            update.num_examples,
            update.header.total_bytes,
            **context(job=round_.job_id, round=str(round_.number), phase="inputs", org=org_id),
        )
        self.tick()
        return ack

    def _submit_masked(
        self,
        org_id: str,
        round_: Round,
        job: Job,
        update: UpdateSubmission,
        payload: bytes,
        now: float,
    ) -> Acknowledgement:
        """Add a masked input to the round's running sum modulo R (caller holds the lock)."""
        if update.num_examples != 0 or update.train_loss != 0.0:
            raise InvalidInput(
                "under secure aggregation the example count travels inside the masked input: "
                "num_examples and train_loss must be 0"
            )
        if update.header.total_bytes > self._settings.max_payload_bytes:
            raise InvalidInput(
                f"payload of {update.header.total_bytes} bytes exceeds the "
                f"{self._settings.max_payload_bytes}-byte limit"
            )
        with self._store.transaction() as tx:
            if round_.protection is Protection.PAILLIER:
                self._secure.check_encrypted_input(tx, round_, job, org_id, update.header)
                public_key = self._ceremony.public_key(tx, job.job_id)
            else:
                self._secure.check_masked_input(tx, round_, job, org_id, update.header)
        try:
            if round_.protection is Protection.PAILLIER:
                assert public_key is not None  # rounds open only after the key was dealt
                (data,) = decode_tensors(update.header, payload)
                sum_ref = self._secure.add_encrypted(round_, job, public_key, data.tobytes())
            else:
                sum_ref, _ = self._secure.add_input(round_, job, update.header, payload)
        except CodecError as exc:
            raise InvalidInput(str(exc)) from exc
        ack = Acknowledgement(self._new_id(), duplicate=False)
        updated = dataclasses.replace(
            round_,
            row_version=round_.row_version + 1,
            contributors=(*round_.contributors, org_id),
            accumulator_ref=sum_ref,
        )
        submission = _update_submission(round_, org_id, update, 0, ack, now)
        winner = self._record(round_, submission, updated, now)
        if winner is not None:
            return winner
        crash_point("coordinator.secagg.after_inputs_commit")
        if sum_ref != round_.accumulator_ref:
            self._discard_blob(round_.accumulator_ref)
        log.info(
            "masked input accepted (%d bytes)",
            update.header.total_bytes,
            **context(job=round_.job_id, round=str(round_.number), phase="inputs", org=org_id),
        )
        self.tick()
        return ack

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
            with self._store.transaction() as tx:
                tx.add_submission(submission)
                if message is not None:
                    tx.add_phase_message(message)
                tx.update_round(updated, expected_row_version=round_.row_version)
        except DuplicateKey:
            with self._store.transaction() as tx:
                previous = tx.get_submission(round_.round_id, submission.org_id, submission.phase)
            if previous is None:
                raise
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
        with self._store.transaction() as tx:
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

    def _discard_blob(self, ref: str | None) -> None:
        """Delete a superseded blob unless another round or model version still points at it.

        Blobs are content-addressed, so two jobs whose running sums happen to be equal share one.
        """
        if ref is None:
            return
        with self._store.transaction() as tx:
            in_use = tx.blob_in_use(ref)
        if not in_use:
            self._blobs.delete(ref)

    @staticmethod
    def _check_phase(round_: Round, phase: Phase, org_id: str, now: float) -> None:
        if round_.phase is not phase:
            raise WrongPhase(f"round is in phase {round_.phase.value}, not {phase.value}")
        if org_id not in round_.cohort:
            raise WrongPhase("this organization is not in the round's cohort")
        if now > round_.deadline_at:
            raise WrongPhase("the phase deadline has passed")

    @classmethod
    def _check_admissible(
        cls, round_: Round, update: UpdateSubmission, org_id: str, now: float
    ) -> None:
        cls._check_phase(round_, update.phase, org_id, now)
        if update.base_version != round_.base_version:
            raise WrongPhase(
                f"update is based on model version {update.base_version}, "
                f"the round trains version {round_.base_version}"
            )

    def _accumulator(self, round_: Round, job: Job) -> list[npt.NDArray[np.float64]]:
        if round_.accumulator_ref is None:
            return [np.zeros(s.shape, dtype=np.float64) for s in job.weight_specs]
        payload = self._blobs.get(round_.accumulator_ref)
        header = PayloadHeader(
            tuple(dataclasses.replace(s, dtype="float64") for s in job.weight_specs),
            len(payload),
            _sha256(payload),
        )
        return decode_tensors(header, payload)

    def report_metrics(self, report: MetricReport) -> bool:
        """Store one evaluation; returns True for an identical repeat."""
        if report.num_examples < 1:
            raise InvalidInput("num_examples must be at least 1")
        if not (np.isfinite(report.loss) and np.isfinite(report.accuracy)):
            raise InvalidInput("loss and accuracy must be finite")
        if not 0.0 <= report.accuracy <= 1.0:
            raise InvalidInput("accuracy must be between 0 and 1")
        with self._lock, self._store.transaction() as tx:
            job = _require_job(tx, report.job_id)
            if not 0 <= report.version <= job.model_version:
                raise NotFound(f"model version {report.version} does not exist for this job")
            previous = tx.get_metric(report.job_id, report.version, report.org_id)
            if previous is not None:
                same = (previous.num_examples, previous.loss, previous.accuracy) == (
                    report.num_examples,
                    report.loss,
                    report.accuracy,
                )
                if same:
                    return True
                raise ConflictingSubmission(
                    "different metrics were already reported for this version"
                )
            tx.add_metric(report)
        self._notify()
        return False

    # -- the driver -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance every job: finish or abort rounds, commit aggregates, open new rounds."""
        changed = False
        with self._lock:
            with self._store.transaction() as tx:
                open_rounds = tx.open_rounds()
                running = tx.list_jobs((JobState.RUNNING,))
            for round_ in open_rounds:
                changed |= self._advance_round(round_)
            busy = {r.job_id for r in open_rounds}
            for job in running:
                if job.job_id not in busy:
                    changed |= self._open_round(job)
        if changed:
            self._notify()

    def _advance_round(self, round_: Round) -> bool:
        now = self._clock()
        if round_.protection in _SECURE and round_.phase in (
            Phase.CREATED,
            *SMALL_PHASES,
            Phase.INPUTS,
        ):
            return self._advance_secure(round_, now)
        if round_.phase is Phase.CREATED:
            self._write_transition(round_, RoundEvent.PHASE_COMPLETE, now)
            return True
        if round_.phase is Phase.INPUTS:
            everyone = set(round_.contributors) >= set(round_.cohort)
            if not everyone and now <= round_.deadline_at:
                return False
            with self._store.transaction() as tx:
                job = _require_job(tx, round_.job_id)
            if len(round_.contributors) < job.spec.min_participants:
                self._abort(
                    round_,
                    job,
                    f"deadline passed with {len(round_.contributors)} of "
                    f"{job.spec.min_participants} required updates",
                    now,
                )
                return True
            self._aggregate(round_, job, now)
            return True
        if round_.phase is Phase.AGGREGATED:
            self._commit(round_, now)
            return True
        return False

    def _advance_secure(self, round_: Round, now: float) -> bool:
        """Close the current secagg phase once everyone expected answered, or at its deadline."""
        with self._store.transaction() as tx:
            job = _require_job(tx, round_.job_id)
            expected = self._secure.expected(tx, round_)
            answered = self._secure.senders(tx, round_, round_.phase)
        spec = job.spec
        phase_deadline = now + spec.phase_timeout_seconds
        if round_.phase is Phase.CREATED:
            self._write_transition(
                round_, RoundEvent.PHASE_COMPLETE, now, deadline_at=phase_deadline
            )
            return True
        if set(answered) < set(expected) and now <= round_.deadline_at:
            return False
        threshold = spec.secagg.threshold_for(len(round_.cohort))
        needed = (
            max(threshold, spec.min_participants) if round_.phase is Phase.INPUTS else threshold
        )
        if len(answered) < needed:
            self._abort(
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
        self._write_transition(
            round_, RoundEvent.PHASE_COMPLETE, now, deadline_at=following_deadline
        )
        return True

    def _unmask(self, round_: Round, job: Job, now: float) -> None:
        """Reconstruct the masks from the UNMASK answers and store the new model (AGGREGATED)."""
        if round_.protection is Protection.PAILLIER:
            try:
                with self._store.transaction() as tx:
                    payload = self._secure.encrypted_result(tx, round_, job)
            except SecAggError as exc:
                self._abort(round_, job, f"unmasking failed: {exc}", now)
                return
            result_ref = self._blobs.put(payload)
            crash_point("coordinator.secagg.before_aggregated")
            self._write_transition(round_, RoundEvent.PHASE_COMPLETE, now, result_ref=result_ref)
            return
        _, base_header, base_payload = self.read_model(job.job_id, round_.base_version)
        base = decode_tensors(base_header, base_payload)
        try:
            with self._store.transaction() as tx:
                result = self._secure.unmask(tx, round_, job, base)
        except SecAggError as exc:
            self._abort(round_, job, f"unmasking failed: {exc}", now)
            return
        _, payload = encode_tensors(result.weights)
        result_ref = self._blobs.put(payload)
        crash_point("coordinator.secagg.before_aggregated")
        self._write_transition(
            round_,
            RoundEvent.PHASE_COMPLETE,
            now,
            result_ref=result_ref,
            total_weight=result.total_weight,
        )

    def _write_transition(
        self, round_: Round, event: RoundEvent, now: float, **changes: Any
    ) -> Round:
        following = dataclasses.replace(transition(round_, event, now=now), **changes)
        with self._store.transaction() as tx:
            tx.update_round(following, expected_row_version=round_.row_version)
        log.info(
            "round %s -> %s",
            round_.phase.value,
            following.phase.value,
            **context(job=round_.job_id, round=str(round_.number), phase=following.phase.value),
        )
        return following

    def _aggregate(self, round_: Round, job: Job, now: float) -> None:
        """Weighted FedAvg: the running sum divided by the total number of examples."""
        accumulator = self._accumulator(round_, job)
        mean = [(acc / float(round_.total_weight)).astype(np.float32) for acc in accumulator]
        _, payload = encode_tensors(mean)
        result_ref = self._blobs.put(payload)
        self._write_transition(round_, RoundEvent.PHASE_COMPLETE, now, result_ref=result_ref)

    def _commit(self, round_: Round, now: float) -> None:
        following = transition(round_, RoundEvent.PHASE_COMPLETE, now=now)
        assert round_.result_ref is not None  # AGGREGATED always carries its result
        with self._store.transaction() as tx:
            job = _require_job(tx, round_.job_id)
            version = round_.base_version + 1
            tx.add_model_version(
                ModelVersion(job.job_id, version, round_.result_ref, round_.round_id, now)
            )
            state = JobState.COMPLETED if version >= job.spec.num_rounds else job.state
            tx.update_job(
                dataclasses.replace(job, model_version=version, state=state, failed_rounds=0)
            )
            tx.update_round(following, expected_row_version=round_.row_version)
        self._discard_blob(round_.accumulator_ref)
        log.info(
            "model version %d committed from %d updates%s",
            version,
            len(round_.contributors),
            "; job completed" if state is JobState.COMPLETED else "",
            **context(job=job.job_id, round=str(round_.number), phase="committed"),
        )

    def _abort(self, round_: Round, job: Job, reason: str, now: float) -> None:
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
        with self._store.transaction() as tx:
            tx.update_round(following, expected_row_version=round_.row_version)
            tx.update_job(updated_job)
        self._discard_blob(round_.accumulator_ref)
        log.warning(
            "round aborted: %s%s",
            reason,
            "; job failed" if exhausted else "",
            **context(job=job.job_id, round=str(round_.number), phase="aborted"),
        )

    def _open_round(self, job: Job) -> bool:
        now = self._clock()
        live_after = now - self._settings.liveness_seconds
        with self._store.transaction() as tx:
            cohort = tuple(
                sorted(
                    p.org_id
                    for p in tx.list_participants()
                    if p.status is ParticipantStatus.ACTIVE and p.last_seen >= live_after
                )
            )
            if job.spec.protection is Protection.PAILLIER:
                # Only organizations that hold the job's key can take part; the first rounds
                # wait until the ceremony settles.
                if not self._ceremony.settled(tx, job, cohort, now):
                    return False
                holders = set(self._ceremony.holders(tx, job.job_id))
                cohort = tuple(org for org in cohort if org in holders)
            if job.spec.protection in _SECURE:
                # The bit budget holds for at most max_participants; t must not exceed the cohort.
                cohort = cohort[: job.spec.secagg.max_participants]
                if job.spec.secagg.threshold_for(len(cohort)) > len(cohort):
                    return False
            if len(cohort) < job.spec.min_participants:
                return False
            number = len(tx.list_rounds(job.job_id)) + 1
            round_ = Round(
                round_id=self._new_id(),
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


def _update_submission(
    round_: Round,
    org_id: str,
    update: UpdateSubmission,
    examples: int,
    ack: Acknowledgement,
    now: float,
) -> Submission:
    """The submission record of an accepted update (``examples``: 0 for a masked input)."""
    return Submission(
        round_.round_id,
        org_id,
        update.phase.value,
        update.header.sha256,
        update.header.total_bytes,
        examples,
        ack.acknowledgement_id,
        now,
    )


def _ceremony_key(item: WorkItem) -> int:
    """Identifies a ceremony step: the same job, action and material is the same step."""
    assert item.job is not None and item.ceremony is not None
    step = item.ceremony
    return hash((item.job.job_id, step.action, step.job_keys, step.dealt_key, step.sealed_key))


def _require_job(tx: Transaction, job_id: str) -> Job:
    job = tx.get_job(job_id)
    if job is None:
        raise NotFound("no such job")
    return job


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _decode(header: PayloadHeader, payload: bytes, limit: int) -> list[npt.NDArray[Any]]:
    if header.total_bytes > limit:
        raise InvalidInput(f"payload of {header.total_bytes} bytes exceeds the {limit}-byte limit")
    try:
        return decode_tensors(header, payload)
    except CodecError as exc:
        raise InvalidInput(str(exc)) from exc


def check_finite_or_invalid(weights: list[npt.NDArray[Any]]) -> None:
    try:
        check_finite(weights)
    except CodecError as exc:
        raise InvalidInput(str(exc)) from exc


def _check_layout(weights: list[npt.NDArray[Any]], job: Job) -> None:
    expected = job.weight_specs
    if len(weights) != len(expected):
        raise InvalidInput(f"update has {len(weights)} tensors, the model has {len(expected)}")
    for index, (array, spec) in enumerate(zip(weights, expected, strict=True)):
        if array.dtype.name != spec.dtype:
            raise InvalidInput(
                f"tensor {index} has dtype {array.dtype.name}, expected {spec.dtype}"
            )
        if tuple(array.shape) != spec.shape:
            raise InvalidInput(
                f"tensor {index} has shape {list(array.shape)}, expected {list(spec.shape)}"
            )


def _summaries(reports: list[MetricReport]) -> tuple[MetricsSummary, ...]:
    by_version: dict[int, list[MetricReport]] = {}
    for report in reports:
        by_version.setdefault(report.version, []).append(report)
    summaries = []
    for version, group in sorted(by_version.items()):
        total = sum(r.num_examples for r in group)
        summaries.append(
            MetricsSummary(
                version,
                len(group),
                total,
                sum(r.loss * r.num_examples for r in group) / total,
                sum(r.accuracy * r.num_examples for r in group) / total,
            )
        )
    return tuple(summaries)
