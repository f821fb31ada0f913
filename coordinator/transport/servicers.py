"""Thin gRPC servicers: identity from the interceptor, decode, call the service, encode."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

import fedsilo
from coordinator.domain.jobs import (
    JobSpec,
    MetricReport,
    Participant,
    ParticipantStatus,
    SecAggSettings,
)
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import InvalidInput
from coordinator.service.key_ceremony import CeremonyStep
from coordinator.service.membership import MembershipService
from coordinator.service.rounds import (
    CoordinatorService,
    JobView,
    MessageSubmission,
    UpdateSubmission,
    WorkItem,
    WorkKind,
)
from coordinator.service.secure_rounds import SecAggStep
from coordinator.transport.interceptors import current_identity
from fedsilo import chunking
from fedsilo.codec import PayloadHeader, header_from_proto, header_to_proto
from fedsilo.convert import (
    protection_from_pb,
    protection_to_pb,
    secagg_parameters_to_pb,
    training_settings_to_pb,
)
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

__all__ = ["AdminServicer", "ParticipantServicer", "job_view_to_pb", "spec_from_pb"]

MAX_WAIT_SECONDS = 30.0

PHASE_TO_PB = {phase: getattr(pb, f"ROUND_PHASE_{phase.name}") for phase in Phase}
PHASE_FROM_PB = {v: k for k, v in PHASE_TO_PB.items()}
JOB_STATE_TO_PB = {
    "created": pb.JOB_STATE_CREATED,
    "running": pb.JOB_STATE_RUNNING,
    "completed": pb.JOB_STATE_COMPLETED,
    "failed": pb.JOB_STATE_FAILED,
}
KIND_TO_PB = {
    WorkKind.WAIT: pb.TASK_KIND_WAIT,
    WorkKind.TRAIN: pb.TASK_KIND_TRAIN,
    WorkKind.EVALUATE: pb.TASK_KIND_EVALUATE,
    WorkKind.SECAGG_STEP: pb.TASK_KIND_SECAGG_STEP,
    WorkKind.KEY_CEREMONY: pb.TASK_KIND_KEY_CEREMONY,
}


def _receive_payload(requests: Iterator[object], header: PayloadHeader, limit: int) -> bytes:
    """Collect the data chunks that follow a header, bounded by the announced and allowed size."""
    if header.total_bytes > limit:
        raise InvalidInput(f"payload of {header.total_bytes} bytes exceeds the {limit}-byte limit")

    def pieces() -> Iterator[bytes]:
        for message in requests:
            if message.WhichOneof("item") != "data":  # type: ignore[attr-defined]
                raise InvalidInput("only data chunks may follow the header")
            yield message.data  # type: ignore[attr-defined]

    return chunking.assemble(pieces(), header.total_bytes, header.sha256)


def _server_info(membership: MembershipService, require_registered: bool) -> pb.ServerInfo:
    identity = current_identity()
    status = ""
    if require_registered:
        member = membership.authenticate_participant(identity.org_id, require_active=False)
        status = member.status.value
    return pb.ServerInfo(
        server_time=time.time(),
        version=fedsilo.__version__,
        org_id=identity.org_id,
        role=identity.role.value,
        membership=status,
    )


def _participant_info(p: Participant) -> pb.ParticipantInfo:
    return pb.ParticipantInfo(
        org_id=p.org_id, status=p.status.value, first_seen=p.first_seen, last_seen=p.last_seen
    )


class ParticipantServicer(pb_grpc.ParticipantServiceServicer):
    """The API participant daemons call (participant certificates only)."""

    def __init__(self, service: CoordinatorService, membership: MembershipService) -> None:
        self._service = service
        self._membership = membership

    def GetServerInfo(  # noqa: N802
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        return _server_info(self._membership, require_registered=True)

    def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:  # noqa: N802
        org = current_identity().org_id
        member = self._membership.authenticate_participant(org, require_active=False)
        if member.status is not ParticipantStatus.ACTIVE:
            # Pending organizations keep polling until an admin approves them.
            return pb.GetTaskResponse(kind=pb.TASK_KIND_WAIT)
        wait = min(max(request.wait_seconds, 0.0), MAX_WAIT_SECONDS)
        held = list(request.held_round_ids)
        finished = self._service.round_outcomes(held) if held else []
        # A participant told that rounds ended gets that answer at once, not after a long poll.
        item = self._service.wait_for_work(org, 0.0 if finished else wait, context.is_active)
        response = _work_to_pb(item)
        for outcome in finished:
            response.finished_rounds.add(
                round_id=outcome.round_id, phase=PHASE_TO_PB[outcome.phase], reason=outcome.reason
            )
        return response

    def DownloadModel(  # noqa: N802
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        self._membership.authenticate_participant(current_identity().org_id)
        yield from _model_chunks(self._service, request, encrypted=True)

    def SubmitUpdate(  # noqa: N802
        self, request_iterator: Iterator[pb.SubmitUpdateRequest], context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        org = current_identity().org_id
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidInput("the first message of SubmitUpdate must be its header")
        self._membership.authenticate_participant(org)
        h = first.header
        if h.phase not in PHASE_FROM_PB:
            raise InvalidInput("unknown round phase")
        header = header_from_proto(h.payload)
        payload = _receive_payload(
            request_iterator, header, self._service.settings.max_payload_bytes
        )
        update = UpdateSubmission(
            job_id=h.job_id,
            round_id=h.round_id,
            phase=PHASE_FROM_PB[h.phase],
            base_version=h.base_version,
            num_examples=h.num_examples,
            train_loss=h.train_loss,
            header=header,
        )
        ack = self._service.submit_update(org, update, payload)
        return pb.SubmitUpdateResponse(
            acknowledgement_id=ack.acknowledgement_id, duplicate=ack.duplicate
        )

    def SubmitMessage(  # noqa: N802
        self, request: pb.SubmitMessageRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        identity = current_identity()
        self._membership.authenticate_participant(identity.org_id)
        if request.phase not in PHASE_FROM_PB:
            raise InvalidInput("unknown round phase")
        message = MessageSubmission(
            job_id=request.job_id,
            round_id=request.round_id,
            phase=PHASE_FROM_PB[request.phase],
            body=request.body,
        )
        ack = self._service.submit_message(identity.org_id, message, identity.certificate_pem)
        return pb.SubmitUpdateResponse(
            acknowledgement_id=ack.acknowledgement_id, duplicate=ack.duplicate
        )

    def SubmitCeremony(  # noqa: N802
        self, request: pb.SubmitCeremonyRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        identity = current_identity()
        self._membership.authenticate_participant(identity.org_id)
        ack = self._service.submit_ceremony(
            identity.org_id,
            request.job_id,
            request.action,
            request.body,
            identity.certificate_pem,
        )
        return pb.SubmitUpdateResponse(
            acknowledgement_id=ack.acknowledgement_id, duplicate=ack.duplicate
        )

    def ReportMetrics(  # noqa: N802
        self, request: pb.ReportMetricsRequest, context: grpc.ServicerContext
    ) -> pb.ReportMetricsResponse:
        org = current_identity().org_id
        self._membership.authenticate_participant(org)
        report = MetricReport(
            job_id=request.job_id,
            version=request.model_version,
            org_id=org,
            num_examples=request.num_examples,
            loss=request.loss,
            accuracy=request.accuracy,
            created_at=0.0,
        )
        duplicate = self._service.report_metrics(report)
        return pb.ReportMetricsResponse(duplicate=duplicate)


def _model_chunks(
    service: CoordinatorService, request: pb.DownloadModelRequest, *, encrypted: bool = False
) -> Iterator[pb.ModelChunk]:
    """The DownloadModel stream: the model's info (header), then its payload in chunks."""
    version, header, payload = service.read_model(
        request.job_id, request.version, encrypted=encrypted
    )
    info = pb.ModelInfo(job_id=request.job_id, version=version, header=header_to_proto(header))
    yield pb.ModelChunk(info=info)
    for piece in chunking.split(payload):
        yield pb.ModelChunk(data=piece)


def _work_to_pb(item: WorkItem) -> pb.GetTaskResponse:
    response = pb.GetTaskResponse(kind=KIND_TO_PB[item.kind])
    if item.job is not None:
        spec = item.job.spec
        response.job_id = item.job.job_id
        response.task_name = spec.task_name
        response.model_version = item.model_version
        response.training.CopyFrom(training_settings_to_pb(spec.training))
        response.protection = protection_to_pb(spec.protection)
        response.task_config_json = spec.task_config_json
    if item.round is not None:
        response.round_id = item.round.round_id
        response.round_number = item.round.number
        response.phase = PHASE_TO_PB[item.round.phase]
        response.seconds_left = item.seconds_left
    if item.secagg is not None:
        response.secagg.CopyFrom(_step_to_pb(item.secagg))
    if item.ceremony is not None:
        response.ceremony.CopyFrom(_ceremony_to_pb(item.ceremony))
    return response


def _ceremony_to_pb(step: CeremonyStep) -> pb.KeyCeremonyStep:
    message = pb.KeyCeremonyStep(
        action=step.action,
        dealer=step.dealer,
        key_bits=step.key_bits,
        job_keys=[pb.AdvertisedKeys(signed_keys=k, certificate_pem=c) for k, c in step.job_keys],
        dealt_key=step.dealt_key,
        dealer_certificate_pem=step.dealer_certificate_pem,
        sealed_key=step.sealed_key,
    )
    if step.parameters is not None:
        message.parameters.CopyFrom(secagg_parameters_to_pb(step.parameters))
    return message


def _step_to_pb(step: SecAggStep) -> pb.SecAggStep:
    return pb.SecAggStep(
        parameters=secagg_parameters_to_pb(step.parameters),
        keys=[pb.AdvertisedKeys(signed_keys=k, certificate_pem=c) for k, c in step.keys],
        shares=list(step.shares),
        survivors=list(step.survivors),
        unmask_request=step.unmask_request,
    )


def _round_to_pb(round_: Round, spec: JobSpec) -> pb.RoundStatus:
    return pb.RoundStatus(
        round_id=round_.round_id,
        number=round_.number,
        phase=PHASE_TO_PB[round_.phase],
        base_version=round_.base_version,
        cohort=list(round_.cohort),
        contributors=list(round_.contributors),
        started_at=round_.created_at,
        finished_at=round_.finished_at or 0.0,
        abort_reason=round_.abort_reason or "",
        train_loss=(round_.train_loss_sum / round_.total_weight) if round_.total_weight else 0.0,
        threshold=(
            spec.secagg.threshold_for(len(round_.cohort))
            if round_.protection in (Protection.SECAGG, Protection.PAILLIER)
            else 0
        ),
    )


def _spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    return pb.JobSpec(
        name=spec.name,
        task_name=spec.task_name,
        protection=protection_to_pb(spec.protection),
        algorithm=spec.algorithm,
        num_rounds=spec.num_rounds,
        min_participants=spec.min_participants,
        round_timeout_seconds=spec.round_timeout_seconds,
        training=training_settings_to_pb(spec.training),
        task_config_json=spec.task_config_json,
        max_failed_rounds=spec.max_failed_rounds,
        secagg=pb.SecAggSettings(
            threshold=spec.secagg.threshold,
            modulus_bits=spec.secagg.modulus_bits,
            clip=spec.secagg.clip,
            levels_bits=spec.secagg.levels_bits,
            max_participants=spec.secagg.max_participants,
            max_weight=spec.secagg.max_weight,
        ),
        phase_timeout_seconds=spec.phase_timeout_seconds,
        paillier_key_bits=spec.paillier_key_bits,
    )


def spec_from_pb(message: pb.JobSpec) -> JobSpec:
    """Decode a job spec; unset numeric fields take the documented defaults."""
    defaults = JobSpec(name="", task_name="")
    plan = TrainingSettings()
    t = message.training
    protection = protection_from_pb(message.protection, unspecified=defaults.protection)
    if protection is None:
        raise InvalidInput("unknown protection mode")
    return JobSpec(
        name=message.name,
        task_name=message.task_name,
        protection=protection,
        algorithm=message.algorithm or defaults.algorithm,
        num_rounds=message.num_rounds or defaults.num_rounds,
        min_participants=message.min_participants or defaults.min_participants,
        round_timeout_seconds=message.round_timeout_seconds or defaults.round_timeout_seconds,
        max_failed_rounds=(
            message.max_failed_rounds
            if message.HasField("max_failed_rounds")
            else defaults.max_failed_rounds
        ),
        training=TrainingSettings(
            local_epochs=t.local_epochs or plan.local_epochs,
            batch_size=t.batch_size or plan.batch_size,
            learning_rate=t.learning_rate or plan.learning_rate,
            seed=t.seed,
        ),
        task_config_json=message.task_config_json or "{}",
        secagg=_secagg_from_pb(message.secagg),
        phase_timeout_seconds=message.phase_timeout_seconds or defaults.phase_timeout_seconds,
        paillier_key_bits=message.paillier_key_bits or defaults.paillier_key_bits,
    )


def _secagg_from_pb(message: pb.SecAggSettings) -> SecAggSettings:
    d = SecAggSettings()
    return SecAggSettings(
        threshold=message.threshold or d.threshold,
        modulus_bits=message.modulus_bits or d.modulus_bits,
        clip=message.clip or d.clip,
        levels_bits=message.levels_bits or d.levels_bits,
        max_participants=message.max_participants or d.max_participants,
        max_weight=message.max_weight or d.max_weight,
    )


def job_view_to_pb(view: JobView) -> pb.JobStatus:
    job = view.job
    return pb.JobStatus(
        job_id=job.job_id,
        spec=_spec_to_pb(job.spec),
        state=JOB_STATE_TO_PB[job.state.value],
        model_version=job.model_version,
        rounds=[_round_to_pb(r, job.spec) for r in view.rounds],
        metrics=[
            pb.VersionMetrics(
                version=m.version,
                reports=m.reports,
                num_examples=m.num_examples,
                loss=m.loss,
                accuracy=m.accuracy,
            )
            for m in view.metrics
        ],
        created_at=job.created_at,
        failure_reason=job.failure_reason or "",
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    """The API operators call (admin certificates only)."""

    def __init__(self, service: CoordinatorService, membership: MembershipService) -> None:
        self._service = service
        self._membership = membership

    def GetServerInfo(  # noqa: N802
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.ServerInfo:
        return _server_info(self._membership, require_registered=False)

    def ApproveParticipant(  # noqa: N802
        self, request: pb.OrgRef, context: grpc.ServicerContext
    ) -> pb.ParticipantInfo:
        actor = current_identity().org_id
        return _participant_info(self._membership.approve(request.org_id, actor))

    def RevokeParticipant(  # noqa: N802
        self, request: pb.OrgRef, context: grpc.ServicerContext
    ) -> pb.ParticipantInfo:
        actor = current_identity().org_id
        return _participant_info(self._membership.revoke(request.org_id, actor))

    def RevokeCertificate(  # noqa: N802
        self, request: pb.RevokeCertificateRequest, context: grpc.ServicerContext
    ) -> pb.RevokeCertificateResponse:
        already = self._membership.revoke_certificate(
            request.serial_hex, request.reason, current_identity().org_id
        )
        return pb.RevokeCertificateResponse(already_revoked=already)

    def ListAuditEvents(  # noqa: N802
        self, request: pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        events = self._membership.audit_events(request.limit or 100)
        return pb.ListAuditEventsResponse(
            events=[
                pb.AuditEvent(
                    id=e.event_id,
                    at=e.at,
                    actor=e.actor,
                    action=e.action,
                    outcome=e.outcome,
                    detail=e.detail,
                )
                for e in events
            ]
        )

    def CreateJob(  # noqa: N802
        self, request_iterator: Iterator[pb.CreateJobRequest], context: grpc.ServicerContext
    ) -> pb.JobStatus:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidInput("the first message of CreateJob must be its header")
        spec = spec_from_pb(first.header.spec)
        header = header_from_proto(first.header.initial_weights)
        payload = _receive_payload(
            request_iterator, header, self._service.settings.max_payload_bytes
        )
        job = self._service.create_job(spec, header, payload, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(job.job_id))

    def StartJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._service.start_job(request.job_id, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(request.job_id))

    def GetJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        return job_view_to_pb(self._service.get_job(request.job_id))

    def ListJobs(  # noqa: N802
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        return pb.ListJobsResponse(jobs=[job_view_to_pb(v) for v in self._service.list_jobs()])

    def ListParticipants(  # noqa: N802
        self, request: pb.ListParticipantsRequest, context: grpc.ServicerContext
    ) -> pb.ListParticipantsResponse:
        return pb.ListParticipantsResponse(
            participants=[_participant_info(p) for p in self._membership.list_participants()]
        )

    def DownloadModel(  # noqa: N802
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        yield from _model_chunks(self._service, request)
