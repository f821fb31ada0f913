"""``CoordinatorService``: one object the servicers and tests hold, delegating to the use cases.

It wires the shared context, the round ledger, one round engine per protection mode, the
deadline driver and the use-case services together, and adds no logic of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator

from coordinator.domain.jobs import Job, JobSpec, MetricReport
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.spool import UploadSpool
from coordinator.persistence.store import Store
from coordinator.service.context import CoordinatorSettings, PhaseListener, ServiceContext
from coordinator.service.driver import RoundDriver
from coordinator.service.engines.registry import RoundEngines
from coordinator.service.initial_weights import InitialWeightsService
from coordinator.service.jobs import JobService
from coordinator.service.metrics import MetricsService
from coordinator.service.payloads import ReceivedPayload
from coordinator.service.round_ledger import RoundLedger
from coordinator.service.submissions import SubmissionService
from coordinator.service.views import (
    Acknowledgement,
    JobDeletion,
    JobView,
    MessageSubmission,
    RoundOutcomeView,
    UpdateSubmission,
    WorkItem,
)
from coordinator.service.work import WorkService
from fedsilo.codec import PayloadHeader

__all__ = ["CoordinatorService"]


class CoordinatorService:
    """The coordinator's use cases over a Store and a BlobStore."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        settings: CoordinatorSettings | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        spool: UploadSpool | None = None,
    ) -> None:
        """``spool`` receives uploads; by default the directory ``spool`` beside the blob
        store's, on the same file system."""
        ctx = ServiceContext(store, blobs, settings or CoordinatorSettings(), clock, new_id)
        ledger = RoundLedger(ctx)
        engines = RoundEngines(ctx, ledger)
        self._ctx = ctx
        self.driver = RoundDriver(ctx, ledger, engines)
        self.spool = spool or UploadSpool(
            blobs.root.parent / "spool",
            owner_budget_bytes=ctx.settings.spool_bytes_per_org,
            total_budget_bytes=ctx.settings.spool_bytes_total,
        )
        self.jobs = JobService(ctx, ledger, engines, self.driver, self.spool)
        self.work = WorkService(ctx, engines)
        self.submissions = SubmissionService(ctx, ledger, engines, self.driver, self.spool)
        self.metrics = MetricsService(ctx)
        self.initial_weights = InitialWeightsService(ctx, self.spool, self.driver.tick)

    @property
    def settings(self) -> CoordinatorSettings:
        return self._ctx.settings

    def on_phase_end(self, listener: PhaseListener) -> None:
        """Call ``listener(protection, phase, seconds)`` whenever a round leaves a phase."""
        self._ctx.phase_listeners.append(listener)

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(
        self, spec: JobSpec, header: PayloadHeader, payload: ReceivedPayload, actor: str
    ) -> Job:
        return self.jobs.create_job(spec, header, payload, actor)

    def receive_job(
        self, spec: JobSpec, header: PayloadHeader, chunks: Iterable[bytes], actor: str
    ) -> Job:
        return self.jobs.receive_job(spec, header, chunks, actor)

    def start_job(self, job_id: str, actor: str) -> Job:
        return self.jobs.start_job(job_id, actor)

    def pause_job(self, job_id: str, actor: str) -> Job:
        return self.jobs.pause_job(job_id, actor)

    def resume_job(self, job_id: str, actor: str) -> Job:
        return self.jobs.resume_job(job_id, actor)

    def abort_job(self, job_id: str, actor: str) -> Job:
        return self.jobs.abort_job(job_id, actor)

    def delete_job(self, job_id: str, actor: str) -> JobDeletion:
        return self.jobs.delete_job(job_id, actor)

    def get_job(self, job_id: str) -> JobView:
        return self.jobs.get_job(job_id)

    def list_jobs(self) -> list[JobView]:
        return self.jobs.list_jobs()

    def stream_model(
        self, job_id: str, version: int, *, encrypted: bool = False
    ) -> tuple[int, PayloadHeader, Iterator[bytes]]:
        return self.jobs.stream_model(job_id, version, encrypted=encrypted)

    def read_model(
        self, job_id: str, version: int, *, encrypted: bool = False
    ) -> tuple[int, PayloadHeader, bytes]:
        return self.jobs.read_model(job_id, version, encrypted=encrypted)

    # -- participant work -----------------------------------------------------------------------

    def next_work(self, org_id: str) -> WorkItem:
        return self.work.next_work(org_id)

    def wait_for_work(
        self, org_id: str, wait_seconds: float, still_wanted: Callable[[], bool] = lambda: True
    ) -> WorkItem:
        return self.work.wait_for_work(org_id, wait_seconds, still_wanted)

    def round_outcomes(self, round_ids: list[str]) -> list[RoundOutcomeView]:
        return self.work.round_outcomes(round_ids)

    def round_inputs(self, org_id: str, job_id: str, round_id: str) -> bytes:
        return self.work.round_inputs(org_id, job_id, round_id)

    # -- submissions and metrics ----------------------------------------------------------------

    def submit_update(
        self, org_id: str, update: UpdateSubmission, payload: ReceivedPayload
    ) -> Acknowledgement:
        return self.submissions.submit_update(org_id, update, payload)

    def receive_update(
        self, org_id: str, update: UpdateSubmission, chunks: Iterable[bytes]
    ) -> Acknowledgement:
        return self.submissions.receive_update(org_id, update, chunks)

    def submit_message(
        self, org_id: str, message: MessageSubmission, certificate_pem: bytes
    ) -> Acknowledgement:
        return self.submissions.submit_message(org_id, message, certificate_pem)

    def submit_ceremony(
        self, org_id: str, job_id: str, action: str, body: bytes, certificate_pem: bytes
    ) -> Acknowledgement:
        return self.submissions.submit_ceremony(org_id, job_id, action, body, certificate_pem)

    def submit_initial_weights(
        self, org_id: str, job_id: str, header: PayloadHeader, payload: ReceivedPayload
    ) -> Acknowledgement:
        return self.initial_weights.submit(org_id, job_id, header, payload)

    def receive_initial_weights(
        self, org_id: str, job_id: str, header: PayloadHeader, chunks: Iterable[bytes]
    ) -> Acknowledgement:
        return self.initial_weights.receive(org_id, job_id, header, chunks)

    def report_metrics(self, report: MetricReport) -> bool:
        return self.metrics.report_metrics(report)

    # -- the driver -----------------------------------------------------------------------------

    def tick(self) -> None:
        self.driver.tick()
