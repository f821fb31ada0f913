"""What a participant is handed next: a round step, a key-ceremony step, an evaluation, or WAIT.

Participants pull (they never accept connections): ``wait_for_work`` is the long poll behind
GetTask, ``round_inputs`` what a paillier CONSISTENCY step announces (DownloadRoundInputs),
``round_outcomes`` tells a participant which rounds it holds secrets for have ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from coordinator.domain.jobs import JobState
from coordinator.domain.rounds import Phase
from coordinator.errors import NotFound
from coordinator.persistence.store import Transaction
from coordinator.service.context import ServiceContext
from coordinator.service.engines.registry import RoundEngines
from coordinator.service.initial_weights import initial_weights_work
from coordinator.service.views import RoundOutcomeView, WorkItem, WorkKind

__all__ = ["WorkService"]

_MAX_HELD_ROUNDS = 100
"""At most this many held rounds are looked up per GetTask call."""

INITIAL_WEIGHTS_REOFFER_SECONDS = 30.0
"""An organization asked for a job's version 0 is asked again only after this long: one without
the task (which cannot answer) is not handed the same request in a tight loop."""


class WorkService:
    """Hands each organization its next piece of work."""

    def __init__(self, ctx: ServiceContext, engines: RoundEngines) -> None:
        self._ctx = ctx
        self._engines = engines
        # Per organization: the ceremony steps offered since it was last given other work.
        self._ceremony_offered: dict[str, set[int]] = {}
        # Per (job, organization): when version 0 may be asked of it again (monotonic clock).
        self._initial_offered: dict[tuple[str, str], float] = {}

    def wait_for_work(
        self, org_id: str, wait_seconds: float, still_wanted: Callable[[], bool] = lambda: True
    ) -> WorkItem:
        """Long poll: return as soon as there is work for org_id, or WAIT after wait_seconds."""
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            generation = self._ctx.changes.generation()
            item = self.next_work(org_id)
            remaining = deadline - time.monotonic()
            if item.kind is not WorkKind.WAIT or remaining <= 0 or not still_wanted():
                return item
            self._ctx.changes.wait(generation, timeout=min(remaining, 1.0))

    def next_work(self, org_id: str) -> WorkItem:
        """What org_id should do next, most latency-sensitive first.

        1. A small secure-aggregation step (KEYS, SHARES, CONSISTENCY, UNMASK): the whole cohort
           waits for it and it takes milliseconds.
        2. A key-ceremony step of a paillier job.
        3. EVALUATE the latest model it helped build, unless it takes part in a small phase now
           (then it waits for the next step instead of holding the cohort up).
        4. TRAIN in an open round (plain, or the masked INPUTS of a secure round).
        5. INITIAL_WEIGHTS: build a job's version 0 from its seed (docs/design.md), when it has
           nothing else to do: an organization without the task loses only idle time.
        6. WAIT.

        A participant refuses a ceremony step by going silent, and nothing ends a ceremony step
        the way a phase deadline ends a round's: a ceremony step offered before and still
        unanswered therefore alternates with the organization's other work (its other jobs'
        ceremonies first), so one refused job never starves the others.
        """
        now = self._ctx.clock()
        with self._ctx.store.transaction() as tx:
            work = self._round_and_model_work(tx, org_id, now)
            if work.kind is WorkKind.SECAGG_STEP:
                return work
            ceremonies = []
            for job in tx.list_jobs((JobState.RUNNING,)):
                step = self._engines[job.spec.protection].ceremony_step(tx, job, org_id)
                if step is not None:
                    ceremonies.append(WorkItem(WorkKind.KEY_CEREMONY, job, ceremony=step))
        if not ceremonies:
            return work
        with self._ctx.lock:
            offered = self._ceremony_offered.setdefault(org_id, set())
            fresh = [item for item in ceremonies if _ceremony_key(item) not in offered]
            if not fresh:
                # Every step was offered since the last other work: that work's turn, if any.
                offered.clear()
                if work.kind is not WorkKind.WAIT:
                    return work
                fresh = ceremonies
            offered.add(_ceremony_key(fresh[0]))
            return fresh[0]

    def _round_and_model_work(self, tx: Transaction, org_id: str, now: float) -> WorkItem:
        """org_id's work in open rounds, models to evaluate and version 0 (1, 3-6 of next_work)."""
        training: WorkItem | None = None
        in_small_phase = False
        for round_ in tx.open_rounds():
            if org_id not in round_.cohort or now > round_.deadline_at:
                continue
            engine = self._engines[round_.protection]
            item = engine.round_work(tx, round_, org_id, now)
            if item is not None and item.kind is WorkKind.SECAGG_STEP:
                return item
            training = training or item
            in_small_phase = in_small_phase or engine.holds_cohort(tx, round_, org_id)
        if in_small_phase:
            return WorkItem(WorkKind.WAIT)
        # Only jobs whose latest version org_id has not evaluated: every poll runs this, and a
        # coordinator keeps every job it has completed.
        for job in tx.jobs_awaiting_metric(org_id, (JobState.RUNNING, JobState.COMPLETED)):
            latest = tx.get_model_version(job.job_id, job.model_version)
            producer = tx.get_round(latest.round_id) if latest and latest.round_id else None
            if producer is not None and org_id in producer.contributors:
                return WorkItem(WorkKind.EVALUATE, job, None, job.model_version)
        return training or self._initial_weights(tx, org_id) or WorkItem(WorkKind.WAIT)

    def _initial_weights(self, tx: Transaction, org_id: str) -> WorkItem | None:
        now = time.monotonic()
        with self._ctx.lock:
            item = initial_weights_work(
                tx, org_id, lambda job_id: now < self._initial_offered.get((job_id, org_id), 0.0)
            )
            if item is not None and item.job is not None:
                key = (item.job.job_id, org_id)
                self._initial_offered[key] = now + INITIAL_WEIGHTS_REOFFER_SECONDS
        return item

    def round_inputs(self, org_id: str, job_id: str, round_id: str) -> bytes:
        """The ``RoundInputs`` bytes a CONSISTENCY step announced to ``org_id`` (see
        ``RoundEngine.round_inputs``): only a member of U3 gets them, read-only."""
        with self._ctx.store.transaction() as tx:
            round_ = tx.get_round(round_id) if round_id else None
            if round_ is None or round_.job_id != job_id:
                raise NotFound("no such round of this job")
            inputs = self._engines[round_.protection].round_inputs(tx, round_, org_id)
        return inputs.to_bytes()

    def round_outcomes(self, round_ids: list[str]) -> list[RoundOutcomeView]:
        """Of the given rounds, those that ended; an unknown round counts as aborted."""
        outcomes = []
        with self._ctx.store.transaction() as tx:
            for round_id in round_ids[:_MAX_HELD_ROUNDS]:
                round_ = tx.get_round(round_id)
                if round_ is None:
                    outcomes.append(RoundOutcomeView(round_id, Phase.ABORTED, "no such round"))
                elif round_.is_terminal:
                    outcomes.append(
                        RoundOutcomeView(round_id, round_.phase, round_.abort_reason or "")
                    )
        return outcomes


def _ceremony_key(item: WorkItem) -> int:
    """Identifies a ceremony step: the same job, action and material is the same step."""
    assert item.job is not None and item.ceremony is not None
    step = item.ceremony
    return hash((item.job.job_id, step.action, step.job_keys, step.dealt_key, step.sealed_key))
