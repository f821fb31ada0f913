"""gRPC client of the participant API: deadlines on every call, backoff with jitter, chunked I/O."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import numpy.typing as npt

from fedsilo.chunking import MAX_MESSAGE_BYTES
from fedsilo.codec import PayloadHeader, header_to_proto
from fedsilo.convert import (
    protection_from_pb,
    secagg_parameters_from_pb,
    training_settings_from_pb,
)
from fedsilo.protection import Protection
from fedsilo.tls import (
    TlsConfigError,
    TlsFiles,
    channel_credentials,
    check_insecure_allowed,
    files_stamp,
)
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from fedsilo.wire import header_then_chunks, receive_model
from participant.domain.assignments import (
    AdvertisedKeys,
    Assignment,
    AssignmentKind,
    KeyCeremonyStepData,
    RoundOutcome,
    SecAggStepData,
    SubmissionReceipt,
    TaskReply,
)

__all__ = [
    "CLIENT_OPTIONS",
    "Backoff",
    "ChannelSource",
    "CoordinatorClient",
    "Stopped",
    "open_channel",
]

T = TypeVar("T")

log = logging.getLogger("participant.transport")

CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

_KINDS = {
    pb.TASK_KIND_WAIT: AssignmentKind.WAIT,
    pb.TASK_KIND_TRAIN: AssignmentKind.TRAIN,
    pb.TASK_KIND_EVALUATE: AssignmentKind.EVALUATE,
    pb.TASK_KIND_SECAGG_STEP: AssignmentKind.SECAGG_STEP,
    pb.TASK_KIND_KEY_CEREMONY: AssignmentKind.KEY_CEREMONY,
}
_PHASES = {
    value: name.removeprefix("ROUND_PHASE_").lower() for name, value in pb.RoundPhase.items()
}
_PHASE_VALUES = {v: k for k, v in _PHASES.items()}


class Stopped(Exception):
    """The daemon was asked to stop while waiting."""


def open_channel(target: str, tls: TlsFiles | None) -> grpc.Channel:
    """A channel with mutual TLS; plaintext only to a loopback address (tests)."""
    if tls is None:
        check_insecure_allowed(target)
        return grpc.insecure_channel(target, options=CLIENT_OPTIONS)
    return grpc.secure_channel(target, channel_credentials(tls), options=CLIENT_OPTIONS)


class ChannelSource:
    """The channel to the coordinator, reopened when renewed certificate files appear.

    Certificates are rotated by replacing the files; the next call then handshakes with the new
    certificate, without restarting the daemon or losing the round in progress. Only the
    daemon's own thread uses the channel, so the old one is closed between calls.
    """

    def __init__(self, target: str, tls: TlsFiles | None) -> None:
        self._target = target
        self._tls = tls
        self._stamp = files_stamp(tls) if tls else ()
        self._channel = open_channel(target, tls)

    def current(self) -> grpc.Channel:
        if self._tls is not None:
            stamp = files_stamp(self._tls)
            if stamp and stamp != self._stamp:
                try:
                    fresh = open_channel(self._target, self._tls)
                except TlsConfigError as exc:
                    log.warning("renewed certificate files not usable yet: %s", exc)
                else:
                    log.info("certificate files changed: reconnecting with the renewed certificate")
                    self._channel.close()
                    self._channel, self._stamp = fresh, stamp
        return self._channel

    def close(self) -> None:
        self._channel.close()


class Backoff:
    """Exponential backoff with full jitter, capped; reset after a success."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._maximum, self._initial * (2**self._attempt))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class CoordinatorClient:
    """Calls the coordinator's participant API; every call carries a deadline.

    A daemon retries transient failures until it is stopped; a command (``give_up_after``
    seconds) gives up and raises the last error.
    """

    def __init__(
        self,
        channels: ChannelSource,
        rpc_timeout: float,
        backoff: Backoff,
        stop: threading.Event,
        give_up_after: float | None = None,
    ) -> None:
        self._channels = channels
        self._timeout = rpc_timeout
        self._backoff = backoff
        self._stop = stop
        self._give_up_after = give_up_after

    def _stub(self) -> pb_grpc.ParticipantServiceStub:
        return pb_grpc.ParticipantServiceStub(self._channels.current())

    def pause(self) -> bool:
        """Wait one backoff step after a failure; True if asked to stop meanwhile."""
        return self._stop.wait(self._backoff.next_delay())

    def retrying(self, call: Callable[[], T]) -> T:
        """Run call until it succeeds or fails for a non-transient reason, backing off between."""
        deadline = None
        if self._give_up_after is not None:
            deadline = time.monotonic() + self._give_up_after
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                result = call()
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    raise
                if self._stop.wait(self._backoff.next_delay()):
                    raise Stopped() from None
                continue
            self._backoff.reset()
            return result

    def get_assignment(self, wait_seconds: float, held_round_ids: Sequence[str] = ()) -> TaskReply:
        """Long-poll for work; the assignment is WAIT if nothing came within wait_seconds.

        ``held_round_ids`` are the rounds this participant keeps secure-aggregation state for;
        the reply names those that have ended.
        """
        request = pb.GetTaskRequest(wait_seconds=wait_seconds, held_round_ids=list(held_round_ids))
        future = self._stub().GetTask.future(request, timeout=wait_seconds + 15)
        while True:
            try:
                response = future.result(timeout=0.25)
                break
            except grpc.FutureTimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    raise Stopped() from None
        finished = tuple(
            RoundOutcome(
                outcome.round_id, outcome.phase == pb.ROUND_PHASE_COMMITTED, outcome.reason
            )
            for outcome in response.finished_rounds
        )
        return TaskReply(_assignment_from_pb(response), finished)

    def download_model(self, job_id: str, version: int) -> tuple[int, list[npt.NDArray[Any]]]:
        stream = self._stub().DownloadModel(
            pb.DownloadModelRequest(job_id=job_id, version=version), timeout=self._timeout
        )
        return receive_model(stream)

    def submit_update(
        self,
        assignment: Assignment,
        num_examples: int,
        train_loss: float,
        header: PayloadHeader,
        payload: bytes,
    ) -> SubmissionReceipt:
        first = pb.SubmitUpdateRequest(
            header=pb.UpdateHeader(
                job_id=assignment.job_id,
                round_id=assignment.round_id,
                phase=_PHASE_VALUES[assignment.phase],
                base_version=assignment.model_version,
                num_examples=num_examples,
                train_loss=train_loss,
                payload=header_to_proto(header),
            )
        )
        requests = header_then_chunks(first, payload, lambda d: pb.SubmitUpdateRequest(data=d))
        response = self._stub().SubmitUpdate(requests, timeout=self._timeout)
        return SubmissionReceipt(response.acknowledgement_id, response.duplicate)

    def submit_message(self, assignment: Assignment, body: bytes) -> SubmissionReceipt:
        """Send the answer to a small secure-aggregation phase (the canonical message bytes)."""
        response = self._stub().SubmitMessage(
            pb.SubmitMessageRequest(
                job_id=assignment.job_id,
                round_id=assignment.round_id,
                phase=_PHASE_VALUES[assignment.phase],
                body=body,
            ),
            timeout=self._timeout,
        )
        return SubmissionReceipt(response.acknowledgement_id, response.duplicate)

    def submit_ceremony(self, job_id: str, action: str, body: bytes) -> SubmissionReceipt:
        """Send one key-ceremony message of a paillier job (``job_key``, ``dealt_key``,
        ``sealed`` or ``confirm``)."""
        response = self._stub().SubmitCeremony(
            pb.SubmitCeremonyRequest(job_id=job_id, action=action, body=body),
            timeout=self._timeout,
        )
        return SubmissionReceipt(response.acknowledgement_id, response.duplicate)

    def report_metrics(
        self, job_id: str, version: int, num_examples: int, loss: float, accuracy: float
    ) -> bool:
        response = self._stub().ReportMetrics(
            pb.ReportMetricsRequest(
                job_id=job_id,
                model_version=version,
                num_examples=num_examples,
                loss=loss,
                accuracy=accuracy,
            ),
            timeout=self._timeout,
        )
        return bool(response.duplicate)


def _assignment_from_pb(response: pb.GetTaskResponse) -> Assignment:
    kind = _KINDS.get(response.kind, AssignmentKind.WAIT)
    if kind is AssignmentKind.WAIT:
        return Assignment(AssignmentKind.WAIT)
    try:
        task_config = json.loads(response.task_config_json or "{}")
    except ValueError:
        task_config = None
    if not isinstance(task_config, dict):
        raise ValueError("coordinator sent a task configuration that is not a JSON object")
    protection = protection_from_pb(response.protection, unspecified=Protection.NONE)
    if protection is None:
        raise ValueError("coordinator sent an unknown protection mode")
    secagg = None
    if kind is AssignmentKind.SECAGG_STEP or (
        kind is AssignmentKind.TRAIN and protection in (Protection.SECAGG, Protection.PAILLIER)
    ):
        if not response.HasField("secagg") or not response.secagg.HasField("parameters"):
            raise ValueError("coordinator sent a secure-aggregation task without its parameters")
        secagg = _secagg_step_from_pb(response.secagg)
    ceremony = None
    if kind is AssignmentKind.KEY_CEREMONY:
        if not response.HasField("ceremony"):
            raise ValueError("coordinator sent a key-ceremony task without its step")
        ceremony = _ceremony_step_from_pb(response.ceremony)
    return Assignment(
        kind=kind,
        job_id=response.job_id,
        task_name=response.task_name,
        round_id=response.round_id,
        round_number=response.round_number,
        phase=_PHASES.get(response.phase, "unspecified"),
        model_version=response.model_version,
        training=training_settings_from_pb(response.training),
        task_config=task_config,
        seconds_left=response.seconds_left,
        protection=protection,
        secagg=secagg,
        ceremony=ceremony,
    )


def _secagg_step_from_pb(step: pb.SecAggStep) -> SecAggStepData:
    return SecAggStepData(
        parameters=secagg_parameters_from_pb(step.parameters),
        keys=tuple(AdvertisedKeys(k.signed_keys, k.certificate_pem) for k in step.keys),
        shares=tuple(step.shares),
        survivors=tuple(step.survivors),
        unmask_request=step.unmask_request,
    )


def _ceremony_step_from_pb(step: pb.KeyCeremonyStep) -> KeyCeremonyStepData:
    return KeyCeremonyStepData(
        action=step.action,
        dealer=step.dealer,
        key_bits=step.key_bits,
        job_keys=tuple(AdvertisedKeys(k.signed_keys, k.certificate_pem) for k in step.job_keys),
        dealt_key=step.dealt_key,
        dealer_certificate_pem=step.dealer_certificate_pem,
        sealed_key=step.sealed_key,
        parameters=secagg_parameters_from_pb(step.parameters)
        if step.HasField("parameters")
        else None,
    )
