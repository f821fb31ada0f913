"""Thin gRPC servicers: identity from the interceptor, decode, call the service, encode."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import grpc

from coordinator.domain.jobs import Participant, ParticipantStatus
from coordinator.errors import InvalidRequest
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.transport.convert import (
    acknowledgement_to_pb,
    audit_events_to_pb,
    job_view_to_pb,
    message_from_pb,
    metric_report_from_pb,
    model_info_to_pb,
    participant_to_pb,
    server_info_to_pb,
    spec_from_pb,
    update_from_pb,
    work_to_pb,
)
from coordinator.transport.interceptors import current_identity
from fedsilo import chunking
from fedsilo.codec import PayloadHeader, header_from_proto
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

__all__ = ["AdminServicer", "ParticipantServicer"]

MAX_WAIT_SECONDS = 30.0


def _data_chunks(requests: Iterator[object]) -> Iterator[bytes]:
    """The data chunks that follow a stream's header, one message at a time."""
    for message in requests:
        if message.WhichOneof("item") != "data":  # type: ignore[attr-defined]
            raise InvalidRequest("only data chunks may follow the header")
        yield message.data  # type: ignore[attr-defined]


def _authenticate(membership: MembershipService, *, require_active: bool = True) -> Participant:
    """The calling organization's membership, registered on its first call, with the
    fingerprint of the certificate it calls with (what the admin sees before approving it)."""
    identity = current_identity()
    return membership.authenticate_participant(
        identity.org_id,
        require_active=require_active,
        certificate_sha256=identity.certificate_sha256,
    )


def _server_info(membership: MembershipService, require_registered: bool) -> pb.ServerInfo:
    identity = current_identity()
    status = ""
    if require_registered:
        status = _authenticate(membership, require_active=False).status.value
    return server_info_to_pb(identity, status, time.time())


def _model_chunks(
    service: CoordinatorService, request: pb.DownloadModelRequest, *, encrypted: bool = False
) -> Iterator[pb.ModelChunk]:
    """The DownloadModel stream: the model's info (header), then its payload in chunks."""
    version, header, chunks = service.stream_model(
        request.job_id, request.version, encrypted=encrypted
    )
    yield model_info_to_pb(request.job_id, version, header)
    empty = True
    for piece in chunks:
        empty = False
        yield pb.ModelChunk(data=piece)
    if empty:
        yield pb.ModelChunk(data=b"")  # as chunking.split sends an empty payload


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
        member = _authenticate(self._membership, require_active=False)
        if member.status is not ParticipantStatus.ACTIVE:
            # Pending organizations keep polling until an admin approves them.
            return pb.GetTaskResponse(kind=pb.TASK_KIND_WAIT)
        wait = min(max(request.wait_seconds, 0.0), MAX_WAIT_SECONDS)
        held = list(request.held_round_ids)
        finished = self._service.round_outcomes(held) if held else []
        # A participant told that rounds ended gets that answer at once, not after a long poll.
        item = self._service.wait_for_work(org, 0.0 if finished else wait, context.is_active)
        response = work_to_pb(item, finished)
        # The CA's membership list, when newer than the one the participant holds.
        response.membership_list = self._membership.membership_list_after(request.membership_serial)
        return response

    def DownloadModel(  # noqa: N802
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        _authenticate(self._membership)
        yield from _model_chunks(self._service, request, encrypted=True)

    def DownloadRoundInputs(  # noqa: N802
        self, request: pb.DownloadRoundInputsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RoundInputsChunk]:
        """A paillier round's inputs for a member of U3 to vet: the info, then data chunks."""
        org = current_identity().org_id
        _authenticate(self._membership)
        payload = self._service.round_inputs(org, request.job_id, request.round_id)
        digest = hashlib.sha256(payload).digest()
        yield pb.RoundInputsChunk(info=pb.RoundInputsInfo(total_bytes=len(payload), sha256=digest))
        for piece in chunking.split(payload):
            yield pb.RoundInputsChunk(data=piece)

    def SubmitUpdate(  # noqa: N802
        self, request_iterator: Iterator[pb.SubmitUpdateRequest], context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        org = current_identity().org_id
        # Membership first: a pending or revoked organization is refused before the server reads
        # (or waits for) a single message of its stream.
        _authenticate(self._membership)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidRequest("the first message of SubmitUpdate must be its header")
        update = update_from_pb(first.header)
        # The round is checked from the header before any payload byte is read, and the payload
        # goes to the spool as it arrives.
        chunks = _data_chunks(request_iterator)
        return acknowledgement_to_pb(self._service.receive_update(org, update, chunks))

    def SubmitMessage(  # noqa: N802
        self, request: pb.SubmitMessageRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        identity = current_identity()
        _authenticate(self._membership)
        message = message_from_pb(request)
        ack = self._service.submit_message(identity.org_id, message, identity.certificate_pem)
        return acknowledgement_to_pb(ack)

    def SubmitCeremony(  # noqa: N802
        self, request: pb.SubmitCeremonyRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        identity = current_identity()
        _authenticate(self._membership)
        ack = self._service.submit_ceremony(
            identity.org_id,
            request.job_id,
            request.action,
            request.body,
            identity.certificate_pem,
        )
        return acknowledgement_to_pb(ack)

    def SubmitInitialWeights(  # noqa: N802
        self,
        request_iterator: Iterator[pb.SubmitInitialWeightsRequest],
        context: grpc.ServicerContext,
    ) -> pb.SubmitUpdateResponse:
        org = current_identity().org_id
        _authenticate(self._membership)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidRequest("the first message of SubmitInitialWeights must be its header")
        header = header_from_proto(first.header.payload)
        chunks = _data_chunks(request_iterator)
        ack = self._service.receive_initial_weights(org, first.header.job_id, header, chunks)
        return acknowledgement_to_pb(ack)

    def ReportMetrics(  # noqa: N802
        self, request: pb.ReportMetricsRequest, context: grpc.ServicerContext
    ) -> pb.ReportMetricsResponse:
        org = current_identity().org_id
        _authenticate(self._membership)
        duplicate = self._service.report_metrics(metric_report_from_pb(request, org))
        return pb.ReportMetricsResponse(duplicate=duplicate)


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
        return participant_to_pb(self._membership.approve(request.org_id, actor))

    def RevokeParticipant(  # noqa: N802
        self, request: pb.OrgRef, context: grpc.ServicerContext
    ) -> pb.ParticipantInfo:
        actor = current_identity().org_id
        return participant_to_pb(self._membership.revoke(request.org_id, actor))

    def RevokeCertificate(  # noqa: N802
        self, request: pb.RevokeCertificateRequest, context: grpc.ServicerContext
    ) -> pb.RevokeCertificateResponse:
        already = self._membership.revoke_certificate(
            request.serial_hex, request.reason, current_identity().org_id
        )
        return pb.RevokeCertificateResponse(already_revoked=already)

    def PublishMembershipList(  # noqa: N802
        self, request: pb.PublishMembershipListRequest, context: grpc.ServicerContext
    ) -> pb.PublishMembershipListResponse:
        serial, already = self._membership.publish_membership_list(
            request.document, current_identity().org_id
        )
        return pb.PublishMembershipListResponse(serial=serial, already_published=already)

    def ListAuditEvents(  # noqa: N802
        self, request: pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        return audit_events_to_pb(self._membership.audit_events(request.limit or 100))

    def CreateJob(  # noqa: N802
        self, request_iterator: Iterator[pb.CreateJobRequest], context: grpc.ServicerContext
    ) -> pb.JobStatus:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise InvalidRequest("the first message of CreateJob must be its header")
        spec = spec_from_pb(first.header.spec)
        if spec.initial_weights_from_seed and not first.header.HasField("initial_weights"):
            header = PayloadHeader((), 0, hashlib.sha256(b"").digest())
        else:
            header = header_from_proto(first.header.initial_weights)
        chunks = _data_chunks(request_iterator)
        job = self._service.receive_job(spec, header, chunks, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(job.job_id))

    def StartJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._service.start_job(request.job_id, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(request.job_id))

    def PauseJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._service.pause_job(request.job_id, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(request.job_id))

    def ResumeJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._service.resume_job(request.job_id, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(request.job_id))

    def AbortJob(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:  # noqa: N802
        self._service.abort_job(request.job_id, actor=current_identity().org_id)
        return job_view_to_pb(self._service.get_job(request.job_id))

    def DeleteJob(  # noqa: N802
        self, request: pb.JobRef, context: grpc.ServicerContext
    ) -> pb.DeleteJobResponse:
        deleted = self._service.delete_job(request.job_id, actor=current_identity().org_id)
        return pb.DeleteJobResponse(
            job_id=deleted.job.job_id,
            name=deleted.job.spec.name,
            blobs_removed=deleted.blobs_removed,
        )

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
            participants=[participant_to_pb(p) for p in self._membership.list_participants()]
        )

    def DownloadModel(  # noqa: N802
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        yield from _model_chunks(self._service, request)
