"""Job use cases: create (spec, and version 0 unless built from the seed), start, status, and
reading model versions."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator

import numpy as np

from coordinator.domain.jobs import Job, JobSpec, JobState, ModelVersion
from coordinator.domain.privacy import privacy_spent, released_rounds
from coordinator.domain.rounds import Round, RoundEvent, transition
from coordinator.errors import InvalidRequest, WrongRoundPhase
from coordinator.persistence.spool import SpooledUpload, UploadSpool
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext, require_job, sha256
from coordinator.service.driver import RoundDriver
from coordinator.service.engines.registry import RoundEngines
from coordinator.service.initial_weights import held_by_pending_reports, initial_weight_refs
from coordinator.service.metrics import summarize
from coordinator.service.payloads import (
    ReceivedPayload,
    check_finite_or_invalid,
    check_payload_size,
    decode_payload,
)
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.views import JobDeletion, JobView
from fedsilo.chunking import CHUNK_BYTES
from fedsilo.codec import PayloadHeader, TensorSpec
from fedsilo.logs import context
from fedsilo.protection import Protection
from fedsilo.strategies import resolve_parameters

__all__ = ["JobService"]

log = logging.getLogger("coordinator")

_ENDED = (JobState.COMPLETED, JobState.FAILED, JobState.ABORTED)
_LISTED = tuple(state for state in JobState if state is not JobState.DELETED)


class JobService:
    """What admins do with jobs, and the model versions both roles download."""

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

    def receive_job(
        self, spec: JobSpec, header: PayloadHeader, chunks: Iterable[bytes], actor: str
    ) -> Job:
        """Create a job whose initial weights arrive in chunks: the spec and size are checked
        first, the weights spooled as they arrive and moved into the blob store. A job whose
        version 0 is built from its seed comes without weights (an empty header)."""
        spec.validate()
        if spec.initial_weights_from_seed:
            return self.create_job(spec, header, b"", actor)
        check_payload_size(header.total_bytes, self._ctx.settings.max_payload_bytes)
        with self._spool.receive(chunks, header.total_bytes, header.sha256, actor) as upload:
            return self.create_job(spec, header, upload, actor)

    def create_job(
        self, spec: JobSpec, header: PayloadHeader, payload: ReceivedPayload, actor: str
    ) -> Job:
        """Validate the spec and initial weights, store them as model version 0.

        A job with ``initial_weights_from_seed`` takes no weights: its participants build
        version 0 once it runs (coordinator/service/initial_weights.py).
        """
        spec.validate()
        # The job keeps its strategy's parameters with every default filled in, so a later
        # release with other defaults does not change a running job.
        spec = dataclasses.replace(spec, strategy=resolve_parameters(spec.algorithm, spec.strategy))
        if spec.initial_weights_from_seed:
            if header.tensors or header.total_bytes:
                raise InvalidRequest(
                    "a job whose version 0 is built from its seed takes no initial weights"
                )
            return self._add_job(spec, (), None, actor)
        weights = decode_payload(header, payload, self._ctx.settings.max_payload_bytes)
        for index, array in enumerate(weights):
            if array.dtype != np.float32:
                raise InvalidRequest(
                    f"initial weight tensor {index} must be float32, not {array.dtype}"
                )
        check_finite_or_invalid(weights)
        if isinstance(payload, SpooledUpload):
            blob_ref = self._ctx.blobs.put_file(payload.path, payload.sha256)
        else:
            blob_ref = self._ctx.blobs.put(payload)
        return self._add_job(spec, header.tensors, blob_ref, actor)

    def _add_job(
        self, spec: JobSpec, weight_specs: tuple[TensorSpec, ...], blob_ref: str | None, actor: str
    ) -> Job:
        now = self._ctx.clock()
        job = Job(
            job_id=self._ctx.new_id(),
            spec=spec,
            state=JobState.CREATED,
            model_version=0,
            weight_specs=weight_specs,
            created_at=now,
        )
        with self._ctx.lock, self._ctx.store.transaction() as tx:
            tx.add_job(job)
            if blob_ref is not None:
                tx.add_model_version(ModelVersion(job.job_id, 0, blob_ref, None, now))
            detail = f"job={job.job_id} task={spec.task_name}"
            if blob_ref is None:
                detail += " version0=seed"
            tx.add_audit(now, actor, "job.create", "ok", detail)
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
        with self._ctx.lock, self._ctx.store.transaction() as tx:
            job = require_job(tx, job_id)
            if job.state is not JobState.CREATED:
                raise WrongRoundPhase(
                    f"job is {job.state.value}; only a created job can be started"
                )
            job = dataclasses.replace(job, state=JobState.RUNNING)
            tx.update_job(job)
            tx.add_audit(self._ctx.clock(), actor, "job.start", "ok", f"job={job_id}")
        log.info("job started", **context(job=job_id))
        self._driver.tick()
        return job

    def pause_job(self, job_id: str, actor: str) -> Job:
        """RUNNING -> PAUSED: an open round goes on to its end; the driver opens no new one."""
        return self._change_state(job_id, actor, "job.pause", (JobState.RUNNING,), JobState.PAUSED)

    def resume_job(self, job_id: str, actor: str) -> Job:
        """PAUSED -> RUNNING: the next round opens on the next tick."""
        job = self._change_state(job_id, actor, "job.resume", (JobState.PAUSED,), JobState.RUNNING)
        self._driver.tick()
        return job

    def abort_job(self, job_id: str, actor: str) -> Job:
        """End a job that has not ended, for good; its open round is aborted in the same write."""
        allowed = (JobState.CREATED, JobState.RUNNING, JobState.PAUSED)
        with self._ctx.lock:
            job = self._change_state(job_id, actor, "job.abort", allowed, JobState.ABORTED)
            now = self._ctx.clock()
            with self._ctx.store.transaction() as tx:
                open_rounds = [r for r in tx.open_rounds() if r.job_id == job_id]
                ended: list[tuple[Round, Round]] = []
                for round_ in open_rounds:
                    aborted = transition(
                        round_, RoundEvent.ABORT, now=now, reason="job aborted by admin"
                    )
                    tx.update_round(aborted, expected_row_version=round_.row_version)
                    ended.append((round_, aborted))
            for round_, aborted in ended:
                self._ledger.phase_ended(round_, aborted, now)
                self._ledger.discard_blob(round_.accumulator_ref)
        self._ctx.changes.notify()
        return job

    def delete_job(self, job_id: str, actor: str) -> JobDeletion:
        """Delete an ended job (completed, failed or aborted): it is marked DELETED, found by
        no use case any more, and its model versions, metrics, messages and blobs go.

        A job that may still open rounds is refused (abort it first), so nothing of it is in
        flight. Its rounds and submissions stay as bookkeeping, so the coordinator's counters
        never go down; the audit log keeps every entry that names the job and gains
        ``job.delete``.
        """
        with self._ctx.lock:
            with self._ctx.store.transaction() as tx:
                job = require_job(tx, job_id)
                if job.state not in _ENDED:
                    raise WrongRoundPhase(
                        f"job is {job.state.value}; only a completed, failed or aborted job can "
                        "be deleted (fedsilo job abort first)"
                    )
                # Version-0 reports of a job deleted before it had version 0 hold blobs too,
                # unless another job waiting for its version 0 reported the same bytes.
                reported = initial_weight_refs(tx.list_job_messages(job_id))
                refs = tx.delete_job(job_id)
                refs |= {r for r in reported if not held_by_pending_reports(tx, r)}
                detail = f"job={job_id} name={job.spec.name}"
                tx.add_audit(self._ctx.clock(), actor, "job.delete", "ok", detail)
            # After the rows are gone: a blob another job still references stays.
            removed = sum(self._ledger.discard_blob(ref) for ref in sorted(refs))
        log.info("job deleted, %d blobs removed", removed, **context(job=job_id))
        self._ctx.changes.notify()
        return JobDeletion(job, removed)

    def _change_state(
        self,
        job_id: str,
        actor: str,
        action: str,
        allowed: tuple[JobState, ...],
        target: JobState,
    ) -> Job:
        with self._ctx.lock, self._ctx.store.transaction() as tx:
            job = require_job(tx, job_id)
            if job.state not in allowed:
                names = " or ".join(s.value for s in allowed)
                # Refused before any write: a bad transition changes nothing, not even the audit.
                raise WrongRoundPhase(
                    f"job is {job.state.value}; {action.removeprefix('job.')} needs a {names} job"
                )
            job = dataclasses.replace(job, state=target)
            tx.update_job(job)
            tx.add_audit(self._ctx.clock(), actor, action, "ok", f"job={job_id}")
        log.info("job %s", target.value, **context(job=job_id))
        return job

    def get_job(self, job_id: str) -> JobView:
        with self._ctx.store.transaction() as tx:
            return self._view(tx, require_job(tx, job_id))

    def list_jobs(self) -> list[JobView]:
        with self._ctx.store.transaction() as tx:
            return [self._view(tx, job) for job in tx.list_jobs(_LISTED)]

    def _view(self, tx: Transaction, job: Job) -> JobView:
        rounds = tuple(tx.list_rounds(job.job_id))
        thresholds = tuple(self._engines[r.protection].threshold(job, r) for r in rounds)
        if thresholds:
            threshold = thresholds[-1]
        elif job.spec.protection is Protection.NONE:
            threshold = 0
        else:
            threshold = job.spec.secagg.threshold_for(job.spec.min_participants)
        return JobView(
            job,
            rounds,
            summarize(tx.list_metrics(job.job_id)),
            thresholds,
            self._driver.waiting_reason(tx, job, rounds),
            threshold,
            privacy_spent(job.spec.dp, released_rounds(rounds)) if job.spec.dp.enabled else None,
        )

    def stream_model(
        self, job_id: str, version: int, *, encrypted: bool = False
    ) -> tuple[int, PayloadHeader, Iterator[bytes]]:
        """Like ``read_model``, with the payload in chunks read from the blob store as they are
        sent: concurrent downloads of a large model do not each hold a copy of it."""
        job, wanted, blob_ref = self._ledger.model_blob(job_id, version)
        size, chunks = self._ctx.blobs.stream(blob_ref, CHUNK_BYTES)
        specs = self._engines[job.spec.protection].model_specs(
            job, wanted, size, encrypted=encrypted
        )
        # Blobs are named by the SHA-256 of their bytes (checked again as they are read).
        return wanted, PayloadHeader(specs, size, bytes.fromhex(blob_ref)), chunks

    def read_model(
        self, job_id: str, version: int, *, encrypted: bool = False
    ) -> tuple[int, PayloadHeader, bytes]:
        """A committed model version (-1: the latest): its number, header and payload.

        ``encrypted``: the caller is a participant, which may receive a version that exists only
        encrypted (the round engine of the job's protection decides what is served).
        """
        job, wanted, payload = self._ledger.model_payload(job_id, version)
        specs = self._engines[job.spec.protection].model_specs(
            job, wanted, len(payload), encrypted=encrypted
        )
        return wanted, PayloadHeader(specs, len(payload), sha256(payload)), payload
