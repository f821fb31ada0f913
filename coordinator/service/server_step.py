"""The strategy's server step at the coordinator (``none`` and ``secagg``): the next model from
the round's weighted mean, with the optimizer state kept beside each model version.

Under ``paillier`` the mean exists only at the organizations, which run the same step there
(``participant/service/paillier_jobs.py``); the coordinator stores the encrypted result as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from coordinator.domain.jobs import Job
from coordinator.domain.rounds import Round
from coordinator.errors import NotFound
from coordinator.service.context import ServiceContext, sha256
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.protection import Protection
from fedsilo.strategies import (
    OptimizerState,
    apply_server_step,
    decode_optimizer_state,
    encode_optimizer_state,
    load_strategy,
)

__all__ = ["NextModel", "next_model"]


@dataclass(frozen=True)
class NextModel:
    """The blobs of the version a round commits: the model and the optimizer state (if any)."""

    model_ref: str
    optimizer_state_ref: str | None = None


def next_model(ctx: ServiceContext, job: Job, round_: Round) -> NextModel:
    """The model version ``round_`` commits. FedAvg (and any strategy without a server step),
    and every paillier round, commit the round's result unchanged. Raises StrategyError if the
    step fails (the round is then aborted)."""
    assert round_.result_ref is not None  # AGGREGATED always carries its result
    strategy = load_strategy(job.spec.algorithm, job.spec.strategy)
    if not strategy.updates_server_model or job.spec.protection is Protection.PAILLIER:
        return NextModel(round_.result_ref)
    with ctx.store.transaction() as tx:
        base = tx.get_model_version(job.job_id, round_.base_version)
    if base is None:
        raise NotFound(f"model version {round_.base_version} does not exist for this job")
    current = _weights(ctx, job, base.blob_ref)
    mean = _weights(ctx, job, round_.result_ref)
    state: OptimizerState | None = None
    if base.optimizer_state_ref is not None:
        state = decode_optimizer_state(ctx.blobs.get(base.optimizer_state_ref))
    following, new_state = apply_server_step(strategy, current, mean, state)
    _, payload = encode_tensors(following)
    # Blobs are content-addressed: a commit retried after a crash stores the same two blobs.
    return NextModel(ctx.blobs.put(payload), ctx.blobs.put(encode_optimizer_state(new_state)))


def _weights(ctx: ServiceContext, job: Job, ref: str) -> list[npt.NDArray[Any]]:
    payload = ctx.blobs.get(ref)
    return decode_tensors(PayloadHeader(job.weight_specs, len(payload), sha256(payload)), payload)
