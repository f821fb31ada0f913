"""The participant's errors: one root, drawn as a tree in the package docstring."""

from __future__ import annotations

import enum

__all__ = [
    "CallFailed",
    "CallStatus",
    "CoordinatorBusy",
    "CoordinatorUnavailable",
    "LocalStateError",
    "MembershipStale",
    "MembershipUnavailable",
    "ModelUnavailable",
    "NotSupported",
    "PaillierStateUnreadable",
    "ParticipantError",
    "RequestRefused",
    "SecAggUnavailable",
    "TRANSIENT",
    "StateUnreadable",
    "Stopped",
    "TaskFailed",
    "UntrustedMessage",
]


class CallStatus(enum.Enum):
    """How a call to the coordinator ended, as the transport reports it (the gRPC status codes,
    named the same, so that nothing above the transport needs gRPC)."""

    OK = "ok"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"


TRANSIENT = frozenset({CallStatus.UNAVAILABLE, CallStatus.DEADLINE_EXCEEDED})
"""Statuses a call is retried on (with backoff): the coordinator may answer later."""


class ParticipantError(Exception):
    """Base of the errors the participant raises on purpose; messages never hold secrets."""


class CallFailed(ParticipantError):
    """A call to the coordinator failed: ``status`` says how, ``details`` is its message."""

    def __init__(self, status: CallStatus, details: str) -> None:
        super().__init__(f"{status.name}: {details}")
        self.status = status
        self.details = details

    @staticmethod
    def of(status: CallStatus, details: str, *, busy: bool = False) -> CallFailed:
        """The error of the status's kind: unavailable for a transient one, busy for a
        RESOURCE_EXHAUSTED marked busy (``busy``: the coordinator's call cap or spool budget),
        refused otherwise."""
        if status in TRANSIENT:
            return CoordinatorUnavailable(status, details)
        if busy and status is CallStatus.RESOURCE_EXHAUSTED:
            return CoordinatorBusy(status, details)
        return RequestRefused(status, details)


class CoordinatorUnavailable(CallFailed):
    """The coordinator could not be reached or did not answer in time (after the retries)."""


class CoordinatorBusy(CoordinatorUnavailable):
    """The coordinator refused the call for a limit that frees up as other calls end (its cap on
    concurrent calls, its upload spool's disk budget: RESOURCE_EXHAUSTED with the busy trailer of
    ``fedsilo.wire``), so it is retried with backoff. A RESOURCE_EXHAUSTED without the trailer
    (a message over the size limit) is a refusal."""


class RequestRefused(CallFailed):
    """The coordinator answered the call with an error: sending it again will not help."""


class Revoked(ParticipantError):
    """The consortium revoked this organization or its certificate: revocation is permanent, so
    the daemon stops instead of retrying (re-admission is a new organization id)."""


def is_revocation(exc: CallFailed) -> bool:
    """Whether the coordinator refused the call because of a revocation (its refusal texts)."""
    return (exc.status is CallStatus.PERMISSION_DENIED and "revoked" in exc.details) or (
        exc.status is CallStatus.UNAUTHENTICATED and "revoked" in exc.details
    )


class UntrustedMessage(ParticipantError, ValueError):
    """The coordinator sent what this participant will not act on: a malformed or incomplete
    task, an unknown phase, a model of another shape, an unprotected round in a paillier job."""


class NotSupported(ParticipantError, ValueError):
    """The work needs what this participant is not set up for (e.g. paillier protection)."""


class SecAggUnavailable(NotSupported):
    """This participant cannot take part in secure aggregation (no usable organization key)."""


class MembershipUnavailable(ParticipantError, ValueError):
    """No membership list signed by the consortium CA is held and one is required: secure
    rounds and key-ceremony steps wait for it (nothing is recorded as refused)."""


class MembershipStale(MembershipUnavailable):
    """The newest membership list held is older than ``accept.max_membership_age``: secure
    rounds and key-ceremony steps wait for a list the CA issued since (nothing is recorded as
    refused, so they are answered once it arrives)."""


class ModelUnavailable(ParticipantError, ValueError):
    """A global model version cannot be obtained or rebuilt (the message says why)."""


class TaskFailed(ParticipantError, ValueError):
    """The organization's task could not train or evaluate (bad settings, data or weights)."""


class LocalStateError(ParticipantError, ValueError):
    """The local state directory cannot serve a request: an id that is not a safe file name,
    or a stored state that cannot be decoded."""


class StateUnreadable(LocalStateError):
    """A stored round state that cannot be decoded (damaged or from another version)."""


class PaillierStateUnreadable(LocalStateError):
    """A stored job state that cannot be decoded (damaged or from another version)."""


class Stopped(Exception):
    """The daemon was asked to stop while waiting (not an error: it unwinds the work in hand)."""
