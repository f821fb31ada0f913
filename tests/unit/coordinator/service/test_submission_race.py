"""Concurrent submitters racing one round (docs/fault-matrix.md R12).

Several coordinators share one database and blob store (as processes would) and many threads
submit to one round at once. A submitter that loses the round's compare-and-set folds its input
again from the new state; a caller never sees INTERNAL, each organization is stored once, and
the committed model is FedAvg over exactly the stored contributors.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import text

from coordinator.domain.jobs import Job, JobSpec, JobState
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import ConcurrentUpdate
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import StaleWrite, Store, Transaction
from coordinator.service.driver import RoundDriver
from coordinator.service.engines.none_engine import PlainRoundEngine
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.service.submissions import MAX_ATTEMPTS
from coordinator.service.views import UpdateSubmission
from coordinator.transport.interceptors import status_for
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings

T0 = 1_700_000_000.0
COORDINATORS = 4
ORGS = tuple(f"org-{index:02d}" for index in range(12))
SHAPES = ((16, 8), (8,))
CALL_ATTEMPTS = 30
"""How often a submitter sends again after UNAVAILABLE, as a participant daemon would."""

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


def weights_of(org: str) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(ORGS.index(org))
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def examples_of(org: str) -> int:
    return 10 + ORGS.index(org)


class Coordinators:
    """Coordinator services over one database and one blob directory, each with its own
    connections and its own writer lock: nothing but the database orders their writes."""

    def __init__(self, url: str, blob_dir: Path) -> None:
        self.blob_dir = blob_dir
        self.stores = [Store(url) for _ in range(COORDINATORS)]
        ids = itertools.count(1)
        id_lock = threading.Lock()

        def new_id() -> str:
            with id_lock:
                return f"id-{next(ids)}"

        self.services = [
            CoordinatorService(store, BlobStore(blob_dir), clock=lambda: T0, new_id=new_id)
            for store in self.stores
        ]
        self.membership = MembershipService(self.stores[0], auto_approve=True, clock=lambda: T0)

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def coordinators(database_url: str, tmp_path: Path) -> Iterator[Coordinators]:
    made = Coordinators(database_url, tmp_path / "blobs")
    yield made
    made.close()


def test_concurrent_submitters_to_one_round_never_see_internal_and_are_stored_once(
    coordinators: Coordinators,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = coordinators.services[0]
    job, round_ = _running_round(coordinators)

    # Make the race certain: the first submitter in each coordinator folds its input on the
    # round it read, then waits until one submitter of every coordinator has done the same, so
    # all of them write against the same row version and all but one lose.
    meeting = threading.Barrier(COORDINATORS, timeout=30)
    arrivals = itertools.count()
    original_fold = PlainRoundEngine.fold_input

    def fold_then_meet(self: PlainRoundEngine, *args: Any, **kwargs: Any) -> Any:
        folded = original_fold(self, *args, **kwargs)
        if next(arrivals) < COORDINATORS:
            meeting.wait()
        return folded

    monkeypatch.setattr(PlainRoundEngine, "fold_input", fold_then_meet)
    caplog.set_level(logging.INFO, logger="coordinator")
    refusals: dict[str, list[tuple[grpc.StatusCode, str]]] = {org: [] for org in ORGS}
    acknowledged: dict[str, str] = {}
    start = threading.Barrier(len(ORGS), timeout=30)

    def submit(org: str) -> None:
        service = coordinators.services[ORGS.index(org) % COORDINATORS]
        update_header, update_payload = encode_tensors(weights_of(org))
        update = UpdateSubmission(
            job_id=job.job_id,
            round_id=round_.round_id,
            phase=Phase.INPUTS,
            base_version=round_.base_version,
            num_examples=examples_of(org),
            train_loss=0.25,
            header=update_header,
        )
        start.wait()
        for _ in range(CALL_ATTEMPTS):
            try:
                ack = service.submit_update(org, update, update_payload)
            except Exception as exc:  # noqa: BLE001 - every failure is judged by its status
                code, message = status_for(exc)
                refusals[org].append((code, message))
                if code is grpc.StatusCode.UNAVAILABLE:
                    continue  # what a participant daemon does: send the same bytes again
                return
            acknowledged[org] = ack.acknowledgement_id
            return

    threads = [threading.Thread(target=submit, args=(org,)) for org in ORGS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    internal = {o: r for o, r in refusals.items() if grpc.StatusCode.INTERNAL in dict(r)}
    assert internal == {}
    final_refusals = {
        o: r[-1] for o, r in refusals.items() if r and r[-1][0] is not grpc.StatusCode.UNAVAILABLE
    }
    assert final_refusals == {}
    assert set(acknowledged) == set(ORGS)
    # The race did happen: without the retry these submitters would have failed.
    lost = [r for r in caplog.records if "lost the race for its round" in r.getMessage()]
    assert len(lost) >= COORDINATORS - 1

    with coordinators.stores[0].engine.connect() as conn:
        rows = conn.execute(
            text("SELECT org_id, count(*) FROM submissions WHERE round_id = :r GROUP BY org_id"),
            {"r": round_.round_id},
        ).all()
    assert dict((str(org), int(count)) for org, count in rows) == dict.fromkeys(ORGS, 1)

    for _ in range(10):  # a bounded number of ticks: the round commits once every input is in
        if first.get_job(job.job_id).job.state is JobState.COMPLETED:
            break
        first.tick()
    view = first.get_job(job.job_id)
    assert view.job.state is JobState.COMPLETED
    closed = view.rounds[-1]
    assert sorted(closed.contributors) == sorted(ORGS)
    assert closed.total_weight == sum(examples_of(org) for org in ORGS)
    _, model_header, model_payload = first.read_model(job.job_id, 1)
    model = decode_tensors(
        PayloadHeader(job.weight_specs, model_header.total_bytes, model_header.sha256),
        model_payload,
    )
    total = sum(examples_of(org) for org in ORGS)
    for index, layer in enumerate(model):
        expected = (
            sum(weights_of(org)[index].astype(np.float64) * examples_of(org) for org in ORGS)
            / total
        )
        np.testing.assert_allclose(layer, expected, rtol=1e-5, atol=1e-6)


def test_a_round_that_keeps_changing_is_unavailable_after_the_bounded_retries(
    coordinators: Coordinators, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = coordinators.services[0]
    job, round_ = _running_round(coordinators)
    writes: list[int] = []

    def always_stale(self: Transaction, changed: Round, expected_row_version: int) -> None:
        writes.append(expected_row_version)
        raise StaleWrite("round changed concurrently")

    monkeypatch.setattr(Transaction, "update_round", always_stale)
    org = ORGS[0]
    update_header, update_payload = encode_tensors(weights_of(org))
    update = UpdateSubmission(
        job.job_id, round_.round_id, Phase.INPUTS, 0, examples_of(org), 0.25, update_header
    )
    with pytest.raises(ConcurrentUpdate) as refused:
        service.submit_update(org, update, update_payload)
    assert status_for(refused.value)[0] is grpc.StatusCode.UNAVAILABLE
    assert len(writes) == MAX_ATTEMPTS
    with coordinators.stores[0].transaction() as tx:
        assert tx.get_submission(round_.round_id, org, Phase.INPUTS.value) is None
        assert tx.get_round(round_.round_id) == round_
    # Each attempt's running sum was deleted with it: only the initial model is left.
    assert coordinators.services[0].spool.files() == []
    blobs = BlobStore(coordinators.blob_dir).refs()
    with coordinators.stores[0].transaction() as tx:
        assert all(tx.blob_in_use(ref) for ref in blobs)


def _running_round(coordinators: Coordinators) -> tuple[Job, Round]:
    """A started one-round plain job whose round collects inputs from every organization."""
    first = coordinators.services[0]
    header, payload = encode_tensors([np.zeros(shape, np.float32) for shape in SHAPES])
    spec = JobSpec(
        name="race",
        task_name="race-linear",
        protection=Protection.NONE,
        num_rounds=1,
        min_participants=len(ORGS),
        round_timeout_seconds=600.0,
        training=TrainingSettings(local_epochs=1, batch_size=8, learning_rate=0.1, seed=1),
    )
    job = first.create_job(spec, header, payload, actor="admin")
    for org in ORGS:
        coordinators.membership.authenticate_participant(org)
    first.start_job(job.job_id, actor="admin")
    round_ = first.get_job(job.job_id).rounds[-1]
    assert round_.phase is Phase.INPUTS and set(round_.cohort) == set(ORGS)
    return job, round_


def test_a_coordinator_overtaken_on_a_round_logs_one_line_and_no_traceback(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Two coordinators tick one round whose deadline passed: B aborts it between A reading the
    # round and A writing it, so A's compare-and-set is lost for real.
    now = [T0]
    stores = [Store(database_url) for _ in range(2)]
    first, second = (
        CoordinatorService(store, BlobStore(tmp_path / "blobs"), clock=lambda: now[0])
        for store in stores
    )
    membership = MembershipService(stores[0], auto_approve=True, clock=lambda: now[0])
    header, payload = encode_tensors([np.zeros(shape, np.float32) for shape in SHAPES])
    spec = JobSpec(
        name="overtaken",
        task_name="race-linear",
        protection=Protection.NONE,
        num_rounds=2,
        min_participants=2,
        round_timeout_seconds=60.0,
        training=TrainingSettings(local_epochs=1, batch_size=8, learning_rate=0.1, seed=1),
    )
    job = first.create_job(spec, header, payload, actor="admin")
    for org in ORGS[:2]:
        membership.authenticate_participant(org)
    first.start_job(job.job_id, actor="admin")
    opened = first.get_job(job.job_id).rounds[-1]
    assert opened.phase is Phase.INPUTS

    now[0] += 61.0
    original = RoundDriver._advance_round

    def overtaken_by_the_second(self: RoundDriver, round_: Round) -> bool:
        if self is first.driver:
            second.tick()
        return original(self, round_)

    monkeypatch.setattr(RoundDriver, "_advance_round", overtaken_by_the_second)
    caplog.set_level(logging.DEBUG)
    first.tick()  # raised StaleWrite out of the tick (a traceback in the server log) before

    lost = [r for r in caplog.records if "another coordinator moved this job first" in r.msg]
    assert [r.levelno for r in lost] == [logging.INFO]
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    (aborted,) = first.get_job(job.job_id).rounds
    assert aborted.round_id == opened.round_id
    assert aborted.phase is Phase.ABORTED
    assert aborted.row_version == opened.row_version + 1  # written once, by the second
    for store in stores:
        store.close()
