"""Client of the coordinator's admin API (admin certificates only)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy.typing as npt

from fedsilo.codec import encode_tensors, header_to_proto
from fedsilo.tls import TlsFiles, channel_credentials, check_insecure_allowed
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from fedsilo.wire import header_then_chunks, receive_model

__all__ = ["AdminClient"]

OPTIONS = [
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.max_send_message_length", 4 << 20),
    # After a coordinator restart the channel reconnects within seconds, not gRPC's default
    # of up to two minutes: `job watch` keeps one channel across restarts.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


class AdminClient:
    """Thin wrapper: every call has a deadline; errors surface as grpc.RpcError."""

    def __init__(self, target: str, tls: TlsFiles | None, timeout: float = 30.0) -> None:
        if tls is None:
            check_insecure_allowed(target)
            self._channel = grpc.insecure_channel(target, options=OPTIONS)
        else:
            self._channel = grpc.secure_channel(target, channel_credentials(tls), options=OPTIONS)
        self._stub = pb_grpc.AdminServiceStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_job(
        self, spec: pb.JobSpec, initial_weights: list[npt.NDArray[Any]] | None = None
    ) -> pb.JobStatus:
        """Create a job. Without ``initial_weights`` its participants build version 0 from the
        job's seed with the task's model (docs/design.md, "Version 0 from the seed"), so the
        caller needs neither the task's model nor TensorFlow."""
        if initial_weights is None:
            seeded = pb.JobSpec()
            seeded.CopyFrom(spec)
            seeded.initial_weights_from_seed = True
            only = pb.CreateJobRequest(header=pb.CreateJobHeader(spec=seeded))
            result: pb.JobStatus = self._stub.CreateJob(iter([only]), timeout=self._timeout)
            return result
        header, payload = encode_tensors(initial_weights)
        first = pb.CreateJobRequest(
            header=pb.CreateJobHeader(spec=spec, initial_weights=header_to_proto(header))
        )
        requests = header_then_chunks(first, payload, lambda d: pb.CreateJobRequest(data=d))
        result = self._stub.CreateJob(requests, timeout=self._timeout)
        return result

    def start_job(self, job_id: str) -> pb.JobStatus:
        result: pb.JobStatus = self._stub.StartJob(pb.JobRef(job_id=job_id), timeout=self._timeout)
        return result

    def pause_job(self, job_id: str) -> pb.JobStatus:
        result: pb.JobStatus = self._stub.PauseJob(pb.JobRef(job_id=job_id), timeout=self._timeout)
        return result

    def resume_job(self, job_id: str) -> pb.JobStatus:
        result: pb.JobStatus = self._stub.ResumeJob(pb.JobRef(job_id=job_id), timeout=self._timeout)
        return result

    def abort_job(self, job_id: str) -> pb.JobStatus:
        result: pb.JobStatus = self._stub.AbortJob(pb.JobRef(job_id=job_id), timeout=self._timeout)
        return result

    def delete_job(self, job_id: str) -> pb.DeleteJobResponse:
        result: pb.DeleteJobResponse = self._stub.DeleteJob(
            pb.JobRef(job_id=job_id), timeout=self._timeout
        )
        return result

    def get_job(self, job_id: str) -> pb.JobStatus:
        result: pb.JobStatus = self._stub.GetJob(pb.JobRef(job_id=job_id), timeout=self._timeout)
        return result

    def list_jobs(self) -> list[pb.JobStatus]:
        return list(self._stub.ListJobs(pb.ListJobsRequest(), timeout=self._timeout).jobs)

    def list_participants(self) -> list[pb.ParticipantInfo]:
        response = self._stub.ListParticipants(pb.ListParticipantsRequest(), timeout=self._timeout)
        return list(response.participants)

    def approve_participant(self, org_id: str) -> pb.ParticipantInfo:
        result: pb.ParticipantInfo = self._stub.ApproveParticipant(
            pb.OrgRef(org_id=org_id), timeout=self._timeout
        )
        return result

    def revoke_participant(self, org_id: str) -> pb.ParticipantInfo:
        result: pb.ParticipantInfo = self._stub.RevokeParticipant(
            pb.OrgRef(org_id=org_id), timeout=self._timeout
        )
        return result

    def revoke_certificate(self, serial_hex: str, reason: str = "") -> bool:
        """Revoke a certificate by serial; True if it was already revoked."""
        response = self._stub.RevokeCertificate(
            pb.RevokeCertificateRequest(serial_hex=serial_hex, reason=reason), timeout=self._timeout
        )
        return bool(response.already_revoked)

    def publish_membership_list(self, document: bytes) -> tuple[int, bool]:
        """Publish a membership list signed by the consortium CA; (its serial, already there)."""
        response = self._stub.PublishMembershipList(
            pb.PublishMembershipListRequest(document=document), timeout=self._timeout
        )
        return int(response.serial), bool(response.already_published)

    def audit_events(self, limit: int = 100) -> list[pb.AuditEvent]:
        response = self._stub.ListAuditEvents(
            pb.ListAuditEventsRequest(limit=limit), timeout=self._timeout
        )
        return list(response.events)

    def server_info(self) -> pb.ServerInfo:
        result: pb.ServerInfo = self._stub.GetServerInfo(
            pb.GetServerInfoRequest(), timeout=self._timeout
        )
        return result

    def download_model(self, job_id: str, version: int = -1) -> tuple[int, list[npt.NDArray[Any]]]:
        stream = self._stub.DownloadModel(
            pb.DownloadModelRequest(job_id=job_id, version=version), timeout=self._timeout
        )
        return receive_model(stream)
