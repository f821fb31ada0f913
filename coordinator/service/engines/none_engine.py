"""Rounds without protection (``none``, tests and comparisons only): FedAvg over clear updates.

CREATED -> INPUTS -> AGGREGATED -> COMMITTED. Each update is added, weighted by its number of
examples, into a float64 running sum in the blob store, so memory is O(model) whatever the
number of participants; at the deadline (or once the whole cohort answered) the sum divided by
the total number of examples is the new model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from coordinator.domain.jobs import Job
from coordinator.domain.rounds import Phase, Round, RoundEvent
from coordinator.errors import InvalidRequest
from coordinator.persistence.store import Transaction
from coordinator.service.context import require_job, sha256
from coordinator.service.engines.base import FoldedInput, RoundEngine, revoked_orgs
from coordinator.service.payloads import (
    ReceivedPayload,
    check_finite_or_invalid,
    decode_payload,
)
from coordinator.service.views import UpdateSubmission, WorkItem, WorkKind
from fedsilo.aggregation import fold_weighted, weighted_mean
from fedsilo.codec import PayloadHeader, TensorSpec, decode_tensors, encode_tensors, specs_of
from fedsilo.faults import crash_point
from fedsilo.logs import context

__all__ = ["PlainRoundEngine"]

log = logging.getLogger("coordinator")


class PlainRoundEngine(RoundEngine):
    """The ``none`` protection: the coordinator sees every update in the clear."""

    def advance(self, round_: Round, now: float) -> bool:
        if round_.phase is Phase.CREATED:
            self._ledger.write_transition(round_, RoundEvent.PHASE_COMPLETE, now)
            return True
        if round_.phase is not Phase.INPUTS:
            return False
        with self._ctx.store.transaction() as tx:
            # A revoked organization can no longer call in: the round does not wait for it.
            waiting = set(round_.cohort) - set(round_.contributors) - revoked_orgs(tx)
            if waiting and now <= round_.deadline_at:
                return False
            job = require_job(tx, round_.job_id)
        if len(round_.contributors) < job.spec.min_participants:
            closed = "deadline passed" if waiting else "no other organization can answer"
            self._ledger.abort(
                round_,
                job,
                f"{closed} with {len(round_.contributors)} of "
                f"{job.spec.min_participants} required updates",
                now,
            )
            return True
        self._aggregate(round_, job, now)
        return True

    def round_work(
        self, tx: Transaction, round_: Round, org_id: str, now: float
    ) -> WorkItem | None:
        if round_.phase is Phase.INPUTS and org_id not in round_.contributors:
            job = require_job(tx, round_.job_id)
            left = round_.deadline_at - now
            return WorkItem(WorkKind.TRAIN, job, round_, round_.base_version, left)
        return None

    def fold_input(
        self,
        round_: Round,
        job: Job,
        org_id: str,
        update: UpdateSubmission,
        payload: ReceivedPayload,
    ) -> FoldedInput:
        settings = self._ctx.settings
        self._check_counts(update)
        weights = decode_payload(update.header, payload, settings.max_payload_bytes)
        _check_layout(weights, job)
        check_finite_or_invalid(weights)
        accumulator = self._accumulator(round_, job)
        fold_weighted(accumulator, weights, update.num_examples)
        _, acc_payload = encode_tensors(accumulator)
        return FoldedInput(self._ctx.blobs.put(acc_payload), update.num_examples)

    def check_input_header(
        self, tx: Transaction, round_: Round, job: Job, org_id: str, update: UpdateSubmission
    ) -> None:
        self._check_counts(update)
        _check_layout_of(update.header.tensors, job)

    def _check_counts(self, update: UpdateSubmission) -> None:
        limit = self._ctx.settings.max_examples
        if not 1 <= update.num_examples <= limit:
            raise InvalidRequest(f"num_examples must be between 1 and {limit}")
        if not np.isfinite(update.train_loss):
            raise InvalidRequest("train_loss must be finite")

    def input_recorded(self, round_: Round, org_id: str, update: UpdateSubmission) -> None:
        crash_point("coordinator.plain.after_update_commit")
        log.info(
            "update accepted (%d examples, %d bytes)",
            update.num_examples,
            update.header.total_bytes,
            **context(job=round_.job_id, round=str(round_.number), phase="inputs", org=org_id),
        )

    def _aggregate(self, round_: Round, job: Job, now: float) -> None:
        """Weighted FedAvg: the running sum divided by the total number of examples."""
        accumulator = self._accumulator(round_, job)
        mean = weighted_mean(accumulator, round_.total_weight)
        _, payload = encode_tensors(mean)
        result_ref = self._ctx.blobs.put(payload)
        self._ledger.write_transition(round_, RoundEvent.PHASE_COMPLETE, now, result_ref=result_ref)

    def _accumulator(self, round_: Round, job: Job) -> list[npt.NDArray[np.float64]]:
        if round_.accumulator_ref is None:
            return [np.zeros(s.shape, dtype=np.float64) for s in job.weight_specs]
        payload = self._ctx.blobs.get(round_.accumulator_ref)
        header = PayloadHeader(
            tuple(dataclasses.replace(s, dtype="float64") for s in job.weight_specs),
            len(payload),
            sha256(payload),
        )
        return decode_tensors(header, payload)


def _check_layout(weights: list[npt.NDArray[Any]], job: Job) -> None:
    _check_layout_of(specs_of(weights), job)


def _check_layout_of(specs: tuple[TensorSpec, ...], job: Job) -> None:
    expected = job.weight_specs
    if len(specs) != len(expected):
        raise InvalidRequest(f"update has {len(specs)} tensors, the model has {len(expected)}")
    for index, (got, spec) in enumerate(zip(specs, expected, strict=True)):
        if got.dtype != spec.dtype:
            raise InvalidRequest(f"tensor {index} has dtype {got.dtype}, expected {spec.dtype}")
        if got.shape != spec.shape:
            raise InvalidRequest(
                f"tensor {index} has shape {list(got.shape)}, expected {list(spec.shape)}"
            )
