"""The coordinator's error tree; transport/ maps each class to one gRPC status."""

from __future__ import annotations

__all__ = [
    "ConcurrentUpdate",
    "ConflictingSubmission",
    "CoordinatorError",
    "InvalidRequest",
    "NotAuthorized",
    "NotFound",
    "StaleMembershipList",
    "SpoolFull",
    "StorageUnavailable",
    "WrongRoundPhase",
]


class CoordinatorError(Exception):
    """Base of every error a coordinator use case raises on purpose.

    The message is public: it is sent to the caller, so it never contains key material,
    tensors or other secrets.
    """


class InvalidRequest(CoordinatorError):
    """The request is malformed: shapes, dtypes, counts, NaN/Inf, sizes or bad configuration."""


class NotFound(CoordinatorError):
    """The job, round or model version does not exist."""


class WrongRoundPhase(CoordinatorError):
    """The request does not fit the current state: wrong phase, late, or not in the cohort."""


class ConflictingSubmission(CoordinatorError):
    """A different payload was already accepted for this (round, participant, phase)."""


class NotAuthorized(CoordinatorError):
    """The caller's certificate does not carry the role this call needs."""


class StaleMembershipList(CoordinatorError):
    """A membership list whose serial is not above the one published (lists never go back)."""


class StorageUnavailable(CoordinatorError):
    """The database or blob store cannot be reached; nothing was changed."""


class ConcurrentUpdate(CoordinatorError):
    """Another writer changed the same row first, again after every retry; nothing was
    changed and the call may be sent again."""


class SpoolFull(CoordinatorError):
    """The upload spool's disk budget (of the organization, or of all of them) cannot take the
    announced size now; nothing was received, and the upload may be sent again later."""
