"""Version 0 from the seed: participants build it, the coordinator commits what enough agree on.

A job created with ``initial_weights_from_seed`` has no weights: each active organization is
asked (``WorkKind.INITIAL_WEIGHTS``) to build version 0 with the task's model from the job's
seed and send it. Every upload is one report, kept as a job message of kind
``initial_weights`` (its SHA-256 and tensor layout); version 0 is committed once
``min_participants`` organizations sent the same bytes, and until then the job's waiting reason
names the digests reported and who sent them (docs/design.md, "Version 0 from the seed").
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from coordinator.domain.jobs import Job, JobMessage, JobState, ModelVersion
from coordinator.errors import ConflictingSubmission, InvalidRequest, WrongRoundPhase
from coordinator.persistence.spool import SpooledUpload, UploadSpool
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext, require_job
from coordinator.service.payloads import (
    ReceivedPayload,
    check_finite_or_invalid,
    check_payload_size,
    decode_payload,
)
from coordinator.service.views import Acknowledgement, WorkItem, WorkKind
from fedsilo.codec import PayloadHeader, TensorSpec
from fedsilo.logs import context

__all__ = [
    "InitialWeightsService",
    "held_by_pending_reports",
    "initial_weight_refs",
    "initial_weights_reason",
    "initial_weights_work",
    "pending_initial_weights",
]

log = logging.getLogger("coordinator")

KIND = "initial_weights"
"""The job-message kind of one organization's version-0 report."""

_ASKED = (JobState.RUNNING, JobState.PAUSED)
"""Jobs whose version 0 organizations are asked to build: started and not ended."""

_WAITING = (JobState.CREATED, JobState.RUNNING, JobState.PAUSED)
"""Jobs that may still commit a version 0 from their reports."""


@dataclasses.dataclass(frozen=True)
class _Report:
    org_id: str
    sha256: str
    tensors: tuple[TensorSpec, ...]

    @property
    def key(self) -> tuple[str, tuple[TensorSpec, ...]]:
        return self.sha256, self.tensors


def pending_initial_weights(tx: Transaction, job: Job) -> bool:
    """Whether ``job`` still waits for its version 0 from the participants."""
    return job.spec.initial_weights_from_seed and tx.get_model_version(job.job_id, 0) is None


def initial_weight_refs(messages: Iterable[JobMessage]) -> set[str]:
    """The blobs the version-0 reports among ``messages`` hold (blobs are named by SHA-256)."""
    return {report.sha256 for report in _reports(messages)}


def held_by_pending_reports(tx: Transaction, ref: str) -> bool:
    """Whether a report of a job still waiting for its version 0 names blob ``ref`` (reports
    are not rows ``blob_in_use`` knows; two jobs may well report the same bytes)."""
    return any(
        ref in initial_weight_refs(tx.list_job_messages(job.job_id))
        for job in tx.list_jobs(_WAITING)
        if pending_initial_weights(tx, job)
    )


def initial_weights_work(
    tx: Transaction, org_id: str, skip: Callable[[str], bool] = lambda job_id: False
) -> WorkItem | None:
    """A version 0 ``org_id`` has not reported yet, oldest job first (jobs ``skip`` names
    aside)."""
    for job in tx.list_jobs(_ASKED):
        if skip(job.job_id) or not pending_initial_weights(tx, job):
            continue
        if any(r.org_id == org_id for r in _reports(tx.list_job_messages(job.job_id))):
            continue
        return WorkItem(WorkKind.INITIAL_WEIGHTS, job)
    return None


def initial_weights_reason(tx: Transaction, job: Job) -> str:
    """What version 0 of ``job`` waits for: how many agree so far, and any disagreement."""
    needed = job.spec.min_participants
    reports = _reports(tx.list_job_messages(job.job_id))
    if not reports:
        return (
            f"building version 0 from seed {job.spec.training.seed}: needs {needed} "
            "organizations to report the same weights, none reported yet"
        )
    groups = _grouped(reports)
    described = "; ".join(f"{sha[:12]} from {', '.join(sorted(orgs))}" for (sha, _), orgs in groups)
    if len(groups) > 1:
        return (
            f"version 0 disagrees: {len(groups)} different weights reported ({described}); "
            f"needs {needed} organizations with the same (check that the organizations run "
            "the same task and TensorFlow versions)"
        )
    return (
        f"building version 0 from seed {job.spec.training.seed}: "
        f"{len(reports)} of {needed} organizations reported the same weights ({described})"
    )


class InitialWeightsService:
    """Takes the organizations' version-0 reports and commits version 0 on agreement."""

    def __init__(
        self, ctx: ServiceContext, spool: UploadSpool, committed: Callable[[], None]
    ) -> None:
        """``committed`` runs after version 0 of a job is committed (the driver's tick, so the
        first round opens at once rather than on the timer)."""
        self._ctx = ctx
        self._spool = spool
        self._committed = committed

    def receive(
        self, org_id: str, job_id: str, header: PayloadHeader, chunks: Iterable[bytes]
    ) -> Acknowledgement:
        """Take one organization's version 0: the job is checked before any payload byte is
        read, the payload spooled as it arrives."""
        with self._ctx.store.transaction() as tx:
            job = require_job(tx, job_id)
            duplicate = self._check(tx, job, org_id, header)
        if duplicate is not None:
            return duplicate
        check_payload_size(header.total_bytes, self._ctx.settings.max_payload_bytes)
        with self._spool.receive(chunks, header.total_bytes, header.sha256) as upload:
            return self.submit(org_id, job_id, header, upload)

    def submit(
        self, org_id: str, job_id: str, header: PayloadHeader, payload: ReceivedPayload
    ) -> Acknowledgement:
        """Record ``org_id``'s version 0 and commit it when ``min_participants`` agree."""
        weights = decode_payload(header, payload, self._ctx.settings.max_payload_bytes)
        for index, array in enumerate(weights):
            if array.dtype != np.float32:
                raise InvalidRequest(f"weight tensor {index} must be float32, not {array.dtype}")
        check_finite_or_invalid(weights)
        if isinstance(payload, SpooledUpload):
            blob_ref = self._ctx.blobs.put_file(payload.path, payload.sha256)
        else:
            blob_ref = self._ctx.blobs.put(payload)
        now = self._ctx.clock()
        ack_id = self._ctx.new_id()
        committed: str | None = None
        losers: set[str] = set()
        with self._ctx.lock, self._ctx.store.transaction() as tx:
            job = require_job(tx, job_id)
            duplicate = self._check(tx, job, org_id, header)
            if duplicate is not None:
                return duplicate
            body = json.dumps(
                {"sha256": blob_ref, "tensors": [[s.dtype, list(s.shape)] for s in header.tensors]},
                sort_keys=True,
            ).encode()
            tx.add_job_message(JobMessage(job_id, org_id, KIND, body, b"", ack_id, now))
            reports = _reports(tx.list_job_messages(job_id))
            for (sha, tensors), orgs in _grouped(reports):
                if len(orgs) >= job.spec.min_participants:
                    tx.add_model_version(ModelVersion(job_id, 0, sha, None, now))
                    tx.update_job(dataclasses.replace(job, weight_specs=tensors))
                    detail = f"job={job_id} sha256={sha} organizations={','.join(sorted(orgs))}"
                    tx.add_audit(now, "coordinator", "job.initial_weights", "ok", detail)
                    committed = sha
                    losers = {r.sha256 for r in reports} - {sha}
                    break
        log.info(
            "version 0 reported: %s…%s",
            blob_ref[:12],
            " (committed)" if committed else "",
            **context(job=job_id, org=org_id),
        )
        if committed is not None:
            log.info("version 0 committed from the seed: %s", committed, **context(job=job_id))
            # Weights no organization agreed on are kept no longer than the disagreement.
            for ref in losers:
                with self._ctx.lock, self._ctx.store.transaction() as tx:
                    in_use = tx.blob_in_use(ref) or held_by_pending_reports(tx, ref)
                    if not in_use:
                        self._ctx.blobs.delete(ref)
            self._committed()
        self._ctx.changes.notify()
        return Acknowledgement(ack_id, duplicate=False)

    def _check(
        self, tx: Transaction, job: Job, org_id: str, header: PayloadHeader
    ) -> Acknowledgement | None:
        """Refuse a report the job does not want; an identical repeat is acknowledged again."""
        if not job.spec.initial_weights_from_seed:
            raise WrongRoundPhase("this job's version 0 came with the job")
        if job.state not in _ASKED:
            raise WrongRoundPhase(f"job is {job.state.value}")
        for message in tx.list_job_messages(job.job_id):
            if message.kind != KIND or message.org_id != org_id:
                continue
            if _report(message).sha256 == header.sha256.hex():
                return Acknowledgement(message.acknowledgement_id, duplicate=True)
            raise ConflictingSubmission("this organization already reported other weights")
        if tx.get_model_version(job.job_id, 0) is not None:
            raise WrongRoundPhase("version 0 of this job is already committed")
        return None


def _report(message: JobMessage) -> _Report:
    data: dict[str, Any] = json.loads(message.body)
    tensors = tuple(TensorSpec(d, tuple(shape)) for d, shape in data["tensors"])
    return _Report(message.org_id, str(data["sha256"]), tensors)


def _reports(messages: Iterable[JobMessage]) -> list[_Report]:
    return [_report(m) for m in messages if m.kind == KIND]


def _grouped(
    reports: list[_Report],
) -> list[tuple[tuple[str, tuple[TensorSpec, ...]], set[str]]]:
    """Reports grouped by the weights they name, the most agreed-on first (then oldest)."""
    groups: dict[tuple[str, tuple[TensorSpec, ...]], set[str]] = {}
    for report in reports:
        groups.setdefault(report.key, set()).add(report.org_id)
    return sorted(groups.items(), key=lambda item: -len(item[1]))
