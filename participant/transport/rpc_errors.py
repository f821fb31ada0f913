"""The one place gRPC errors become participant errors (``CallFailed`` with a ``CallStatus``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from fedsilo.wire import refused_as_busy
from participant.errors import CallFailed, CallStatus

__all__ = ["call_status", "mapped_rpc_errors"]


def call_status(code: grpc.StatusCode | None) -> CallStatus:
    """The participant's name for a gRPC status code (UNKNOWN for a call without one)."""
    if code is None:
        return CallStatus.UNKNOWN
    return CallStatus[code.name]


@contextmanager
def mapped_rpc_errors() -> Iterator[None]:
    """Raise a failed call's ``grpc.RpcError`` as ``CoordinatorUnavailable`` (transient, or
    ``CoordinatorBusy``: refused by a coordinator limit marked busy) or ``RequestRefused``
    (any other status); the gRPC error stays attached as the cause."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = exc.details() if callable(getattr(exc, "details", None)) else None
        trailers = (
            exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
        )
        raise CallFailed.of(
            call_status(code), details or "", busy=refused_as_busy(trailers, details or "")
        ) from exc
