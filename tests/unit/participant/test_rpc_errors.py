"""gRPC errors become participant errors in the transport, and only there."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import grpc
import pytest

import participant
from fedsilo.wire import BUSY_TRAILER, GRPC_CONCURRENCY_REFUSAL
from participant.errors import (
    CallFailed,
    CallStatus,
    CoordinatorBusy,
    CoordinatorUnavailable,
    ParticipantError,
    RequestRefused,
    Stopped,
)
from participant.transport.client import Backoff, CoordinatorClient
from participant.transport.rpc_errors import call_status, mapped_rpc_errors

PACKAGE = Path(participant.__file__).resolve().parent


class _RpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_every_grpc_status_has_a_participant_status_of_the_same_name() -> None:
    assert [call_status(code).name for code in grpc.StatusCode] == [
        code.name for code in grpc.StatusCode
    ]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, CoordinatorUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, CoordinatorUnavailable),
        (grpc.StatusCode.FAILED_PRECONDITION, RequestRefused),
        (grpc.StatusCode.PERMISSION_DENIED, RequestRefused),
        (grpc.StatusCode.INTERNAL, RequestRefused),
    ],
)
def test_a_failed_call_raises_a_participant_error_with_its_status(
    code: grpc.StatusCode, kind: type[CallFailed]
) -> None:
    original = _RpcError(code, "the phase is over")
    with pytest.raises(kind) as raised, mapped_rpc_errors():
        raise original
    assert raised.value.status is CallStatus[code.name]
    assert raised.value.details == "the phase is over"
    assert raised.value.__cause__ is original
    assert isinstance(raised.value, ParticipantError)
    assert not isinstance(raised.value, grpc.RpcError)


def _client(stop: threading.Event, give_up_after: float | None = None) -> CoordinatorClient:
    return CoordinatorClient(None, 1.0, Backoff(0.001, 0.002), stop, give_up_after)  # type: ignore[arg-type]


def test_retrying_retries_transient_failures_and_raises_a_refusal_at_once() -> None:
    client = _client(threading.Event())
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        with mapped_rpc_errors():
            if len(calls) < 3:
                raise _RpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
            raise _RpcError(grpc.StatusCode.NOT_FOUND, "unknown job")

    with pytest.raises(RequestRefused) as raised:
        client.retrying(flaky)
    assert len(calls) == 3
    assert raised.value.status is CallStatus.NOT_FOUND


def test_the_call_caps_refusal_is_retried_and_an_oversized_message_is_not() -> None:
    client = _client(threading.Event())
    calls: list[int] = []

    def capped_then_too_large() -> str:
        calls.append(1)
        with mapped_rpc_errors():
            if len(calls) < 3:
                raise _RpcError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too many calls", (BUSY_TRAILER,)
                )
            raise _RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max")

    with pytest.raises(RequestRefused) as raised:
        client.retrying(capped_then_too_large)
    assert len(calls) == 3
    assert raised.value.status is CallStatus.RESOURCE_EXHAUSTED
    with pytest.raises(CoordinatorBusy), mapped_rpc_errors():
        raise _RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", (BUSY_TRAILER,))
    # The mark means nothing on another status.
    with pytest.raises(RequestRefused), mapped_rpc_errors():
        raise _RpcError(grpc.StatusCode.NOT_FOUND, "unknown job", (BUSY_TRAILER,))
    # gRPC's own refusal of a call over the server's concurrency limit carries no trailer
    # (no fedsilo code runs for it); its fixed text marks it busy.
    with pytest.raises(CoordinatorBusy), mapped_rpc_errors():
        raise _RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, GRPC_CONCURRENCY_REFUSAL)
    with pytest.raises(RequestRefused), mapped_rpc_errors():
        raise _RpcError(grpc.StatusCode.INTERNAL, GRPC_CONCURRENCY_REFUSAL)


def test_a_command_gives_up_on_an_unavailable_coordinator() -> None:
    client = _client(threading.Event(), give_up_after=0.0)

    def down() -> None:
        with mapped_rpc_errors():
            raise _RpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    with pytest.raises(CoordinatorUnavailable):
        client.retrying(down)


def test_retrying_stops_when_asked() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        _client(stop).retrying(lambda: "never called")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _outside(*layers: str) -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in layers
    ]


def test_grpc_and_protobuf_stay_in_the_transport() -> None:
    wire = ("grpc", "fedsilo.v1", "fedsilo.wire", "fedsilo.convert", "google.protobuf")
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name for name in _imports(path) if name.startswith(wire)
        )
        for path in _outside("transport")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_tensorflow_stays_in_training_and_secagg_is_used_through_its_public_api() -> None:
    private = ("secagg.primitives", "secagg.masking", "secagg.paillier.")
    found = {
        str(path.relative_to(PACKAGE)): sorted(
            name
            for name in _imports(path)
            if name.startswith(private)
            or (name.split(".")[0] in ("tensorflow", "keras") and "training" not in path.parts)
        )
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert {path: names for path, names in found.items() if names} == {}


def test_the_package_exports_its_error_tree() -> None:
    exported = {name: getattr(participant, name) for name in participant.__all__}
    errors = [value for value in exported.values() if isinstance(value, type)]
    assert all(
        issubclass(error, ParticipantError)
        for error in errors
        if error not in (Stopped, CallStatus)
    )
    assert all(name in (participant.__doc__ or "") for name in exported)
