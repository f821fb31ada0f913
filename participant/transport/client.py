"""gRPC client of the participant API: deadlines on every call, backoff with jitter, chunked I/O."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
import numpy.typing as npt

from fedsilo.chunking import MAX_MESSAGE_BYTES, ChunkError
from fedsilo.codec import CodecError, PayloadHeader, header_to_proto
from fedsilo.idle import IdleWatchdog
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.tls import (
    TlsConfigError,
    TlsFiles,
    channel_credentials,
    check_insecure_allowed,
    files_stamp,
)
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from fedsilo.wire import header_then_chunks, receive_model, receive_round_inputs
from participant.domain.assignments import Assignment, SubmissionReceipt, TaskReply
from participant.errors import (
    CallFailed,
    CallStatus,
    CoordinatorUnavailable,
    Stopped,
    UntrustedMessage,
)
from participant.transport.convert import phase_to_pb, receipt_from_pb, task_reply_from_pb
from participant.transport.rpc_errors import mapped_rpc_errors

__all__ = [
    "CLIENT_OPTIONS",
    "Backoff",
    "ChannelSource",
    "CoordinatorClient",
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
    # gRPC's own reconnection backoff grows to 120 s by default: after a long partition a
    # healed link would go unused for up to two minutes. Reconnect at least every 10 s.
    ("grpc.max_reconnect_backoff_ms", 10_000),
]


# Model transfers are not bounded by one call deadline (a 1 GiB model over a slow link takes
# longer than any sensible deadline, and each retry would start over): a watchdog cuts a
# transfer that stops moving, and these only bound one that crawls.
MIN_TRANSFER_BYTES_PER_S = 16 * 1024
LONGEST_TRANSFER_S = 24 * 3600.0


class ProgressWatchdog:
    """Cancels a streaming call when no message moves for ``idle_seconds``.

    ``through`` wraps the stream of messages (requests pulled by gRPC, or responses read) and
    counts each as progress; for a request stream, running out of requests counts too, and the
    answer must then come within ``idle_seconds``. A call the watchdog cancelled fails as
    DEADLINE_EXCEEDED (``converted``), which the client retries like any expired deadline.
    """

    def __init__(self, idle_seconds: float) -> None:
        self._idle = idle_seconds
        self._watchdog: IdleWatchdog | None = None

    def watch(self, call: grpc.Future) -> None:
        self._watchdog = IdleWatchdog(self._idle, call.cancel, "transfer-watchdog")
        self._watchdog.start()

    def through(self, messages: Iterable[T]) -> Iterator[T]:
        for message in messages:
            self._moved()
            yield message
        self._moved()

    def _moved(self) -> None:
        if self._watchdog is not None:
            self._watchdog.moved()

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    @contextmanager
    def converted(self) -> Iterator[None]:
        try:
            yield
        except (CallFailed, grpc.FutureCancelledError):
            # A cancelled call surfaces as a failed call (a stream) or as FutureCancelledError
            # (a future's result); only the watchdog cancels here.
            if self._watchdog is not None and self._watchdog.fired:
                raise CallFailed.of(
                    CallStatus.DEADLINE_EXCEEDED,
                    f"the transfer made no progress for {self._idle:g} s",
                ) from None
            raise


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

    def renewal_pending(self) -> bool:
        """Whether the certificate files on disk differ from those of the open channel (usable
        or not yet): the channel presents a certificate that is being replaced."""
        if self._tls is None:
            return False
        return files_stamp(self._tls) not in ((), self._stamp)

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

    A failed call raises :class:`participant.errors.CallFailed` (``CoordinatorUnavailable`` or
    ``RequestRefused``, never a gRPC error); a reply that does not convert raises
    ``UntrustedMessage``. A daemon retries transient failures until it is stopped; a command
    (``give_up_after`` seconds) gives up and raises the last error.
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

    def certificate_renewal_pending(self) -> bool:
        """Whether renewed certificate files wait to be used (see ``ChannelSource``)."""
        return self._channels.renewal_pending()

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
            except CallFailed as exc:
                # Transient: unreachable, too slow, or busy (call cap, spool budget).
                if not isinstance(exc, CoordinatorUnavailable) or (
                    deadline is not None and time.monotonic() >= deadline
                ):
                    raise
                delay = self._backoff.next_delay()
                log.info("coordinator call failed (%s); retrying in %.1f s", exc.status.name, delay)
                if self._stop.wait(delay):
                    raise Stopped() from None
                continue
            self._backoff.reset()
            return result

    def get_assignment(
        self, wait_seconds: float, held_round_ids: Sequence[str] = (), membership_serial: int = 0
    ) -> TaskReply:
        """Long-poll for work; the assignment is WAIT if nothing came within wait_seconds.

        ``held_round_ids`` are the rounds this participant keeps secure-aggregation state for;
        the reply names those that have ended. ``membership_serial`` is the serial of the
        membership list held; the reply carries the coordinator's list if it is newer.
        """
        request = pb.GetTaskRequest(
            wait_seconds=wait_seconds,
            held_round_ids=list(held_round_ids),
            membership_serial=membership_serial,
        )
        with mapped_rpc_errors():
            future = self._stub().GetTask.future(request, timeout=wait_seconds + 15)
            while True:
                try:
                    response = future.result(timeout=0.25)
                    break
                except grpc.FutureTimeoutError:
                    if self._stop.is_set():
                        future.cancel()
                        raise Stopped() from None
        return task_reply_from_pb(response)

    def download_model(self, job_id: str, version: int) -> tuple[int, list[npt.NDArray[Any]]]:
        """A model version, streamed in chunks: given up only when no chunk comes for
        ``rpc_timeout`` seconds, never for being slow (a large model over a slow link)."""
        watchdog = ProgressWatchdog(self._timeout)
        try:
            with watchdog.converted(), mapped_rpc_errors():
                stream = self._stub().DownloadModel(
                    pb.DownloadModelRequest(job_id=job_id, version=version),
                    timeout=LONGEST_TRANSFER_S,
                )
                watchdog.watch(stream)
                try:
                    return receive_model(watchdog.through(stream))
                except CodecError as exc:
                    raise UntrustedMessage(str(exc)) from exc
        finally:
            watchdog.stop()

    def download_round_inputs(
        self, job_id: str, round_id: str, announced: RoundInputsInfo
    ) -> bytes | None:
        """The signed inputs a paillier CONSISTENCY step announced, streamed in chunks and
        checked against the announced size and hash (``fedsilo.wire.receive_round_inputs``);
        None if the coordinator now has other inputs for this participant (U3 changed)."""
        watchdog = ProgressWatchdog(self._timeout)
        try:
            with watchdog.converted(), mapped_rpc_errors():
                stream = self._stub().DownloadRoundInputs(
                    pb.DownloadRoundInputsRequest(job_id=job_id, round_id=round_id),
                    timeout=LONGEST_TRANSFER_S,
                )
                watchdog.watch(stream)
                try:
                    payload = receive_round_inputs(watchdog.through(stream), announced)
                except (CodecError, ChunkError) as exc:
                    raise UntrustedMessage(str(exc)) from exc
                if payload is None:
                    stream.cancel()
                return payload
        finally:
            watchdog.stop()

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
                phase=phase_to_pb(assignment.phase),
                base_version=assignment.model_version,
                num_examples=num_examples,
                train_loss=train_loss,
                payload=header_to_proto(header),
            )
        )
        requests = header_then_chunks(first, payload, lambda d: pb.SubmitUpdateRequest(data=d))
        return self._upload(self._stub().SubmitUpdate, requests, len(payload))

    def submit_message(self, assignment: Assignment, body: bytes) -> SubmissionReceipt:
        """Send the answer to a small secure-aggregation phase (the canonical message bytes)."""
        request = pb.SubmitMessageRequest(
            job_id=assignment.job_id,
            round_id=assignment.round_id,
            phase=phase_to_pb(assignment.phase),
            body=body,
        )
        with mapped_rpc_errors():
            response = self._stub().SubmitMessage(request, timeout=self._timeout)
        return receipt_from_pb(response)

    def submit_ceremony(self, job_id: str, action: str, body: bytes) -> SubmissionReceipt:
        """Send one key-ceremony message of a paillier job (``job_key``, ``dealt_key``,
        ``sealed`` or ``confirm``)."""
        request = pb.SubmitCeremonyRequest(job_id=job_id, action=action, body=body)
        with mapped_rpc_errors():
            response = self._stub().SubmitCeremony(request, timeout=self._timeout)
        return receipt_from_pb(response)

    def submit_initial_weights(
        self, job_id: str, header: PayloadHeader, payload: bytes
    ) -> SubmissionReceipt:
        """Send this organization's version 0 of a job, built from the job's seed."""
        first = pb.SubmitInitialWeightsRequest(
            header=pb.InitialWeightsHeader(job_id=job_id, payload=header_to_proto(header))
        )
        requests = header_then_chunks(
            first, payload, lambda d: pb.SubmitInitialWeightsRequest(data=d)
        )
        return self._upload(self._stub().SubmitInitialWeights, requests, len(payload))

    def _upload(
        self, method: Any, requests: Iterator[Any], payload_bytes: int
    ) -> SubmissionReceipt:
        """One client-streaming upload. As for downloads: cut when no chunk moves (or no answer
        comes after the last one) for rpc_timeout seconds; a slow but moving upload of a large
        payload goes on."""
        watchdog = ProgressWatchdog(self._timeout)
        try:
            with watchdog.converted(), mapped_rpc_errors():
                call = method.future(
                    watchdog.through(requests),
                    timeout=self._timeout + payload_bytes / MIN_TRANSFER_BYTES_PER_S,
                )
                watchdog.watch(call)
                response = call.result()
        finally:
            watchdog.stop()
        return receipt_from_pb(response)

    def report_metrics(
        self, job_id: str, version: int, num_examples: int, loss: float, accuracy: float
    ) -> bool:
        request = pb.ReportMetricsRequest(
            job_id=job_id,
            model_version=version,
            num_examples=num_examples,
            loss=loss,
            accuracy=accuracy,
        )
        with mapped_rpc_errors():
            response = self._stub().ReportMetrics(request, timeout=self._timeout)
        return bool(response.duplicate)
