"""CoordinatorService use cases, driven directly (no gRPC) with SQLite, a blob dir and a fake clock.

The oracle: a committed model version equals the weighted FedAvg mean over exactly the recorded
contributors; acknowledged submissions count once; bad input changes nothing.

Longer than 600 lines on purpose: every use case of the facade shares one store, blob dir and
clock fixture, and splitting it would copy that set-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sqlalchemy import text

from coordinator.domain.jobs import (
    Job,
    JobSpec,
    JobState,
    MetricReport,
    ParticipantStatus,
)
from coordinator.domain.privacy import epsilon_after
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import (
    ConflictingSubmission,
    InvalidRequest,
    NotFound,
    WrongRoundPhase,
)
from coordinator.observability.prometheus import CoordinatorMetrics
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Store
from coordinator.service.context import CoordinatorSettings
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.service.views import Acknowledgement, UpdateSubmission, WorkKind
from fedsilo.chunking import ChunkError, split
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection
from fedsilo.strategies import (
    StrategyParameters,
    apply_server_step,
    decode_optimizer_state,
    load_strategy,
)
from fedsilo.tasks import TrainingSettings

T0 = 1_700_000_000.0
TIMEOUT_S = 60.0
ORGS = ("org-a", "org-b", "org-c")
SHAPES = ((3, 2), (2,), ())  # a matrix, a bias vector and a 0-d scale


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now


def initial_weights() -> list[npt.NDArray[np.float32]]:
    return [np.full(shape, 0.5, dtype=np.float32) for shape in SHAPES]


def update_weights(seed: int) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def make_spec(**changes: Any) -> JobSpec:
    spec = JobSpec(
        name="digits",
        task_name="digits-linear",
        protection=Protection.NONE,
        num_rounds=2,
        min_participants=2,
        round_timeout_seconds=TIMEOUT_S,
        max_failed_rounds=1,
        training=TrainingSettings(local_epochs=1, batch_size=8, learning_rate=0.1, seed=3),
    )
    return dataclasses.replace(spec, **changes)


@dataclass
class Harness:
    """A coordinator over one database and blob dir; ``restart`` rebuilds it on the same state."""

    url: str
    blob_dir: Path
    clock: FakeClock = field(default_factory=FakeClock)
    settings: CoordinatorSettings = field(default_factory=CoordinatorSettings)
    auto_approve: bool = True
    stores: list[Store] = field(default_factory=list)
    service: CoordinatorService = field(init=False)
    membership: MembershipService = field(init=False)
    blobs: BlobStore = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> CoordinatorService:
        self.stores.append(Store(self.url))
        self.blobs = BlobStore(self.blob_dir)
        ids = itertools.count(1)
        prefix = len(self.stores)
        self.service = CoordinatorService(
            self.stores[-1],
            self.blobs,
            self.settings,
            clock=lambda: self.clock.now,
            new_id=lambda: f"id-{prefix}-{next(ids)}",
        )
        self.membership = MembershipService(
            self.stores[-1], auto_approve=self.auto_approve, clock=lambda: self.clock.now
        )
        return self.service

    @property
    def store(self) -> Store:
        return self.stores[-1]

    def close(self) -> None:
        for store in self.stores:
            store.close()

    # -- helpers -------------------------------------------------------------------------------

    def create_job(self, **changes: Any) -> Job:
        header, payload = encode_tensors(initial_weights())
        return self.service.create_job(make_spec(**changes), header, payload, actor="admin")

    def join(self, *orgs: str) -> None:
        for org in orgs:
            self.membership.authenticate_participant(org, require_active=False)

    def running_job(self, orgs: tuple[str, ...] = ORGS, **changes: Any) -> tuple[Job, Round]:
        """A started job whose first round is collecting inputs from ``orgs``."""
        job = self.create_job(**changes)
        self.join(*orgs)
        self.service.start_job(job.job_id, actor="admin")
        round_ = self.current_round(job.job_id)
        assert round_.phase is Phase.INPUTS
        return job, round_

    def rounds(self, job_id: str) -> tuple[Round, ...]:
        return self.service.get_job(job_id).rounds

    def current_round(self, job_id: str) -> Round:
        return self.rounds(job_id)[-1]

    def round(self, round_id: str) -> Round:
        with self.store.transaction() as tx:
            found = tx.get_round(round_id)
        assert found is not None
        return found

    def submit(
        self,
        org: str,
        round_: Round,
        weights: list[npt.NDArray[Any]],
        num_examples: int,
        *,
        train_loss: float = 0.5,
        header: PayloadHeader | None = None,
        payload: bytes | None = None,
        spool: bool = True,
        **changes: Any,
    ) -> Acknowledgement:
        encoded_header, encoded_payload = encode_tensors(weights)
        update = UpdateSubmission(
            job_id=round_.job_id,
            round_id=round_.round_id,
            phase=Phase.INPUTS,
            base_version=round_.base_version,
            num_examples=num_examples,
            train_loss=train_loss,
            header=header or encoded_header,
        )
        update = dataclasses.replace(update, **changes)
        sent = encoded_payload if payload is None else payload
        if not spool:
            return self.service.submit_update(org, update, sent)
        # As the servicer does: the header is checked, the payload spooled in chunks.
        return self.service.receive_update(org, update, split(sent, chunk_bytes=64))

    def drive(self, done: Callable[[], bool], what: str, max_ticks: int = 10) -> None:
        """Tick the round driver until ``done``; a bounded loop, not a wait."""
        for _ in range(max_ticks):
            if done():
                return
            self.service.tick()
        assert done(), f"{what} did not happen within {max_ticks} ticks"

    def model(self, job_id: str, version: int) -> list[npt.NDArray[Any]]:
        job = self.service.get_job(job_id).job
        got, _, payload = self.service.read_model(job_id, version)
        assert got == (job.model_version if version < 0 else version)
        header = PayloadHeader(job.weight_specs, len(payload), hashlib.sha256(payload).digest())
        return decode_tensors(header, payload)

    def count(self, table: str) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())

    def audit(self) -> list[dict[str, Any]]:
        with self.store.transaction() as tx:
            return tx.list_audit()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness("sqlite://", tmp_path / "blobs")
    yield made
    made.close()


@pytest.fixture
def file_harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(f"sqlite:///{tmp_path / 'coordinator.db'}", tmp_path / "blobs")
    yield made
    made.close()


def fedavg(updates: list[tuple[list[npt.NDArray[Any]], int]]) -> list[npt.NDArray[np.float32]]:
    """The oracle: the num_examples-weighted mean, computed independently of the service."""
    total = sum(n for _, n in updates)
    return [
        (sum(w[i].astype(np.float64) * n for w, n in updates) / total).astype(np.float32)
        for i in range(len(SHAPES))
    ]


def assert_weights_equal(actual: list[npt.NDArray[Any]], expected: list[npt.NDArray[Any]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# -- the happy path --------------------------------------------------------------------------------


def test_two_rounds_from_creation_to_completion(harness: Harness) -> None:
    service, clock = harness.service, harness.clock
    harness.join("org-stale")  # seen once, long ago: must not be in the cohort
    clock.now += 1000
    job = harness.create_job()
    assert job.state is JobState.CREATED and job.model_version == 0
    assert_weights_equal(harness.model(job.job_id, 0), initial_weights())
    assert service.next_work("org-a").kind is WorkKind.WAIT  # not started yet

    harness.join(*ORGS)
    started = service.start_job(job.job_id, actor="admin")
    assert started.state is JobState.RUNNING
    first = harness.current_round(job.job_id)
    assert (first.number, first.phase, first.base_version) == (1, Phase.INPUTS, 0)
    assert first.cohort == ORGS
    assert first.deadline_at == clock.now + TIMEOUT_S

    for org in ORGS:
        work = service.next_work(org)
        assert work.kind is WorkKind.TRAIN
        assert work.round is not None and work.round.round_id == first.round_id
        assert work.model_version == 0 and work.seconds_left == TIMEOUT_S
    assert service.next_work("org-stale").kind is WorkKind.WAIT

    updates = [(update_weights(i), n) for i, n in enumerate((10, 30, 60))]
    acks = []
    for org, (weights, n) in zip(ORGS, updates, strict=True):
        clock.now += 1
        acks.append(harness.submit(org, first, weights, n, train_loss=float(n)))
    assert len({a.acknowledgement_id for a in acks}) == 3
    assert not any(a.duplicate for a in acks)

    harness.drive(lambda: harness.round(first.round_id).phase is Phase.COMMITTED, "commit")
    committed = harness.round(first.round_id)
    assert committed.contributors == ORGS
    assert committed.total_weight == 100
    assert committed.train_loss_sum == pytest.approx(10 * 10 + 30 * 30 + 60 * 60)
    assert committed.finished_at is not None
    assert service.get_job(job.job_id).job.model_version == 1
    assert_weights_equal(harness.model(job.job_id, 1), fedavg(updates))
    assert_weights_equal(harness.model(job.job_id, -1), fedavg(updates))

    # Contributors evaluate the model they built before they train again.
    for org in ORGS:
        work = service.next_work(org)
        assert work.kind is WorkKind.EVALUATE and work.model_version == 1
    for index, org in enumerate(ORGS):
        repeat = service.report_metrics(
            MetricReport(job.job_id, 1, org, 10 * (index + 1), 1.0 + index, 0.5, clock.now)
        )
        assert repeat is False
    summary = service.get_job(job.job_id).metrics
    assert len(summary) == 1
    assert (summary[0].version, summary[0].reports, summary[0].num_examples) == (1, 3, 60)
    assert summary[0].loss == pytest.approx((10 * 1.0 + 20 * 2.0 + 30 * 3.0) / 60)

    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    second = harness.current_round(job.job_id)
    assert (second.number, second.base_version, second.phase) == (2, 1, Phase.INPUTS)
    assert service.next_work("org-a").kind is WorkKind.TRAIN

    updates2 = [(update_weights(10 + i), n) for i, n in enumerate((5, 1, 2))]
    for org, (weights, n) in zip(ORGS, updates2, strict=True):
        harness.submit(org, second, weights, n)
    harness.drive(
        lambda: service.get_job(job.job_id).job.state is JobState.COMPLETED, "job completion"
    )
    finished = service.get_job(job.job_id)
    assert finished.job.model_version == 2
    assert [r.phase for r in finished.rounds] == [Phase.COMMITTED, Phase.COMMITTED]
    assert_weights_equal(harness.model(job.job_id, 2), fedavg(updates2))
    for _ in range(3):
        service.tick()
    assert len(harness.rounds(job.job_id)) == 2  # no round after num_rounds
    assert service.next_work("org-a").kind is WorkKind.EVALUATE  # of version 2
    actions = [a["action"] for a in reversed(harness.audit())]
    assert [a for a in actions if a.startswith("job.")] == ["job.create", "job.start"]


def test_aggregate_covers_exactly_the_contributors_at_the_deadline(harness: Harness) -> None:
    job, round_ = harness.running_job()
    updates = [(update_weights(1), 7), (update_weights(2), 3)]
    harness.submit("org-a", round_, *updates[0])
    harness.submit("org-b", round_, *updates[1])
    harness.service.tick()
    assert harness.round(round_.round_id).phase is Phase.INPUTS  # org-c still has time

    harness.clock.now = round_.deadline_at + 0.001
    with pytest.raises(WrongRoundPhase, match="deadline"):
        harness.submit("org-c", round_, update_weights(3), 1000)  # late: not counted (R9)
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    committed = harness.round(round_.round_id)
    assert committed.contributors == ("org-a", "org-b")
    assert committed.total_weight == 10
    assert_weights_equal(harness.model(job.job_id, 1), fedavg(updates))
    with harness.store.transaction() as tx:
        assert [s.org_id for s in tx.list_submissions(round_.round_id)] == ["org-a", "org-b"]
    # Only contributors are asked to evaluate.
    assert harness.service.next_work("org-c").kind is not WorkKind.EVALUATE


def test_an_organization_revoked_mid_round_is_not_waited_for(harness: Harness) -> None:
    job, round_ = harness.running_job()
    updates = [(update_weights(1), 7), (update_weights(2), 3)]
    harness.submit("org-a", round_, *updates[0])
    harness.submit("org-b", round_, *updates[1])
    harness.service.tick()
    assert harness.round(round_.round_id).phase is Phase.INPUTS  # org-c still has time

    harness.membership.revoke("org-c", "admin")
    # The clock never moves: the round closes without reaching its deadline.
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    assert harness.clock.now < round_.deadline_at
    committed = harness.round(round_.round_id)
    assert committed.contributors == ("org-a", "org-b")
    assert_weights_equal(harness.model(job.job_id, 1), fedavg(updates))


def test_a_round_left_short_by_a_revocation_aborts_at_once(harness: Harness) -> None:
    _, round_ = harness.running_job(min_participants=3)
    harness.submit("org-a", round_, update_weights(1), 7)
    harness.submit("org-b", round_, update_weights(2), 3)
    harness.membership.revoke("org-c", "admin")
    harness.drive(lambda: harness.round(round_.round_id).is_terminal, "abort")
    aborted = harness.round(round_.round_id)
    assert aborted.phase is Phase.ABORTED
    assert "no other organization can answer with 2 of 3" in aborted.abort_reason


def test_submission_exactly_at_the_deadline_is_accepted(harness: Harness) -> None:
    _, round_ = harness.running_job()
    harness.clock.now = round_.deadline_at
    ack = harness.submit("org-a", round_, update_weights(1), 1)
    assert not ack.duplicate
    assert harness.round(round_.round_id).contributors == ("org-a",)


# -- retries and conflicts (R7, R8) ----------------------------------------------------------------


def test_identical_resubmission_gets_the_original_acknowledgement(harness: Harness) -> None:
    _, round_ = harness.running_job()
    weights = update_weights(1)
    first = harness.submit("org-a", round_, weights, 5)
    after_first = harness.round(round_.round_id)
    harness.clock.now += 5
    again = harness.submit("org-a", round_, weights, 5)
    assert again == Acknowledgement(first.acknowledgement_id, duplicate=True)
    assert harness.round(round_.round_id) == after_first  # nothing counted twice
    assert harness.count("submissions") == 1


def test_identical_resubmission_after_the_deadline_still_gets_its_acknowledgement(
    harness: Harness,
) -> None:
    # An acknowledged update that is retried because the answer was lost is not "late".
    _, round_ = harness.running_job()
    weights = update_weights(1)
    first = harness.submit("org-a", round_, weights, 5)
    harness.clock.now = round_.deadline_at + 10
    again = harness.submit("org-a", round_, weights, 5)
    assert again == Acknowledgement(first.acknowledgement_id, duplicate=True)


def test_conflicting_resubmission_is_refused_and_the_original_kept(harness: Harness) -> None:
    _, round_ = harness.running_job()
    harness.submit("org-a", round_, update_weights(1), 5)
    before = harness.round(round_.round_id)
    with harness.store.transaction() as tx:
        original = tx.get_submission(round_.round_id, "org-a", "inputs")
    accumulator = harness.blobs.get(before.accumulator_ref)  # type: ignore[arg-type]
    with pytest.raises(ConflictingSubmission):
        harness.submit("org-a", round_, update_weights(2), 5)
    after = harness.round(round_.round_id)
    assert after == before
    assert harness.blobs.get(after.accumulator_ref) == accumulator  # type: ignore[arg-type]
    with harness.store.transaction() as tx:
        assert tx.list_submissions(round_.round_id) == [original]


def test_conflicting_resubmission_is_audited(harness: Harness) -> None:
    _, round_ = harness.running_job()
    harness.submit("org-a", round_, update_weights(1), 5)
    with pytest.raises(ConflictingSubmission):
        harness.submit("org-a", round_, update_weights(2), 5)
    conflicts = [a for a in harness.audit() if a["action"] == "submission.conflict"]
    assert len(conflicts) == 1
    assert conflicts[0]["actor"] == "org-a" and conflicts[0]["outcome"] == "rejected"
    assert round_.round_id in conflicts[0]["detail"]


# -- wrong place, wrong time (R9, R10) -------------------------------------------------------------


def _assert_unchanged(harness: Harness, before: Round, submissions: int, refs: list[str]) -> None:
    assert harness.round(before.round_id) == before
    assert harness.count("submissions") == submissions
    assert harness.blobs.refs() == refs


def test_late_submission_is_refused_and_not_counted(harness: Harness) -> None:
    _, round_ = harness.running_job()
    harness.submit("org-a", round_, update_weights(1), 5)
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    harness.clock.now = round_.deadline_at + 1
    with pytest.raises(WrongRoundPhase, match="deadline"):
        harness.submit("org-b", round_, update_weights(2), 5)
    _assert_unchanged(harness, before, 1, refs)


def test_unknown_round_or_round_of_another_job_is_not_found(harness: Harness) -> None:
    job, round_ = harness.running_job()
    other = harness.create_job(name="other")
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    weights = update_weights(1)
    with pytest.raises(NotFound):
        harness.submit("org-a", round_, weights, 5, round_id="no-such-round")
    with pytest.raises(NotFound):
        harness.submit("org-a", round_, weights, 5, job_id=other.job_id)
    with pytest.raises(NotFound):
        harness.submit("org-a", round_, weights, 5, job_id="no-such-job")
    _assert_unchanged(harness, before, 0, refs)
    assert job.job_id != other.job_id


def test_submission_for_a_finished_round_is_refused(harness: Harness) -> None:
    job, round_ = harness.running_job()
    harness.submit("org-a", round_, update_weights(1), 1)
    harness.submit("org-b", round_, update_weights(2), 1)
    harness.clock.now = round_.deadline_at + 1
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    old, refs = harness.round(round_.round_id), harness.blobs.refs()
    with pytest.raises(WrongRoundPhase, match="phase committed"):
        harness.submit("org-c", round_, update_weights(3), 1)
    _assert_unchanged(harness, old, 2, refs)
    assert harness.service.get_job(job.job_id).job.model_version == 1


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"phase": Phase.KEYS}, "phase"),
        ({"base_version": 1}, "model version"),
    ],
)
def test_out_of_order_submission_is_wrong_phase(
    harness: Harness, changes: dict[str, Any], match: str
) -> None:
    _, round_ = harness.running_job()
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    with pytest.raises(WrongRoundPhase, match=match):
        harness.submit("org-a", round_, update_weights(1), 5, **changes)
    _assert_unchanged(harness, before, 0, refs)


def test_participant_outside_the_cohort_is_wrong_phase(harness: Harness) -> None:
    _, round_ = harness.running_job(orgs=("org-a", "org-b"))
    harness.join("org-late")  # joined after the cohort was chosen
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    assert harness.service.next_work("org-late").kind is WorkKind.WAIT
    with pytest.raises(WrongRoundPhase, match="cohort"):
        harness.submit("org-late", round_, update_weights(1), 5)
    _assert_unchanged(harness, before, 0, refs)


# -- uploads are checked from their header, then spooled (R16) -------------------------------------

HEADER_REFUSALS: dict[str, tuple[type[Exception], str]] = {
    "late": (WrongRoundPhase, "deadline"),
    "outside-the-cohort": (WrongRoundPhase, "cohort"),
    "wrong-base-version": (WrongRoundPhase, "model version"),
    "wrong-layout": (InvalidRequest, "2 tensors"),
    "zero-examples": (InvalidRequest, "num_examples"),
    "oversized": (InvalidRequest, "exceeds"),
    "unknown-round": (NotFound, "round"),
    "a-different-one-accepted": (ConflictingSubmission, "different submission"),
}


@pytest.mark.parametrize("case", list(HEADER_REFUSALS))
def test_an_update_is_refused_from_its_header_before_any_payload_is_read(
    tmp_path: Path, case: str
) -> None:
    settings = CoordinatorSettings(max_payload_bytes=1000)
    harness = Harness("sqlite://", tmp_path / "blobs", settings=settings)
    try:
        _, round_ = harness.running_job(orgs=("org-a", "org-b"))
        harness.join("org-late")
        org, weights, examples = "org-a", update_weights(1), 5
        changes: dict[str, Any] = {}
        if case == "late":
            harness.clock.now = round_.deadline_at + 1
        elif case == "outside-the-cohort":
            org = "org-late"
        elif case == "wrong-base-version":
            changes["base_version"] = round_.base_version + 1
        elif case == "wrong-layout":
            weights = weights[:2]
        elif case == "zero-examples":
            examples = 0
        elif case == "oversized":
            weights = [np.zeros(300, np.float32)]  # 1200 bytes, over the 1000-byte limit
        elif case == "unknown-round":
            changes["round_id"] = "no-such-round"
        else:
            harness.submit("org-a", round_, update_weights(2), 5)
        header, payload = encode_tensors(weights)
        update = UpdateSubmission(
            round_.job_id, round_.round_id, Phase.INPUTS, round_.base_version, examples, 0.5, header
        )
        update = dataclasses.replace(update, **changes)
        read: list[int] = []

        def chunks() -> Iterator[bytes]:
            for piece in split(payload, chunk_bytes=64):
                read.append(len(piece))
                yield piece

        error, match = HEADER_REFUSALS[case]
        with pytest.raises(error, match=match):
            harness.service.receive_update(org, update, chunks())
        assert read == []
        assert harness.service.spool.files() == []
    finally:
        harness.close()


def test_an_update_refused_after_it_was_spooled_leaves_no_file(harness: Harness) -> None:
    _, round_ = harness.running_job()
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    with pytest.raises(InvalidRequest, match="NaN"):
        harness.submit("org-a", round_, _poisoned(float("nan")), 5)
    assert harness.service.spool.files() == []
    _assert_unchanged(harness, before, 0, refs)
    assert not harness.submit("org-a", round_, update_weights(1), 5).duplicate
    assert harness.service.spool.files() == []


# -- bad input changes nothing (S8) ----------------------------------------------------------------


def _with(index: int, value: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
    weights: list[npt.NDArray[Any]] = list(update_weights(1))
    weights[index] = value
    return weights


def _poisoned(value: float) -> list[npt.NDArray[Any]]:
    weights = update_weights(1)
    weights[0][1, 1] = value
    return list(weights)


BAD_UPDATES: dict[str, tuple[list[npt.NDArray[Any]], int, float, str]] = {
    "too-few-tensors": (update_weights(1)[:2], 5, 0.5, "2 tensors"),
    "too-many-tensors": ([*update_weights(1), np.zeros(1, np.float32)], 5, 0.5, "4 tensors"),
    "wrong-shape": (_with(0, np.zeros((2, 3), np.float32)), 5, 0.5, "shape"),
    "wrong-dtype": (_with(1, np.zeros(2, np.float64)), 5, 0.5, "dtype"),
    "int-dtype": (_with(1, np.zeros(2, np.int32)), 5, 0.5, "dtype"),
    "nan": (_poisoned(float("nan")), 5, 0.5, "NaN"),
    "inf": (_poisoned(float("inf")), 5, 0.5, "NaN or infinite"),
    "minus-inf": (_poisoned(float("-inf")), 5, 0.5, "NaN or infinite"),
    "zero-examples": (update_weights(1), 0, 0.5, "num_examples"),
    "negative-examples": (update_weights(1), -3, 0.5, "num_examples"),
    "too-many-examples": (update_weights(1), (1 << 40) + 1, 0.5, "num_examples"),
    "nan-loss": (update_weights(1), 5, float("nan"), "train_loss"),
}


@pytest.mark.parametrize("case", list(BAD_UPDATES))
def test_bad_update_is_invalid_and_stores_nothing(harness: Harness, case: str) -> None:
    _, round_ = harness.running_job()
    harness.submit("org-b", round_, update_weights(7), 2)  # so there is state to protect
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    weights, num_examples, loss, match = BAD_UPDATES[case]
    with pytest.raises(InvalidRequest, match=match):
        harness.submit("org-a", round_, weights, num_examples, train_loss=loss)
    _assert_unchanged(harness, before, 1, refs)
    # The refusal did not burn the slot: a good update is still accepted afterwards.
    assert not harness.submit("org-a", round_, update_weights(1), 5).duplicate


def test_payload_that_does_not_match_its_header_is_invalid(harness: Harness) -> None:
    _, round_ = harness.running_job()
    before, refs = harness.round(round_.round_id), harness.blobs.refs()
    header, payload = encode_tensors(update_weights(1))
    tampered = bytes([payload[0] ^ 1]) + payload[1:]
    weights = update_weights(1)
    with pytest.raises(InvalidRequest, match="SHA-256"):
        harness.submit("org-a", round_, weights, 5, header=header, payload=tampered, spool=False)
    with pytest.raises(InvalidRequest, match="bytes"):
        harness.submit(
            "org-a", round_, weights, 5, header=header, payload=payload[:-4], spool=False
        )
    # Received as a stream, the same payloads are refused as they are spooled.
    with pytest.raises(ChunkError, match="SHA-256"):
        harness.submit("org-a", round_, weights, 5, header=header, payload=tampered)
    with pytest.raises(ChunkError, match="bytes"):
        harness.submit("org-a", round_, weights, 5, header=header, payload=payload[:-4])
    assert harness.service.spool.files() == []
    _assert_unchanged(harness, before, 0, refs)


def test_oversized_payload_is_refused_before_decoding(tmp_path: Path) -> None:
    limited = Harness(
        "sqlite://", tmp_path / "blobs", settings=CoordinatorSettings(max_payload_bytes=32)
    )
    try:
        header, payload = encode_tensors([np.zeros(4, np.float32)])  # 16 bytes: fits
        job = limited.service.create_job(
            make_spec(min_participants=1), header, payload, actor="admin"
        )
        limited.join("org-a")
        limited.service.start_job(job.job_id, actor="admin")
        round_ = limited.current_round(job.job_id)
        big = [np.zeros(40, np.float32)]  # 160 bytes
        with pytest.raises(InvalidRequest, match="exceeds"):
            limited.submit("org-a", round_, big, 1)
        assert limited.count("submissions") == 0
    finally:
        limited.close()


def test_header_with_overflowing_zero_size_shape_is_invalid(harness: Harness) -> None:
    from fedsilo.codec import TensorSpec

    _, round_ = harness.running_job()
    empty = b""
    header = PayloadHeader(
        (TensorSpec("float32", (0, 1 << 62, 1 << 62)),), 0, hashlib.sha256(empty).digest()
    )
    with pytest.raises(InvalidRequest):
        harness.submit("org-a", round_, [], 5, header=header, payload=empty)


# -- deadlines and failure -------------------------------------------------------------------------


def test_too_few_updates_at_the_deadline_abort_and_then_fail_the_job(harness: Harness) -> None:
    job, first = harness.running_job(max_failed_rounds=1)
    harness.submit("org-a", first, update_weights(1), 5)  # 1 of 2 required
    harness.clock.now = first.deadline_at + 1
    harness.service.tick()
    aborted = harness.round(first.round_id)
    assert aborted.phase is Phase.ABORTED
    assert aborted.abort_reason == "deadline passed with 1 of 2 required updates"
    assert aborted.finished_at == harness.clock.now
    state = harness.service.get_job(job.job_id).job
    assert (state.state, state.failed_rounds, state.model_version) == (JobState.RUNNING, 1, 0)
    assert harness.service.next_work("org-a").kind is WorkKind.WAIT  # nothing to evaluate

    harness.join(*ORGS)  # participants keep polling, so they are live for the next cohort
    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    second = harness.current_round(job.job_id)
    assert second.base_version == 0  # nothing was released by the aborted round
    harness.clock.now = second.deadline_at + 1
    harness.service.tick()
    assert harness.round(second.round_id).phase is Phase.ABORTED
    failed = harness.service.get_job(job.job_id).job
    assert failed.state is JobState.FAILED
    assert failed.failed_rounds == 2
    assert failed.failure_reason is not None and "2 rounds failed" in failed.failure_reason
    harness.join(*ORGS)
    for _ in range(3):
        harness.service.tick()
    assert len(harness.rounds(job.job_id)) == 2  # a failed job opens no more rounds
    with pytest.raises(NotFound):
        harness.service.read_model(job.job_id, 1)


def test_a_commit_resets_the_failure_count(harness: Harness) -> None:
    job, first = harness.running_job(max_failed_rounds=1)
    harness.clock.now = first.deadline_at + 1
    harness.service.tick()
    harness.join(*ORGS)
    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    second = harness.current_round(job.job_id)
    for seed, org in enumerate(ORGS):
        harness.submit(org, second, update_weights(seed), 1)
    harness.drive(lambda: harness.round(second.round_id).phase is Phase.COMMITTED, "commit")
    state = harness.service.get_job(job.job_id).job
    assert (state.state, state.failed_rounds, state.model_version) == (JobState.RUNNING, 0, 1)


def test_no_round_opens_without_enough_live_participants(harness: Harness) -> None:
    job = harness.create_job(min_participants=2)
    harness.join("org-a")
    harness.service.start_job(job.job_id, actor="admin")
    assert harness.rounds(job.job_id) == ()
    harness.clock.now += harness.service.settings.liveness_seconds + 1
    harness.join("org-b")  # org-a went quiet: still only one live participant
    harness.service.tick()
    assert harness.rounds(job.job_id) == ()
    harness.join("org-a")
    harness.service.tick()
    assert harness.current_round(job.job_id).cohort == ("org-a", "org-b")


def test_pending_participants_are_not_in_the_cohort(tmp_path: Path) -> None:
    manual = Harness("sqlite://", tmp_path / "blobs", auto_approve=False)
    try:
        job = manual.create_job(min_participants=1)
        manual.join("org-a")
        assert manual.membership.list_participants()[0].status is ParticipantStatus.PENDING
        manual.service.start_job(job.job_id, actor="admin")
        assert manual.rounds(job.job_id) == ()
    finally:
        manual.close()


# -- jobs and metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([np.zeros(3, np.float64)], "float32"),
        ([np.array([1.0, np.nan], np.float32)], "NaN"),
    ],
)
def test_bad_initial_weights_create_no_job(
    harness: Harness, weights: list[npt.NDArray[Any]], match: str
) -> None:
    header, payload = encode_tensors(weights)
    with pytest.raises(InvalidRequest, match=match):
        harness.service.create_job(make_spec(), header, payload, actor="admin")
    with pytest.raises(InvalidRequest, match="num_rounds"):
        harness.service.create_job(
            make_spec(num_rounds=0), *encode_tensors(initial_weights()), actor="admin"
        )
    assert harness.service.list_jobs() == []
    assert harness.count("model_versions") == 0
    assert harness.audit() == []


def test_job_can_be_started_once(harness: Harness) -> None:
    job = harness.create_job()
    harness.service.start_job(job.job_id, actor="admin")
    with pytest.raises(WrongRoundPhase):
        harness.service.start_job(job.job_id, actor="admin")
    with pytest.raises(NotFound):
        harness.service.start_job("no-such-job", actor="admin")


def test_metric_reports_are_checked_and_deduplicated(harness: Harness) -> None:
    job, round_ = harness.running_job()
    for seed, org in enumerate(ORGS):
        harness.submit(org, round_, update_weights(seed), 1)
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    good = MetricReport(job.job_id, 1, "org-a", 10, 0.5, 0.75, harness.clock.now)
    bad = {
        "num_examples": dataclasses.replace(good, num_examples=0),
        "finite": dataclasses.replace(good, loss=float("inf")),
        "accuracy": dataclasses.replace(good, accuracy=1.5),
    }
    for match, report in bad.items():
        with pytest.raises(InvalidRequest, match=match):
            harness.service.report_metrics(report)
    with pytest.raises(NotFound):
        harness.service.report_metrics(dataclasses.replace(good, version=2))
    with pytest.raises(NotFound):
        harness.service.report_metrics(dataclasses.replace(good, job_id="no-such-job"))
    assert harness.count("metrics") == 0
    assert harness.service.report_metrics(good) is False
    assert harness.service.report_metrics(dataclasses.replace(good, created_at=T0 + 99)) is True
    with pytest.raises(ConflictingSubmission):
        harness.service.report_metrics(dataclasses.replace(good, loss=0.25))
    assert harness.count("metrics") == 1
    assert harness.service.next_work("org-a").kind is not WorkKind.EVALUATE


# -- crash and restart (R5) ------------------------------------------------------------------------


def test_a_new_service_over_the_same_files_continues_the_round(file_harness: Harness) -> None:
    harness = file_harness
    job, round_ = harness.running_job()
    updates = [(update_weights(i), n) for i, n in enumerate((4, 9, 2))]
    acks = [harness.submit(org, round_, *u) for org, u in zip(ORGS[:2], updates, strict=False)]

    # The process dies: nothing but the database file and the blob dir survives.
    harness.restart()
    view = harness.service.get_job(job.job_id)
    assert len(view.rounds) == 1
    resumed = view.rounds[0]
    assert (resumed.round_id, resumed.phase) == (round_.round_id, Phase.INPUTS)
    assert resumed.contributors == ORGS[:2]
    work = harness.service.next_work("org-c")
    assert work.kind is WorkKind.TRAIN and work.round is not None
    assert work.round.round_id == round_.round_id
    # An acknowledged update re-sent after the restart is recognized, not counted twice.
    retry = harness.submit("org-a", round_, *updates[0])
    assert retry == Acknowledgement(acks[0].acknowledgement_id, duplicate=True)

    harness.submit("org-c", round_, *updates[2])
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    assert harness.round(round_.round_id).contributors == ORGS
    assert_weights_equal(harness.model(job.job_id, 1), fedavg(updates))
    assert harness.count("submissions") == 3


def test_a_restart_between_aggregation_and_commit_commits_once(file_harness: Harness) -> None:
    harness = file_harness
    job, round_ = harness.running_job()
    updates = [(update_weights(i), i + 1) for i in range(3)]
    for org, update in zip(ORGS, updates, strict=True):
        harness.submit(org, round_, *update)
    assert harness.round(round_.round_id).phase is Phase.AGGREGATED
    harness.restart()
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    assert harness.service.get_job(job.job_id).job.model_version == 1
    assert_weights_equal(harness.model(job.job_id, 1), fedavg(updates))
    assert harness.count("model_versions") == 2  # version 0 and exactly one version 1


# -- content addressing across jobs ----------------------------------------------------------------


def test_identical_running_sums_in_two_jobs_do_not_share_fate(harness: Harness) -> None:
    job_a, round_a = harness.running_job()
    job_b = harness.create_job(name="twin")
    harness.service.start_job(job_b.job_id, actor="admin")
    round_b = harness.current_round(job_b.job_id)
    first, second, third = (update_weights(1), 5), (update_weights(2), 5), (update_weights(3), 5)
    harness.submit("org-a", round_a, *first)
    harness.submit("org-a", round_b, *first)  # the same running sum: the same blob ref
    assert harness.round(round_a.round_id).accumulator_ref == (
        harness.round(round_b.round_id).accumulator_ref
    )
    harness.submit("org-b", round_a, *second)  # job A moves on and drops its old running sum
    harness.submit("org-b", round_b, *second)  # job B still needs it
    harness.submit("org-c", round_b, *third)
    harness.submit("org-c", round_a, *third)
    for job, round_ in ((job_a, round_a), (job_b, round_b)):
        harness.drive(lambda r=round_: harness.round(r.round_id).phase is Phase.COMMITTED, "commit")
        assert_weights_equal(harness.model(job.job_id, 1), fedavg([first, second, third]))


# -- strategies (docs/strategies.md) --------------------------------------------------------------


def test_fedavg_commits_the_round_result_unchanged_and_keeps_no_state(harness: Harness) -> None:
    job, round_ = harness.running_job()
    assert job.spec.algorithm == "fedavg" and job.spec.strategy == StrategyParameters()
    updates = [(update_weights(i), n) for i, n in enumerate((10, 30, 60))]
    for org, (weights, n) in zip(ORGS, updates, strict=True):
        harness.submit(org, round_, weights, n)
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    committed = harness.round(round_.round_id)
    with harness.store.transaction() as tx:
        version = tx.get_model_version(job.job_id, 1)
    assert version is not None and version.optimizer_state_ref is None
    assert version.blob_ref == committed.result_ref
    # Bit for bit the running float64 sum in arrival order over the total, as float32.
    sums = [np.zeros(shape, dtype=np.float64) for shape in SHAPES]
    for weights, n in updates:
        for acc, w in zip(sums, weights, strict=True):
            acc += w.astype(np.float64) * float(n)
    expected = [(acc / 100.0).astype(np.float32) for acc in sums]
    _, _, payload = harness.service.read_model(job.job_id, 1)
    assert payload == encode_tensors(expected)[1]


def test_fedadam_steps_at_commit_and_its_state_survives_a_restart(file_harness: Harness) -> None:
    harness = file_harness
    job, first = harness.running_job(
        algorithm="fedadam", strategy=StrategyParameters(server_learning_rate=0.1)
    )
    # Stored with every default filled in.
    resolved = StrategyParameters(server_learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    assert harness.service.get_job(job.job_id).job.spec.strategy == resolved
    strategy = load_strategy("fedadam", resolved)
    updates = [(update_weights(i), n) for i, n in enumerate((10, 30, 60))]
    for org, (weights, n) in zip(ORGS, updates, strict=True):
        harness.submit(org, first, weights, n)
    harness.drive(lambda: harness.round(first.round_id).phase is Phase.COMMITTED, "commit")
    model1 = harness.model(job.job_id, 1)
    expected1, state1 = apply_server_step(strategy, initial_weights(), fedavg(updates), None)
    assert_weights_equal(model1, expected1)
    assert np.max(np.abs(model1[0] - fedavg(updates)[0])) > 0.1  # not FedAvg
    with harness.store.transaction() as tx:
        version1 = tx.get_model_version(job.job_id, 1)
    assert version1 is not None and version1.optimizer_state_ref is not None
    kept = decode_optimizer_state(harness.blobs.get(version1.optimizer_state_ref))
    assert sorted(kept) == ["m", "v"]
    for key in kept:
        np.testing.assert_allclose(kept[key], state1[key], rtol=1e-5, atol=1e-9)

    harness.restart()
    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    second = harness.current_round(job.job_id)
    updates2 = [(update_weights(10 + i), n) for i, n in enumerate((5, 1, 2))]
    for org, (weights, n) in zip(ORGS, updates2, strict=True):
        harness.submit(org, second, weights, n)
    harness.drive(
        lambda: harness.service.get_job(job.job_id).job.state is JobState.COMPLETED, "completion"
    )
    model2 = harness.model(job.job_id, 2)
    expected2, _ = apply_server_step(strategy, model1, fedavg(updates2), kept)
    assert_weights_equal(model2, expected2)
    # Had the moments been lost in the restart, the step would have been another one.
    forgetful, _ = apply_server_step(strategy, model1, fedavg(updates2), None)
    assert np.max(np.abs(forgetful[0] - model2[0])) > 1e-3


def test_a_failing_server_step_aborts_the_round(harness: Harness) -> None:
    job, first = harness.running_job(algorithm="fedavgm", max_failed_rounds=3)
    for org in ORGS:
        harness.submit(org, first, update_weights(1), 10)
    harness.drive(lambda: harness.round(first.round_id).phase is Phase.COMMITTED, "commit")
    with harness.store.transaction() as tx:
        version1 = tx.get_model_version(job.job_id, 1)
    assert version1 is not None and version1.optimizer_state_ref is not None
    damaged = harness.blobs.put(b"not an optimizer state")
    with harness.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE model_versions SET optimizer_state_ref = :ref WHERE version = 1"),
            {"ref": damaged},
        )
    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    second = harness.current_round(job.job_id)
    for org in ORGS:
        harness.submit(org, second, update_weights(2), 10)
    harness.drive(lambda: harness.round(second.round_id).phase is Phase.ABORTED, "abort")
    reason = harness.round(second.round_id).abort_reason or ""
    assert "the fedavgm server step failed: the optimizer state is unreadable" in reason
    assert harness.service.get_job(job.job_id).job.model_version == 1


# -- job delete ------------------------------------------------------------------------------------


def _job_rows(harness: Harness, job_id: str) -> dict[str, int]:
    """Rows that belong to one job, per table (submissions through its rounds)."""
    counts = {}
    with harness.store.engine.connect() as conn:
        for table in ("jobs", "rounds", "model_versions", "metrics", "job_messages"):
            counts[table] = int(
                conn.execute(
                    text(f"SELECT count(*) FROM {table} WHERE job_id = :job"),  # noqa: S608
                    {"job": job_id},
                ).scalar_one()
            )
        counts["submissions"] = int(
            conn.execute(
                text(
                    "SELECT count(*) FROM submissions WHERE round_id IN "
                    "(SELECT round_id FROM rounds WHERE job_id = :job)"
                ),
                {"job": job_id},
            ).scalar_one()
        )
    return counts


def test_delete_drops_an_ended_jobs_models_and_blobs_and_keeps_the_audit(
    file_harness: Harness,
) -> None:
    harness = file_harness
    job, first = harness.running_job(algorithm="fedavgm", num_rounds=3)
    other = harness.create_job()  # the same initial weights: version 0 is one shared blob
    other_refs = set(harness.blobs.refs())
    for seed, org in enumerate(ORGS):
        harness.submit(org, first, update_weights(seed), 10)
    harness.drive(lambda: harness.round(first.round_id).phase is Phase.COMMITTED, "commit")
    harness.service.report_metrics(MetricReport(job.job_id, 1, "org-a", 10, 0.5, 0.75, T0))
    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    harness.submit("org-a", harness.current_round(job.job_id), update_weights(9), 10)
    before = _job_rows(harness, job.job_id)
    assert before["submissions"] == 4 and before["model_versions"] == 2
    assert set(harness.blobs.refs()) > other_refs

    # A job that may still open rounds is refused, and the refusal changes nothing.
    with pytest.raises(WrongRoundPhase, match=r"job is running; .*fedsilo job abort first"):
        harness.service.delete_job(job.job_id, actor="admin")
    assert _job_rows(harness, job.job_id) == before
    assert "job.delete" not in [a["action"] for a in harness.audit()]

    harness.service.abort_job(job.job_id, actor="admin")
    deleted = harness.service.delete_job(job.job_id, actor="admin")
    assert deleted.job.job_id == job.job_id and deleted.blobs_removed >= 2
    # The job row, its rounds and submissions stay as bookkeeping; what it stored is gone.
    assert _job_rows(harness, job.job_id) == {
        "jobs": 1,
        "rounds": 2,
        "model_versions": 0,
        "metrics": 0,
        "job_messages": 0,
        "submissions": 4,
    }
    with harness.store.transaction() as tx:
        assert tx.get_job(job.job_id).state is JobState.DELETED  # type: ignore[union-attr]
    # The blobs on disk are exactly the other job's: its version 0 stays though job shared it.
    assert set(harness.blobs.refs()) == other_refs
    assert_weights_equal(harness.model(other.job_id, 0), initial_weights())
    with pytest.raises(NotFound):
        harness.service.get_job(job.job_id)
    with pytest.raises(NotFound):
        harness.service.read_model(job.job_id, 0)
    with pytest.raises(NotFound):
        harness.service.delete_job(job.job_id, actor="admin")
    assert [v.job.job_id for v in harness.service.list_jobs()] == [other.job_id]
    assert harness.service.next_work("org-a").kind is WorkKind.WAIT  # nothing to evaluate
    audit = harness.audit()
    assert audit[0]["action"] == "job.delete" and f"job={job.job_id}" in audit[0]["detail"]
    mine = [a["action"] for a in reversed(audit) if f"job={job.job_id}" in a["detail"]]
    assert mine == ["job.create", "job.start", "job.abort", "job.delete"]

    harness.restart()
    assert [v.job.job_id for v in harness.service.list_jobs()] == [other.job_id]
    with pytest.raises(NotFound):
        harness.service.get_job(job.job_id)


@pytest.mark.parametrize("state", ["created", "paused"])
def test_a_job_that_has_not_ended_cannot_be_deleted(harness: Harness, state: str) -> None:
    job = harness.create_job()
    if state == "paused":
        harness.service.start_job(job.job_id, actor="admin")
        harness.service.pause_job(job.job_id, actor="admin")
    with pytest.raises(WrongRoundPhase, match=f"job is {state}; only a completed"):
        harness.service.delete_job(job.job_id, actor="admin")
    assert harness.service.get_job(job.job_id).job.state.value == state


def test_train_loss_is_known_only_for_plain_rounds_with_contributions(harness: Harness) -> None:
    job, first = harness.running_job()
    assert harness.round(first.round_id).train_loss is None
    harness.submit("org-a", first, update_weights(1), 10, train_loss=1.0)
    harness.submit("org-b", first, update_weights(2), 30, train_loss=3.0)
    assert harness.round(first.round_id).train_loss == pytest.approx(2.5)
    secure = dataclasses.replace(harness.round(first.round_id), protection=Protection.SECAGG)
    assert secure.train_loss is None


def test_job_view_has_the_jobs_threshold_and_each_organizations_metrics(
    harness: Harness,
) -> None:
    plain = harness.create_job()
    assert harness.service.get_job(plain.job_id).threshold == 0
    secure = harness.create_job(protection=Protection.SECAGG, min_participants=3)
    assert harness.service.get_job(secure.job_id).threshold == 2  # two thirds of 3
    job, first = harness.running_job()
    for seed, org in enumerate(ORGS):
        harness.submit(org, first, update_weights(seed), 10)
    harness.drive(lambda: harness.round(first.round_id).phase is Phase.COMMITTED, "commit")
    harness.service.report_metrics(MetricReport(job.job_id, 1, "org-b", 30, 0.2, 0.9, T0))
    harness.service.report_metrics(MetricReport(job.job_id, 1, "org-a", 10, 0.6, 0.5, T0))
    (summary,) = harness.service.get_job(job.job_id).metrics
    assert summary.accuracy == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert [(r.org_id, r.num_examples, r.loss, r.accuracy) for r in summary.organizations] == [
        ("org-a", 10, 0.6, 0.5),
        ("org-b", 30, 0.2, 0.9),
    ]


def test_the_privacy_budget_stops_the_job_before_a_round_would_overspend_it(
    harness: Harness,
) -> None:
    pytest.importorskip("dp_accounting", reason="needs the dp extra (dp-accounting)")
    unbounded = DifferentialPrivacy(clip=1.0, noise_multiplier=3.0, delta=1e-5)
    # Enough for two released rounds, not for three.
    budget = (epsilon_after(unbounded, 2) + epsilon_after(unbounded, 3)) / 2
    dp = dataclasses.replace(unbounded, epsilon_budget=budget)
    job, first = harness.running_job(num_rounds=5, dp=dp)
    assert harness.service.next_work("org-a").job.spec.dp == dp  # type: ignore[union-attr]
    spent = harness.service.get_job(job.job_id).privacy
    assert spent is not None and (spent.rounds, spent.epsilon) == (0, 0.0)

    for org in ORGS:
        harness.submit(org, first, update_weights(1), 1)
    harness.drive(lambda: harness.round(first.round_id).phase is Phase.COMMITTED, "commit")
    view = harness.service.get_job(job.job_id)
    assert view.job.state is JobState.RUNNING and view.job.failure_reason is None
    assert view.privacy is not None and view.privacy.rounds == 1
    assert view.privacy.epsilon == epsilon_after(dp, 1)

    harness.drive(lambda: len(harness.rounds(job.job_id)) == 2, "second round")
    second = harness.current_round(job.job_id)
    for org in ORGS:
        harness.submit(org, second, update_weights(2), 1)
    harness.drive(
        lambda: harness.service.get_job(job.job_id).job.state is JobState.COMPLETED, "stop"
    )
    stopped = harness.service.get_job(job.job_id)
    assert stopped.job.model_version == 2
    reason = stopped.job.failure_reason or ""
    assert reason.startswith("stopped by the privacy budget: after 2 released rounds")
    assert f"above the budget {budget:g}" in reason
    assert stopped.privacy is not None and stopped.privacy.epsilon <= budget
    for _ in range(3):
        harness.service.tick()
    assert len(harness.rounds(job.job_id)) == 2  # no third round
    # The same figures for the dashboard (docs/metrics.md).
    registry = CoordinatorMetrics(harness.store).registry
    labels = {"job": job.job_id}
    assert registry.get_sample_value("fedsilo_job_privacy_epsilon", labels) == (
        stopped.privacy.epsilon
    )
    assert registry.get_sample_value("fedsilo_job_privacy_epsilon_budget", labels) == budget


def test_a_dp_job_keeps_its_settings_across_a_restart(file_harness: Harness) -> None:
    pytest.importorskip("dp_accounting", reason="needs the dp extra (dp-accounting)")
    harness = file_harness
    dp = DifferentialPrivacy(clip=0.5, noise_multiplier=1.5, delta=1e-6)
    job = harness.create_job(dp=dp)
    harness.restart()
    assert harness.service.get_job(job.job_id).job.spec.dp == dp
    # A job without differential privacy reports no spending at all.
    plain = harness.create_job()
    assert harness.service.get_job(plain.job_id).privacy is None


def test_each_phase_a_round_leaves_is_timed_for_the_metrics(harness: Harness) -> None:
    seen: list[tuple[str, str, float]] = []
    harness.service.on_phase_end(lambda *observed: seen.append(observed))
    job, round_ = harness.running_job()
    assert seen == [("none", "created", 0.0)]
    for index, org in enumerate(ORGS):
        harness.clock.now += 1
        harness.submit(org, round_, update_weights(index), 10)
    harness.drive(lambda: harness.round(round_.round_id).phase is Phase.COMMITTED, "commit")
    assert seen[1:] == [("none", "inputs", 3.0), ("none", "aggregated", 0.0)]

    # An admin's abort ends the phase too; the registry files each under its labels.
    metrics = CoordinatorMetrics(harness.store)
    harness.service.on_phase_end(metrics.observe_phase)
    other, _ = harness.running_job()
    harness.clock.now += 5
    harness.service.abort_job(other.job_id, actor="admin")
    assert seen[-1] == ("none", "inputs", 5.0)
    labels = {"protection": "none", "phase": "inputs"}
    assert metrics.registry.get_sample_value("fedsilo_phase_duration_seconds_sum", labels) == 5.0
    assert metrics.registry.get_sample_value("fedsilo_phase_duration_seconds_count", labels) == 1
