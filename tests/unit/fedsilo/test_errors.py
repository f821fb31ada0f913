"""Every error the base raises on purpose derives from FedsiloError and keeps its built-in base."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import fedsilo
from fedsilo.chunking import ChunkError, split
from fedsilo.codec import CodecError, TensorSpec
from fedsilo.config import ConfigError
from fedsilo.errors import FedsiloError
from fedsilo.faults import UnknownCrashPoint, crash_point
from fedsilo.pki import PeerCertificateError, PkiError, validate_org_id
from fedsilo.protection import unflatten
from fedsilo.tasks import TaskNotFoundError, load_task
from fedsilo.tls import InsecureTransportError, TlsConfigError

VALUE_ERRORS = [
    ConfigError,
    TlsConfigError,
    InsecureTransportError,
    CodecError,
    ChunkError,
    PkiError,
    PeerCertificateError,
    UnknownCrashPoint,
]


@pytest.mark.parametrize("error", VALUE_ERRORS, ids=lambda error: error.__name__)
def test_base_errors_are_fedsilo_errors_and_value_errors(error: type[Exception]) -> None:
    assert issubclass(error, FedsiloError)
    assert issubclass(error, ValueError)
    assert error.__name__ in (fedsilo.__doc__ or "")


def test_task_not_found_is_a_fedsilo_error_and_a_lookup_error() -> None:
    assert issubclass(TaskNotFoundError, FedsiloError)
    assert issubclass(TaskNotFoundError, LookupError)
    with pytest.raises(TaskNotFoundError):
        load_task("no-such-task", {"other": "examples.synthetic.task:task"})


def test_peer_certificate_error_is_a_pki_error() -> None:
    assert issubclass(PeerCertificateError, PkiError)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: validate_org_id("Not Valid"), PkiError),
        (lambda: list(split(b"abc", 0)), ChunkError),
        (lambda: crash_point("no.such.point"), UnknownCrashPoint),
        (lambda: unflatten(np.zeros(3), [TensorSpec("float32", (2,))]), CodecError),
    ],
    ids=["org id", "chunk size", "crash point", "unflatten"],
)
def test_bad_input_raises_the_specific_error(
    call: Callable[[], object], error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error
