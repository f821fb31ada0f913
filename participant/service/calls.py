"""What the services need of the coordinator client, as protocols (``CoordinatorClient`` in
:mod:`participant.transport.client` implements them all; tests pass in-memory stand-ins).

Every call raises :class:`participant.errors.CallFailed` when the coordinator cannot be reached
or refuses it, and ``retrying`` retries the transient failures with backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy.typing as npt

from fedsilo.codec import PayloadHeader
from fedsilo.paillier_inputs import RoundInputsInfo
from participant.domain.assignments import Assignment, SubmissionReceipt, TaskReply

__all__ = ["CeremonyCalls", "DaemonCalls", "ModelCalls", "RetryingCalls", "SecureRoundCalls"]

T = TypeVar("T")
Weights = list[npt.NDArray[Any]]


class RetryingCalls(Protocol):
    def retrying(self, call: Callable[[], T]) -> T:
        """Run ``call`` until it succeeds or fails for a non-transient reason."""
        ...


class ModelCalls(RetryingCalls, Protocol):
    """The calls the model chain of a paillier job needs."""

    def download_model(self, job_id: str, version: int) -> tuple[int, Weights]: ...


class SecureRoundCalls(ModelCalls, Protocol):
    """The calls a secure-aggregation round needs."""

    def submit_update(
        self,
        assignment: Assignment,
        num_examples: int,
        train_loss: float,
        header: PayloadHeader,
        payload: bytes,
    ) -> SubmissionReceipt: ...

    def submit_message(self, assignment: Assignment, body: bytes) -> SubmissionReceipt: ...

    def download_round_inputs(
        self, job_id: str, round_id: str, announced: RoundInputsInfo
    ) -> bytes | None:
        """The inputs a paillier CONSISTENCY step announced (None: they changed since)."""
        ...


class CeremonyCalls(RetryingCalls, Protocol):
    """The calls a paillier job's key ceremony needs."""

    def submit_ceremony(self, job_id: str, action: str, body: bytes) -> SubmissionReceipt: ...


class DaemonCalls(SecureRoundCalls, CeremonyCalls, Protocol):
    """Everything the daemon's loop calls."""

    def pause(self) -> bool:
        """Wait one backoff step after a failure; True if asked to stop meanwhile."""
        ...

    def certificate_renewal_pending(self) -> bool:
        """Whether renewed certificate files wait to be presented on the next call."""
        ...

    def get_assignment(
        self, wait_seconds: float, held_round_ids: Sequence[str] = (), membership_serial: int = 0
    ) -> TaskReply: ...

    def report_metrics(
        self, job_id: str, version: int, num_examples: int, loss: float, accuracy: float
    ) -> bool: ...

    def submit_initial_weights(
        self, job_id: str, header: PayloadHeader, payload: bytes
    ) -> SubmissionReceipt: ...
