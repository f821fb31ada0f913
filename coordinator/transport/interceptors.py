"""The one interceptor layer: identity from the peer certificate, role checks, error mapping, audit.

Identity is read only from the mTLS peer certificate (``auth_context``), never from a request
field. Every coordinator error becomes a gRPC status through ``STATUS_BY_ERROR``; anything else
becomes INTERNAL with a generic message (details go to the server log only). Garbage request bytes
are caught at deserialization and answered with INVALID_ARGUMENT instead of grpc's INTERNAL.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from coordinator.errors import (
    ConcurrentUpdate,
    ConflictingSubmission,
    InvalidRequest,
    NotAuthorized,
    NotFound,
    SpoolFull,
    StaleMembershipList,
    StorageUnavailable,
    WrongRoundPhase,
)
from fedsilo.chunking import ChunkError
from fedsilo.codec import CodecError
from fedsilo.idle import IdleWatchdog
from fedsilo.logs import context as log_context
from fedsilo.pki import Role
from fedsilo.tls import PeerIdentity, identity_from_auth_context
from fedsilo.wire import BUSY_TRAILER

__all__ = ["STATUS_BY_ERROR", "AuthInterceptor", "CallLimiter", "current_identity", "status_for"]

log = logging.getLogger("coordinator.transport")

STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (ChunkError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (WrongRoundPhase, grpc.StatusCode.FAILED_PRECONDITION),
    (StaleMembershipList, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictingSubmission, grpc.StatusCode.ALREADY_EXISTS),
    (NotAuthorized, grpc.StatusCode.PERMISSION_DENIED),
    (StorageUnavailable, grpc.StatusCode.UNAVAILABLE),
    # A lost compare-and-set that outlived the use case's retries: nothing was written, and the
    # participants retry UNAVAILABLE with backoff.
    (ConcurrentUpdate, grpc.StatusCode.UNAVAILABLE),
    # The spool's disk budget frees up as other uploads end: marked busy, retried with backoff.
    (SpoolFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
)
"""The only place where an error class becomes a gRPC status code."""

ROLE_BY_SERVICE: dict[str, frozenset[Role]] = {
    "fedsilo.v1.ParticipantService": frozenset({Role.PARTICIPANT}),
    "fedsilo.v1.AdminService": frozenset({Role.ADMIN}),
    "grpc.health.v1.Health": frozenset(Role),
    "grpc.reflection.v1alpha.ServerReflection": frozenset(Role),
    "grpc.reflection.v1.ServerReflection": frozenset(Role),
}

_identity: contextvars.ContextVar[PeerIdentity | None] = contextvars.ContextVar(
    "fedsilo_identity", default=None
)


def current_identity() -> PeerIdentity:
    """The caller's identity, set by AuthInterceptor for the duration of the call."""
    identity = _identity.get()
    if identity is None:
        raise NotAuthorized("no authenticated identity")
    return identity


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


class _Malformed:
    """Stands in for a request message whose bytes did not parse."""


MALFORMED = _Malformed()


def _safe_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - any parse failure means garbage input
            return MALFORMED

    return deserialize


class CallLimiter:
    """At most ``per_org`` concurrent calls per organization, so one cannot starve the others,
    and at most ``participant_total`` participant-API calls in all, so that the worker threads
    left over always serve health checks and the admin API whatever organizations do."""

    def __init__(self, per_org: int, participant_total: int | None = None) -> None:
        self._per_org = per_org
        self._participant_total = participant_total
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._participant_calls = 0

    def acquire(self, org_id: str, *, participant_call: bool = False) -> bool:
        with self._lock:
            count = self._active.get(org_id, 0)
            if count >= self._per_org:
                return False
            total = self._participant_total
            if participant_call and total is not None and self._participant_calls >= total:
                return False
            self._active[org_id] = count + 1
            if participant_call:
                self._participant_calls += 1
            return True

    def release(self, org_id: str, *, participant_call: bool = False) -> None:
        with self._lock:
            remaining = self._active[org_id] - 1
            if remaining:
                self._active[org_id] = remaining
            else:
                del self._active[org_id]
            if participant_call:
                self._participant_calls -= 1


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler with identity, authorization, input and error handling."""

    def __init__(
        self,
        audit: Callable[[str, str, str], None] | None = None,
        is_revoked: Callable[[str], bool] = lambda serial: False,
        limiter: CallLimiter | None = None,
        stream_idle_seconds: float | None = None,
    ) -> None:
        self._audit = audit
        self._is_revoked = is_revoked
        self._limiter = limiter
        self._stream_idle_seconds = stream_idle_seconds

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]
        allowed = ROLE_BY_SERVICE.get(service, frozenset())
        policy = _Policy(
            allowed,
            self._audit,
            self._is_revoked,
            self._limiter,
            participant_call=service == PARTICIPANT_SERVICE,
            stream_idle_seconds=self._stream_idle_seconds,
        )
        return _wrap(handler, method, policy)


PARTICIPANT_SERVICE = "fedsilo.v1.ParticipantService"


@dataclass(frozen=True)
class _Policy:
    allowed: frozenset[Role]
    audit: Callable[[str, str, str], None] | None
    is_revoked: Callable[[str], bool]
    limiter: CallLimiter | None
    participant_call: bool = False
    stream_idle_seconds: float | None = None


def _authorize(context: grpc.ServicerContext, method: str, policy: _Policy) -> PeerIdentity:
    audit = policy.audit
    identity = identity_from_auth_context(context.auth_context())
    if identity is None:
        if audit:
            audit("-", method, "unauthenticated")
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    assert identity is not None
    if policy.is_revoked(identity.serial_hex):
        if audit:
            audit(identity.org_id, method, "certificate_revoked")
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "this certificate has been revoked")
    if identity.role not in policy.allowed:
        if audit:
            audit(identity.org_id, method, "permission_denied")
        log.warning(
            "role %s refused on %s", identity.role.value, method, **log_context(org=identity.org_id)
        )
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"a {identity.role.value} certificate may not call {method}",
        )
    return identity


def _acquire(context: grpc.ServicerContext, identity: PeerIdentity, policy: _Policy) -> None:
    limiter = policy.limiter
    if limiter is not None and not limiter.acquire(
        identity.org_id, participant_call=policy.participant_call
    ):
        # Marked, so that a participant retries this refusal (and not an oversized message,
        # which gRPC also answers with RESOURCE_EXHAUSTED).
        context.set_trailing_metadata((BUSY_TRAILER,))
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many concurrent calls (from this organization, or from all of them); "
            "retry with backoff",
        )


def _release(identity: PeerIdentity, policy: _Policy) -> None:
    if policy.limiter is not None:
        policy.limiter.release(identity.org_id, participant_call=policy.participant_call)


def _ended_by_client(
    context: grpc.ServicerContext, exc: Exception, method: str, identity: PeerIdentity
) -> None:
    """A call the client cancelled (or lost) midway is one INFO line, never a traceback: any
    participant could otherwise fill the log by cancelling uploads."""
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        log.info("%s: the client ended the call midway", method, **log_context(org=identity.org_id))
        context.abort(grpc.StatusCode.CANCELLED, "the client ended the call")


def _fail(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", method)
    else:
        log.info("%s -> %s: %s", method, code.name, message)
    if isinstance(exc, SpoolFull):
        context.set_trailing_metadata((BUSY_TRAILER,))
    context.abort(code, message)


def _wrap(handler: Any, method: str, policy: _Policy) -> Any:
    def guard_request(request: Any, context: grpc.ServicerContext) -> None:
        if request is MALFORMED:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message"
            )

    def guard_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        if policy.stream_idle_seconds is None:
            for request in requests:
                guard_request(request, context)
                yield request
            return
        idle = policy.stream_idle_seconds

        def cancel() -> None:
            log.warning("%s: no message for %g s; the call is cancelled", method, idle)
            context.cancel()

        watchdog = IdleWatchdog(idle, cancel, "stream-idle-watchdog")
        watchdog.start()
        try:
            for request in requests:
                watchdog.moved()
                guard_request(request, context)
                yield request
        finally:
            watchdog.stop()

    # Authorization comes first: an unauthorized caller learns nothing about its input.
    def run(behavior: Callable[..., Any], request: Any, context: grpc.ServicerContext) -> Any:
        identity = _authorize(context, method, policy)
        guard_request(request, context)
        _acquire(context, identity, policy)
        token = _identity.set(identity)
        try:
            return behavior(request, context)
        except Exception as exc:
            _ended_by_client(context, exc, method, identity)
            if context.code() is not None:
                raise  # context.abort() already chose the status
            _fail(context, exc, method)
        finally:
            _identity.reset(token)
            _release(identity, policy)
        return None

    def stream_out(
        behavior: Callable[..., Iterator[Any]], request: Any, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        identity = _authorize(context, method, policy)
        guard_request(request, context)
        _acquire(context, identity, policy)
        token = _identity.set(identity)
        try:
            yield from behavior(request, context)
        except Exception as exc:
            _ended_by_client(context, exc, method, identity)
            if context.code() is not None:
                raise
            _fail(context, exc, method)
        finally:
            _identity.reset(token)
            _release(identity, policy)

    deserializer = _safe_deserializer(handler.request_deserializer)
    serializer = handler.response_serializer

    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            return run(inner_uu, request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            yield from stream_out(inner_us, request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return run(inner_su, guard_stream(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
    inner_ss = handler.stream_stream

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        yield from stream_out(inner_ss, guard_stream(requests, context), context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
