"""One contract suite for the coordinator Store, run against SQLite (memory, file) and PostgreSQL.

Every backend must round-trip each entity exactly, enforce uniqueness in the schema, refuse
stale compare-and-set writes and roll a failed transaction back completely.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from coordinator.domain.jobs import (
    Job,
    JobMessage,
    JobSpec,
    JobState,
    MetricReport,
    ModelVersion,
    Participant,
    ParticipantStatus,
    PhaseMessage,
    Submission,
)
from coordinator.domain.rounds import Phase, Round
from coordinator.errors import CoordinatorError, StorageUnavailable
from coordinator.persistence.migrate import head_revision
from coordinator.persistence.store import DuplicateKey, StaleWrite, Store
from fedsilo.codec import TensorSpec
from fedsilo.protection import Protection
from fedsilo.strategies import StrategyParameters
from fedsilo.tasks import TrainingSettings

BACKENDS = [
    pytest.param("sqlite-memory", id="sqlite-memory"),
    pytest.param("sqlite-file", id="sqlite-file"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
PERSISTENT_BACKENDS = BACKENDS[1:]

T0 = 1_700_000_000.123456  # not representable in float32: catches a lossy column type


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite-memory":
        return "sqlite://"
    if backend == "sqlite-file":
        return f"sqlite:///{tmp_path / 'coordinator.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = Store(_url(request.param, request, tmp_path))
    yield opened
    opened.close()


@pytest.fixture(params=PERSISTENT_BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A factory that opens (again) the same persistent database."""
    url = _url(request.param, request, tmp_path)
    opened: list[Store] = []

    def make() -> Store:
        opened.append(Store(url))
        return opened[-1]

    yield make
    for each in opened:
        each.close()


# -- builders --------------------------------------------------------------------------------------


def make_spec(name: str = "digits") -> JobSpec:
    # Every field differs from its default so a column that is not stored shows up.
    return JobSpec(
        name=name,
        task_name="digits-linear",
        protection=Protection.NONE,
        algorithm="fedyogi",
        num_rounds=7,
        min_participants=3,
        round_timeout_seconds=123.5,
        max_failed_rounds=4,
        training=TrainingSettings(local_epochs=2, batch_size=16, learning_rate=0.125, seed=42),
        task_config_json='{"hidden": [8, 4], "note": "\\u00e9"}',
        strategy=StrategyParameters(server_learning_rate=0.25, beta1=0.5, beta2=0.75, tau=1e-4),
    )


WEIGHT_SPECS = (
    TensorSpec("float32", (64, 10)),
    TensorSpec("float32", (10,)),
    TensorSpec("float64", ()),
    TensorSpec("int64", (0, 3)),
)


def make_job(job_id: str = "job-1", created_at: float = T0, **changes: object) -> Job:
    job = Job(
        job_id=job_id,
        spec=make_spec(),
        state=JobState.CREATED,
        model_version=0,
        weight_specs=WEIGHT_SPECS,
        created_at=created_at,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def make_round(
    round_id: str = "round-1", job_id: str = "job-1", number: int = 1, **changes: object
) -> Round:
    round_ = Round(
        round_id=round_id,
        job_id=job_id,
        number=number,
        protection=Protection.NONE,
        phase=Phase.INPUTS,
        row_version=3,
        base_version=number - 1,
        cohort=("org-c", "org-a", "org-b"),
        deadline_at=T0 + 300.25,
        created_at=T0 + number,
    )
    return dataclasses.replace(round_, **changes)  # type: ignore[arg-type]


def make_submission(
    org_id: str = "org-a", round_id: str = "round-1", phase: str = "inputs", ack: str = "ack-1"
) -> Submission:
    return Submission(
        round_id=round_id,
        org_id=org_id,
        phase=phase,
        content_sha256=bytes(range(32)),
        size_bytes=(1 << 33) + 5,  # beyond 32 bits: the column must be 64-bit
        num_examples=(1 << 35) + 1,
        acknowledgement_id=ack,
        created_at=T0 + 0.5,
    )


def count_rows(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- participants ----------------------------------------------------------------------------------


def test_participant_round_trip_touch_and_order(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_participant(Participant("org-b", ParticipantStatus.PENDING, T0, T0))
        tx.add_participant(Participant("org-a", ParticipantStatus.ACTIVE, T0 + 1, T0 + 2))
        tx.add_participant(Participant("org-c", ParticipantStatus.REVOKED, T0, T0))
    with store.transaction() as tx:
        tx.touch_participant("org-b", T0 + 99.5)
    with store.transaction() as tx:
        assert tx.get_participant("org-b") == Participant(
            "org-b", ParticipantStatus.PENDING, T0, T0 + 99.5
        )
        assert tx.get_participant("org-a") == Participant(
            "org-a", ParticipantStatus.ACTIVE, T0 + 1, T0 + 2
        )
        assert tx.get_participant("org-zz") is None
        assert [p.org_id for p in tx.list_participants()] == ["org-a", "org-b", "org-c"]
        assert tx.get_participant("org-c").status is ParticipantStatus.REVOKED  # type: ignore[union-attr]


def test_duplicate_participant_is_refused(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_participant(Participant("org-a", ParticipantStatus.ACTIVE, T0, T0))
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_participant(Participant("org-a", ParticipantStatus.PENDING, T0 + 1, T0 + 1))
    with store.transaction() as tx:
        assert tx.get_participant("org-a") == Participant("org-a", ParticipantStatus.ACTIVE, T0, T0)


def test_participant_certificate_fingerprint_is_kept_and_updated_only_when_given(
    store: Store,
) -> None:
    first, renewed = "ab" * 32, "cd" * 32
    with store.transaction() as tx:
        tx.add_participant(Participant("org-a", ParticipantStatus.PENDING, T0, T0, first))
        tx.add_participant(Participant("org-b", ParticipantStatus.PENDING, T0, T0))
    with store.transaction() as tx:
        tx.touch_participant("org-a", T0 + 1)  # no fingerprint known: the stored one stays
        assert tx.get_participant("org-a") == Participant(
            "org-a", ParticipantStatus.PENDING, T0, T0 + 1, first
        )
        tx.touch_participant("org-a", T0 + 2, renewed)
        tx.touch_participant("org-b", T0 + 2)
    with store.transaction() as tx:
        assert tx.get_participant("org-a").certificate_sha256 == renewed  # type: ignore[union-attr]
        assert tx.get_participant("org-b").certificate_sha256 == ""  # type: ignore[union-attr]


# -- jobs ------------------------------------------------------------------------------------------


def test_job_round_trip_keeps_spec_and_weight_specs(store: Store) -> None:
    job = make_job(failed_rounds=2, failure_reason="two rounds failed", model_version=5)
    with store.transaction() as tx:
        tx.add_job(job)
    with store.transaction() as tx:
        loaded = tx.get_job("job-1")
        assert tx.get_job("job-unknown") is None
    assert loaded == job
    assert loaded is not None
    assert loaded.spec.training == TrainingSettings(2, 16, 0.125, 42)
    assert loaded.weight_specs == WEIGHT_SPECS
    assert isinstance(loaded.weight_specs[2].shape, tuple)
    assert loaded.spec.protection is Protection.NONE


def test_duplicate_job_id_is_refused_and_first_kept(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job())
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_job(make_job(spec=make_spec("other")))
    with store.transaction() as tx:
        assert tx.get_job("job-1").spec.name == "digits"  # type: ignore[union-attr]
        assert len(tx.list_jobs()) == 1


def test_list_jobs_orders_by_creation_and_filters_by_state(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job("job-c", created_at=T0 + 1))
        tx.add_job(make_job("job-b", created_at=T0 + 2, state=JobState.RUNNING))
        tx.add_job(make_job("job-a", created_at=T0 + 1, state=JobState.FAILED))
    with store.transaction() as tx:
        assert [j.job_id for j in tx.list_jobs()] == ["job-a", "job-c", "job-b"]
        running = tx.list_jobs((JobState.RUNNING,))
        settled = tx.list_jobs((JobState.FAILED, JobState.CREATED))
        nothing = tx.list_jobs((JobState.COMPLETED,))
    assert [j.job_id for j in running] == ["job-b"]
    assert [j.job_id for j in settled] == ["job-a", "job-c"]
    assert nothing == []


def test_update_job_writes_mutable_fields(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job())
    changed = make_job(
        state=JobState.FAILED, model_version=3, failed_rounds=4, failure_reason="quorum lost"
    )
    with store.transaction() as tx:
        tx.update_job(changed)
    with store.transaction() as tx:
        assert tx.get_job("job-1") == changed
    with pytest.raises(StaleWrite), store.transaction() as tx:
        tx.update_job(make_job("job-missing"))


# -- rounds ----------------------------------------------------------------------------------------


def test_round_round_trip_keeps_cohort_and_contributors(store: Store) -> None:
    finished = make_round(
        phase=Phase.ABORTED,
        finished_at=T0 + 301.5,
        contributors=("org-b", "org-a"),
        total_weight=(1 << 40) + 7,
        train_loss_sum=12.375,
        accumulator_ref="a" * 64,
        result_ref="b" * 64,
        abort_reason="deadline passed with 1 of 3 required updates",
    )
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_round(finished)
        tx.add_round(make_round("round-2", number=2))
    with store.transaction() as tx:
        assert tx.get_round("round-1") == finished
        assert tx.get_round("round-2") == make_round("round-2", number=2)
        assert tx.get_round("round-unknown") is None


def test_round_number_is_unique_per_job(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_job(make_job("job-2"))
        tx.add_round(make_round("round-1", number=1))
        tx.add_round(make_round("round-x", job_id="job-2", number=1))  # other job: fine
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_round(make_round("round-2", number=1))
    with store.transaction() as tx:
        assert tx.get_round("round-2") is None


def test_round_of_unknown_job_is_refused(store: Store) -> None:
    # The foreign key must hold on every backend (SQLite only enforces it with the pragma).
    with pytest.raises(CoordinatorError), store.transaction() as tx:
        tx.add_round(make_round(job_id="job-missing"))
    with store.transaction() as tx:
        assert tx.get_round("round-1") is None


def test_list_rounds_orders_by_number(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_job(make_job("job-2"))
        for number in (3, 1, 2):
            tx.add_round(make_round(f"round-{number}", number=number))
        tx.add_round(make_round("other", job_id="job-2", number=1))
    with store.transaction() as tx:
        assert [r.round_id for r in tx.list_rounds("job-1")] == ["round-1", "round-2", "round-3"]
        assert tx.list_rounds("job-unknown") == []


def test_open_rounds_excludes_committed_and_aborted(store: Store) -> None:
    phases = {
        "r-created": Phase.CREATED,
        "r-inputs": Phase.INPUTS,
        "r-aggregated": Phase.AGGREGATED,
        "r-committed": Phase.COMMITTED,
        "r-aborted": Phase.ABORTED,
    }
    with store.transaction() as tx:
        tx.add_job(make_job())
        # Created in reverse order of insertion so the ordering comes from created_at.
        for index, (round_id, phase) in enumerate(phases.items()):
            tx.add_round(make_round(round_id, number=index + 1, phase=phase, created_at=T0 - index))
    with store.transaction() as tx:
        opened = tx.open_rounds()
    assert [r.round_id for r in opened] == ["r-aggregated", "r-inputs", "r-created"]


def test_update_round_compare_and_set(store: Store) -> None:
    original = make_round(row_version=3)
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_round(original)
    advanced = dataclasses.replace(
        original,
        phase=Phase.AGGREGATED,
        row_version=4,
        contributors=("org-a",),
        total_weight=10,
        result_ref="c" * 64,
    )
    with store.transaction() as tx:
        tx.update_round(advanced, expected_row_version=3)
    with store.transaction() as tx:
        assert tx.get_round("round-1") == advanced

    # A writer that still holds row_version 3 has lost the race: nothing it wrote may stick.
    stale = dataclasses.replace(original, phase=Phase.ABORTED, row_version=4, abort_reason="x")
    with pytest.raises(StaleWrite), store.transaction() as tx:
        tx.add_submission(make_submission())
        tx.update_round(stale, expected_row_version=3)
    with store.transaction() as tx:
        assert tx.get_round("round-1") == advanced
        assert tx.list_submissions("round-1") == []
    with pytest.raises(StaleWrite), store.transaction() as tx:
        tx.update_round(make_round("round-missing"), expected_row_version=3)


# -- submissions -----------------------------------------------------------------------------------


def _round_in_store(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_round(make_round())
        tx.add_round(make_round("round-2", number=2))


def test_submission_round_trip_and_order(store: Store) -> None:
    _round_in_store(store)
    subs = [
        make_submission("org-b", ack="ack-1"),
        make_submission("org-a", ack="ack-2"),
        make_submission("org-a", phase="keys", ack="ack-3"),  # another phase: allowed
        make_submission("org-a", round_id="round-2", ack="ack-4"),  # another round: allowed
    ]
    with store.transaction() as tx:
        for sub in subs:
            tx.add_submission(sub)
    with store.transaction() as tx:
        assert tx.get_submission("round-1", "org-a", "inputs") == subs[1]
        assert tx.get_submission("round-1", "org-a", "keys") == subs[2]
        assert tx.get_submission("round-1", "org-c", "inputs") is None
        assert tx.list_submissions("round-1") == subs[:3]  # insertion order
        assert tx.list_submissions("round-2") == subs[3:]
    assert isinstance(subs[1].content_sha256, bytes)


def test_second_submission_for_round_org_phase_is_refused(store: Store) -> None:
    _round_in_store(store)
    first = make_submission(ack="ack-1")
    with store.transaction() as tx:
        tx.add_submission(first)
    retry = dataclasses.replace(
        first, content_sha256=b"\xff" * 32, num_examples=1, acknowledgement_id="ack-2"
    )
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_submission(retry)
    with store.transaction() as tx:
        assert tx.list_submissions("round-1") == [first]


def test_acknowledgement_ids_are_unique(store: Store) -> None:
    _round_in_store(store)
    with store.transaction() as tx:
        tx.add_submission(make_submission("org-a", ack="ack-1"))
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_submission(make_submission("org-b", ack="ack-1"))
    assert count_rows(store, "submissions") == 1


# -- model versions and metrics --------------------------------------------------------------------


def test_model_version_round_trip_and_uniqueness(store: Store) -> None:
    v0 = ModelVersion("job-1", 0, "0" * 64, None, T0)
    v1 = ModelVersion("job-1", 1, "1" * 64, "round-1", T0 + 10, optimizer_state_ref="5" * 64)
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_model_version(v0)
        tx.add_model_version(v1)
    with store.transaction() as tx:
        assert tx.get_model_version("job-1", 0) == v0
        assert tx.get_model_version("job-1", 1) == v1
        assert tx.get_model_version("job-1", 2) is None
        # An optimizer state blob is in use while its model version points at it.
        assert tx.blob_in_use("5" * 64) and tx.blob_in_use("1" * 64)
        assert not tx.blob_in_use("6" * 64)
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_model_version(ModelVersion("job-1", 1, "2" * 64, "round-9", T0 + 20))
    with store.transaction() as tx:
        assert tx.get_model_version("job-1", 1) == v1


def test_jobs_awaiting_metric_are_those_whose_latest_version_the_org_has_not_evaluated(
    store: Store,
) -> None:
    running, completed = JobState.RUNNING, JobState.COMPLETED
    with store.transaction() as tx:
        tx.add_job(make_job("job-new", T0 + 1, state=running))  # version 0 only
        tx.add_job(make_job("job-run", T0 + 2, state=running, model_version=2))
        tx.add_job(make_job("job-done", T0 + 3, state=completed, model_version=3))
        tx.add_job(make_job("job-seen", T0 + 4, state=completed, model_version=1))
        tx.add_job(make_job("job-failed", T0 + 5, state=JobState.FAILED, model_version=1))
        tx.add_metric(MetricReport("job-run", 1, "org-a", 1, 0.5, 0.5, T0))  # an older version
        tx.add_metric(MetricReport("job-seen", 1, "org-a", 1, 0.5, 0.5, T0))
        tx.add_metric(MetricReport("job-done", 3, "org-b", 1, 0.5, 0.5, T0))  # another org
    with store.transaction() as tx:
        awaiting = tx.jobs_awaiting_metric("org-a", (running, completed))
        for_b = tx.jobs_awaiting_metric("org-b", (running, completed))
        only_running = tx.jobs_awaiting_metric("org-a", (running,))
    assert [j.job_id for j in awaiting] == ["job-run", "job-done"]
    assert [j.job_id for j in for_b] == ["job-run", "job-seen"]
    assert [j.job_id for j in only_running] == ["job-run"]


def test_metric_round_trip_order_and_uniqueness(store: Store) -> None:
    reports = [
        MetricReport("job-1", 2, "org-a", 10, 0.25, 0.5, T0),
        MetricReport("job-1", 1, "org-b", 20, 1.5, 0.75, T0 + 1),
        MetricReport("job-1", 1, "org-a", 30, 2.0, 1.0, T0 + 2),
    ]
    with store.transaction() as tx:
        tx.add_job(make_job())
        tx.add_job(make_job("job-2"))
        for report in reports:
            tx.add_metric(report)
        tx.add_metric(MetricReport("job-2", 1, "org-a", 1, 0.0, 0.0, T0))
    with store.transaction() as tx:
        assert tx.get_metric("job-1", 1, "org-b") == reports[1]
        assert tx.get_metric("job-1", 3, "org-b") is None
        assert tx.list_metrics("job-1") == [reports[2], reports[1], reports[0]]
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_metric(MetricReport("job-1", 1, "org-b", 99, 9.0, 0.0, T0 + 5))
    with store.transaction() as tx:
        assert tx.get_metric("job-1", 1, "org-b") == reports[1]


def test_delete_job_marks_it_keeps_round_bookkeeping_and_returns_its_blobs(store: Store) -> None:
    with store.transaction() as tx:
        for job_id, round_id, state_ref in (
            ("job-1", "round-1", "d" * 64),
            ("job-2", "round-2", "e" * 64),
        ):
            tx.add_job(make_job(job_id))
            tx.add_round(
                make_round(round_id, job_id, accumulator_ref="a" * 64, result_ref=job_id[-1] * 64)
            )
            tx.add_submission(make_submission(round_id=round_id, ack=f"ack-{job_id}"))
            tx.add_phase_message(PhaseMessage(round_id, "org-a", "keys", b"keys"))
            tx.add_job_message(JobMessage(job_id, "org-a", "job_key", b"k", b"pem", job_id, T0))
            tx.add_model_version(ModelVersion(job_id, 0, "0" * 64, None, T0))
            tx.add_model_version(
                ModelVersion(job_id, 1, "f" * 64, round_id, T0, optimizer_state_ref=state_ref)
            )
            tx.add_metric(MetricReport(job_id, 1, "org-a", 10, 0.5, 0.5, T0))
        tx.add_audit(T0, "admin", "job.create", "ok", "job=job-1")
    with store.transaction() as tx:
        refs = tx.delete_job("job-1")
    assert refs == {"a" * 64, "1" * 64, "0" * 64, "f" * 64, "d" * 64}
    with store.transaction() as tx:
        assert tx.get_job("job-1").state is JobState.DELETED  # type: ignore[union-attr]
        assert [j.job_id for j in tx.list_jobs((JobState.CREATED,))] == ["job-2"]
        # What counts past work stays, without its blobs; what the job stored goes.
        (kept,) = tx.list_rounds("job-1")
        assert (kept.accumulator_ref, kept.result_ref) == (None, None)
        assert kept.row_version == make_round().row_version + 1
        assert tx.list_submissions("round-1") == [make_submission(ack="ack-job-1")]
        assert tx.list_phase_messages("round-1") == []
        assert tx.list_job_messages("job-1") == [] and tx.list_metrics("job-1") == []
        assert tx.get_model_version("job-1", 0) is None
        # The other job is whole, so the blobs it shares are still in use.
        assert len(tx.list_submissions("round-2")) == 1 and len(tx.list_metrics("job-2")) == 1
        assert len(tx.list_phase_messages("round-2")) == 1
        assert tx.blob_in_use("0" * 64) and tx.blob_in_use("a" * 64)
        assert not tx.blob_in_use("1" * 64) and not tx.blob_in_use("d" * 64)
        assert [a["action"] for a in tx.list_audit()] == ["job.create"]
    with pytest.raises(StaleWrite), store.transaction() as tx:
        tx.delete_job("job-1")


# -- audit -----------------------------------------------------------------------------------------


def test_audit_round_trip_newest_first_with_limit(store: Store) -> None:
    with store.transaction() as tx:
        for index in range(5):
            tx.add_audit(T0 + index, f"org-{index}", "submission.conflict", "rejected", f"d{index}")
    with store.transaction() as tx:
        newest = tx.list_audit(limit=2)
        everything = tx.list_audit()
    assert [(r["actor"], r["detail"]) for r in newest] == [("org-4", "d4"), ("org-3", "d3")]
    assert len(everything) == 5
    oldest = everything[-1]
    assert (oldest["at"], oldest["action"], oldest["outcome"]) == (
        T0,
        "submission.conflict",
        "rejected",
    )


# -- transactions ----------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_a_transaction_that_raises_leaves_nothing_behind(store: Store) -> None:
    with pytest.raises(Boom), store.transaction() as tx:
        tx.add_participant(Participant("org-a", ParticipantStatus.ACTIVE, T0, T0))
        tx.add_job(make_job())
        tx.add_round(make_round())
        tx.add_submission(make_submission())
        tx.add_model_version(ModelVersion("job-1", 0, "0" * 64, None, T0))
        tx.add_audit(T0, "admin", "job.create", "ok", "job=job-1")
        raise Boom
    for table in ("participants", "jobs", "rounds", "submissions", "model_versions", "audit_log"):
        assert count_rows(store, table) == 0, table


def test_a_refused_insert_rolls_back_the_whole_transaction(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_job(make_job())
    with pytest.raises(DuplicateKey), store.transaction() as tx:
        tx.add_participant(Participant("org-a", ParticipantStatus.ACTIVE, T0, T0))
        tx.add_job(make_job())  # duplicate: the participant above must vanish too
    assert count_rows(store, "participants") == 0


def test_coordinator_errors_pass_through_unchanged(store: Store) -> None:
    class Refused(CoordinatorError):
        pass

    with pytest.raises(Refused), store.transaction() as tx:
        tx.add_job(make_job())
        raise Refused("a use case refused")
    assert count_rows(store, "jobs") == 0


# -- persistence and availability ------------------------------------------------------------------


def test_data_survives_reopening(open_store: Callable[[], Store]) -> None:
    first = open_store()
    with first.transaction() as tx:
        tx.add_job(make_job())
        tx.add_round(make_round())
    first.close()
    second = open_store()  # the schema check must accept the database it created
    with second.transaction() as tx:
        assert tx.get_job("job-1") == make_job()
        assert tx.get_round("round-1") == make_round()


def test_unknown_schema_revision_is_refused(open_store: Callable[[], Store]) -> None:
    first = open_store()
    with first.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    first.close()
    expected = f"schema revision 9999 is newer than this fedsilo, whose newest is {head_revision()}"
    with pytest.raises(StorageUnavailable, match=expected) as refused:
        open_store()
    _close_store_that_failed_to_open(refused)


def _close_store_that_failed_to_open(refused: pytest.ExceptionInfo[StorageUnavailable]) -> None:
    # Store.__init__ raises without disposing its engine, so the pooled connection it used for the
    # schema check stays open until garbage collection (psycopg then warns, and warnings are
    # errors here). Close it the way a caller cannot: through the half-built Store in the frame.
    for entry in refused.traceback:
        candidate = entry.frame.f_locals.get("self")
        if isinstance(candidate, Store):
            candidate.close()
            return
    raise AssertionError("the failed Store was not found in the traceback")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_unreachable_postgres_is_storage_unavailable_quickly() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/postgres?connect_timeout=2"
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="cannot open the database"):
        Store(url)
    assert time.monotonic() - started < 10


def test_unopenable_sqlite_file_is_storage_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable):
        Store(f"sqlite:///{tmp_path / 'missing-dir' / 'coordinator.db'}")


@pytest.mark.postgres
def test_postgres_store_recovers_after_its_connections_are_killed(
    fresh_postgres_url: str, postgres_url: str
) -> None:
    store = Store(fresh_postgres_url)
    try:
        with store.transaction() as tx:
            tx.add_job(make_job())
        database = fresh_postgres_url.rsplit("/", 1)[1]
        admin_dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()
        killed = row[0] if row else 0
        assert killed >= 1  # the store's pooled connection was really cut
        # The pool notices the dead connection and reconnects: no restart needed (R11).
        with store.transaction() as tx:
            assert tx.get_job("job-1") == make_job()
    finally:
        store.close()
