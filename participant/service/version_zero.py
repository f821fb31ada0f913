"""Version 0 from the seed: build it with the task's model, and refuse a served one unlike it.

A job created with ``initial_weights_from_seed`` has no weights from its admin: this
organization builds version 0 from the job's seed (Keras initialization is deterministic for a
seed) and sends it; the coordinator commits it once enough organizations sent the same bytes.
Whatever version 0 the coordinator then serves must be byte for byte the one built here: a
coordinator serving other weights (or one that committed the weights of organizations running
another TensorFlow) is refused with ``UntrustedMessage``, before anything is trained on them
(docs/design.md, "Version 0 from the seed").

``CheckedCalls`` wraps the coordinator client so that every download, by the daemon's loop,
secure rounds or the paillier model chain, goes through the check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy.typing as npt

from fedsilo.codec import PayloadHeader, encode_tensors
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.tasks import as_float32, load_task
from participant.domain.assignments import Assignment, SubmissionReceipt, TaskReply
from participant.errors import TaskFailed, UntrustedMessage
from participant.service.calls import DaemonCalls

__all__ = ["CheckedCalls", "VersionZero"]

T = TypeVar("T")
Weights = list[npt.NDArray[Any]]


class VersionZero:
    """The version 0 this organization builds for each job whose version 0 comes from a seed.

    Which jobs those are, with their task and seed, is taken from the first assignment of each
    job that says so and kept for the daemon's lifetime, and from the job's terms this
    organization recorded when it accepted the job (``recorded``, kept in the state directory):
    neither a later assignment that leaves the flag out nor a restart switches the check off.
    """

    def __init__(
        self,
        tasks: Mapping[str, str],
        recorded: Callable[[str], tuple[str, int] | None] = lambda _job_id: None,
    ) -> None:
        self._tasks = dict(tasks)
        self._recorded = recorded
        self._lock = threading.Lock()
        self._seeded: dict[str, tuple[str, int]] = {}
        self._built: dict[str, tuple[PayloadHeader, bytes]] = {}

    def note(self, assignment: Assignment) -> None:
        """Remember a job whose version 0 comes from its seed (the first word on it wins, and
        the recorded terms win over any assignment)."""
        if assignment.job_id and assignment.initial_weights_from_seed:
            with self._lock:
                if self._seed_of(assignment.job_id) is None:
                    self._seeded[assignment.job_id] = (
                        assignment.task_name,
                        assignment.training.seed,
                    )

    def _seed_of(self, job_id: str) -> tuple[str, int] | None:
        """Task and seed of a job whose version 0 comes from its seed; the lock is held."""
        if job_id not in self._seeded:
            recorded = self._recorded(job_id)
            if recorded is None:
                return None
            self._seeded[job_id] = recorded
        return self._seeded[job_id]

    def build(self, job_id: str) -> tuple[PayloadHeader, bytes]:
        """Version 0 of a noted job as encoded tensors (built once per job, then kept)."""
        with self._lock:
            seeded = self._seed_of(job_id)
            if seeded is None:
                raise UntrustedMessage(f"job {job_id} does not build its version 0 from a seed")
            task_name, seed = seeded
            if job_id not in self._built:
                task = load_task(task_name, self._tasks or None)
                try:
                    weights = as_float32(task.initial_weights(seed))
                    self._built[job_id] = encode_tensors(weights)
                except (ValueError, ArithmeticError) as exc:
                    raise TaskFailed(str(exc)) from exc
            return self._built[job_id]

    def check(self, job_id: str, version: int, weights: Weights) -> None:
        """Refuse version 0 of a noted job unless it is the one built here."""
        if version != 0:
            return
        with self._lock:
            seeded = self._seed_of(job_id)
        if seeded is None:
            return
        own, _ = self.build(job_id)
        try:
            served, _ = encode_tensors(weights)
        except ValueError as exc:
            raise UntrustedMessage(f"version 0 of job {job_id} is malformed: {exc}") from exc
        if served.tensors != own.tensors or served.sha256 != own.sha256:
            _, seed = seeded
            raise UntrustedMessage(
                f"version 0 of job {job_id} (sha256 {served.sha256.hex()[:12]}) is not the one "
                f"this organization builds from seed {seed} (sha256 {own.sha256.hex()[:12]}): "
                "refusing it (another task or TensorFlow version, or a coordinator serving "
                "other weights)"
            )


class CheckedCalls:
    """The coordinator client with every downloaded version 0 checked by ``VersionZero``."""

    def __init__(self, calls: DaemonCalls, version_zero: VersionZero) -> None:
        self._calls = calls
        self._version_zero = version_zero

    def download_model(self, job_id: str, version: int) -> tuple[int, Weights]:
        got, weights = self._calls.download_model(job_id, version)
        self._version_zero.check(job_id, got, weights)
        return got, weights

    def retrying(self, call: Callable[[], T]) -> T:
        return self._calls.retrying(call)

    def pause(self) -> bool:
        return self._calls.pause()

    def certificate_renewal_pending(self) -> bool:
        return self._calls.certificate_renewal_pending()

    def get_assignment(
        self, wait_seconds: float, held_round_ids: Sequence[str] = (), membership_serial: int = 0
    ) -> TaskReply:
        return self._calls.get_assignment(wait_seconds, held_round_ids, membership_serial)

    def submit_update(
        self,
        assignment: Assignment,
        num_examples: int,
        train_loss: float,
        header: PayloadHeader,
        payload: bytes,
    ) -> SubmissionReceipt:
        return self._calls.submit_update(assignment, num_examples, train_loss, header, payload)

    def submit_message(self, assignment: Assignment, body: bytes) -> SubmissionReceipt:
        return self._calls.submit_message(assignment, body)

    def download_round_inputs(
        self, job_id: str, round_id: str, announced: RoundInputsInfo
    ) -> bytes | None:
        return self._calls.download_round_inputs(job_id, round_id, announced)

    def submit_ceremony(self, job_id: str, action: str, body: bytes) -> SubmissionReceipt:
        return self._calls.submit_ceremony(job_id, action, body)

    def report_metrics(
        self, job_id: str, version: int, num_examples: int, loss: float, accuracy: float
    ) -> bool:
        return self._calls.report_metrics(job_id, version, num_examples, loss, accuracy)

    def submit_initial_weights(
        self, job_id: str, header: PayloadHeader, payload: bytes
    ) -> SubmissionReceipt:
        return self._calls.submit_initial_weights(job_id, header, payload)
