"""The participant daemon's loop: wait for work, train or evaluate locally, answer exactly once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import grpc

from fedsilo.codec import encode_tensors
from fedsilo.logs import context
from fedsilo.tasks import LocalData, Task, TaskNotFoundError, as_float32, load_task
from participant.domain.assignments import Assignment, AssignmentKind
from participant.service.answers import AnswerStore, StoredAnswer
from participant.transport.client import CoordinatorClient, Stopped

__all__ = ["ParticipantDaemon"]

log = logging.getLogger("participant")

# Answers the coordinator will never accept again: drop the work and ask for the next.
GIVE_UP = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class ParticipantDaemon:
    """Runs until ``stop`` is set: outbound calls only, local data never leaves this process."""

    def __init__(
        self,
        client: CoordinatorClient,
        answers: AnswerStore,
        tasks: Mapping[str, str],
        task_config: Mapping[str, Any],
        stop: threading.Event,
        poll_seconds: float = 20.0,
    ) -> None:
        self._client = client
        self._answers = answers
        self._tasks = dict(tasks)
        self._task_config = dict(task_config)
        self._stop = stop
        self._poll = poll_seconds
        self._data: dict[tuple[str, str], tuple[Task, LocalData]] = {}

    def run(self) -> None:
        log.info("participant daemon started")
        while not self._stop.is_set():
            try:
                assignment = self._client.retrying(lambda: self._client.get_assignment(self._poll))
                self.handle(assignment)
            except Stopped:
                break
            except grpc.RpcError as exc:
                # A long-lived daemon outlives refusals (pending approval, a certificate being
                # rotated, a coordinator error): report and try again after a backoff.
                log.warning(
                    "coordinator answered %s: %s; retrying",
                    exc.code().name,
                    exc.details(),
                )
                if self._client.pause():
                    break
            except (TaskNotFoundError, ValueError, ArithmeticError) as exc:
                log.error("cannot run this work item: %s", exc)
                if self._client.pause():
                    break
        log.info("participant daemon stopped")

    def handle(self, assignment: Assignment) -> None:
        ctx = context(job=assignment.job_id or None, round=str(assignment.round_number or "-"))
        try:
            if assignment.kind is AssignmentKind.TRAIN:
                self._train(assignment)
            elif assignment.kind is AssignmentKind.EVALUATE:
                self._evaluate(assignment)
        except grpc.RpcError as exc:
            if exc.code() not in GIVE_UP:
                raise
            log.warning("coordinator refused: %s", exc.details(), **ctx)

    def _task_and_data(self, assignment: Assignment) -> tuple[Task, LocalData]:
        key = (assignment.job_id, assignment.task_name)
        if key not in self._data:
            task = load_task(assignment.task_name, self._tasks or None)
            # The organization's own settings (where its data lives) win over the job's.
            config = {**assignment.task_config, **self._task_config}
            self._data[key] = (task, task.load_data(config))
        return self._data[key]

    def _train(self, assignment: Assignment) -> None:
        ctx = context(
            job=assignment.job_id, round=str(assignment.round_number), phase=assignment.phase
        )
        answer = self._answers.load(assignment.round_id, assignment.phase)
        if answer is None:
            task, data = self._task_and_data(assignment)
            version, weights = self._client.retrying(
                lambda: self._client.download_model(assignment.job_id, assignment.model_version)
            )
            if version != assignment.model_version:
                log.warning(
                    "coordinator sent version %d, expected %d",
                    version,
                    assignment.model_version,
                    **ctx,
                )
                return
            # A per-round seed keeps training reproducible, so a retry after a crash can match.
            settings = replace(
                assignment.training,
                seed=assignment.training.seed * 1_000_003 + assignment.round_number,
            )
            result = task.train(weights, data, settings)
            header, payload = encode_tensors(as_float32(result.weights))
            answer = StoredAnswer(header, payload, result.num_examples, float(result.loss))
            self._answers.save(assignment.round_id, assignment.phase, answer)
            log.info("trained on %d examples, loss %.4f", result.num_examples, result.loss, **ctx)
        else:
            log.info("re-sending the stored answer for this round", **ctx)
        stored = answer
        receipt = self._client.retrying(
            lambda: self._client.submit_update(
                assignment, stored.num_examples, stored.train_loss, stored.header, stored.payload
            )
        )
        log.info("update acknowledged%s", " (duplicate)" if receipt.duplicate else "", **ctx)

    def _evaluate(self, assignment: Assignment) -> None:
        task, data = self._task_and_data(assignment)
        version, weights = self._client.retrying(
            lambda: self._client.download_model(assignment.job_id, assignment.model_version)
        )
        result = task.evaluate(weights, data)
        self._client.retrying(
            lambda: self._client.report_metrics(
                assignment.job_id, version, result.num_examples, result.loss, result.accuracy
            )
        )
        log.info(
            "model version %d: loss %.4f accuracy %.4f on %d held-out examples",
            version,
            result.loss,
            result.accuracy,
            result.num_examples,
            **context(job=assignment.job_id),
        )
