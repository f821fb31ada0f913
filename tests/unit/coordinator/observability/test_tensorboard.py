"""TensorBoard export: which rounds are final, the run layout, order, restarts and failing disks.

The event files are read back with the coordinator's own record reader here; the test marked
``tf`` reads them with TensorBoard's EventAccumulator, which loads TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.domain.jobs import Job, JobSpec, JobState, MetricReport
from coordinator.domain.rounds import Phase, Round
from coordinator.observability.event_files import (
    EVENT_FILE_MARKER,
    ScalarEvent,
    ScalarRun,
    read_scalar_events,
)
from coordinator.observability.tensorboard import (
    TensorBoardExporter,
    job_run_name,
    round_scalars,
    start_tensorboard_export,
)
from coordinator.persistence.store import Store
from fedsilo.codec import TensorSpec
from fedsilo.protection import Protection

T0 = 1_700_000_000.0
TIMEOUT_S = 60.0
JOB_ID = "0b7c6a52-2f44-4a4e-9c4e-3f1f0f1e2d3c"
ORGS = ("org-a", "org-b")


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_job(state: JobState = JobState.RUNNING, name: str = "digits") -> Job:
    spec = JobSpec(
        name=name,
        task_name="digits-linear",
        protection=Protection.NONE,
        num_rounds=5,
        round_timeout_seconds=TIMEOUT_S,
    )
    return Job(JOB_ID, spec, state, 0, (TensorSpec("float32", (2,)),), T0)


def make_round(number: int, phase: Phase, base_version: int, **changes: object) -> Round:
    round_ = Round(
        round_id=f"round-{number}",
        job_id=JOB_ID,
        number=number,
        protection=Protection.NONE,
        phase=phase,
        row_version=3,
        base_version=base_version,
        cohort=ORGS,
        deadline_at=T0 + 100 * number + TIMEOUT_S,
        created_at=T0 + 100 * number,
        finished_at=T0 + 100 * number + 7.5,
        contributors=ORGS if phase is Phase.COMMITTED else (),
        total_weight=40 if phase is Phase.COMMITTED else 0,
        train_loss_sum=20.0 if phase is Phase.COMMITTED else 0.0,
        abort_reason="too few updates" if phase is Phase.ABORTED else None,
    )
    return dataclasses.replace(round_, **changes)  # type: ignore[arg-type]


def report(version: int, org_id: str, examples: int, loss: float, accuracy: float) -> MetricReport:
    return MetricReport(JOB_ID, version, org_id, examples, loss, accuracy, T0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'coordinator.db'}")
    with store.transaction() as tx:
        tx.add_job(make_job())
    yield store
    store.close()


def scalars_by_step(directory: Path) -> dict[int, dict[str, float]]:
    events = read_scalar_events(directory)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"a step was written twice: {steps}"
    return {e.step: dict(e.values) for e in events}


# -- which rounds are final ------------------------------------------------------------------


def test_a_committed_round_waits_for_every_contributor_or_the_round_timeout() -> None:
    job = make_job()
    round_ = make_round(1, Phase.COMMITTED, 0)
    finished = round_.finished_at
    assert finished is not None
    one = [report(1, "org-a", 10, 0.5, 0.8)]
    assert round_scalars(job, round_, one, finished + 1) is None
    late = round_scalars(job, round_, one, finished + TIMEOUT_S)
    assert late is not None
    assert late.job["evaluation/reports"] == 1
    assert set(late.orgs) == {"org-a"}

    both = [*one, report(1, "org-b", 30, 0.1, 0.4), report(2, "org-b", 30, 9.0, 0.0)]
    final = round_scalars(job, round_, both, finished + 1)
    assert final is not None
    assert (final.step, final.wall_time) == (1, finished)
    assert final.job == {
        "round/duration_seconds": 7.5,
        "round/contributors": 2.0,
        "round/committed": 1.0,
        "training/loss": 0.5,
        # Weighted by examples (org-b's 30 against org-a's 10); version 2 is another round's.
        "evaluation/loss": pytest.approx((0.5 * 10 + 0.1 * 30) / 40),
        "evaluation/accuracy": pytest.approx((0.8 * 10 + 0.4 * 30) / 40),
        "evaluation/reports": 2.0,
    }
    assert final.orgs["org-b"] == {
        "evaluation/loss": 0.1,
        "evaluation/accuracy": 0.4,
        "evaluation/examples": 30.0,
    }


def test_an_aborted_round_is_final_at_once_and_an_open_one_never() -> None:
    job = make_job()
    aborted = round_scalars(job, make_round(2, Phase.ABORTED, 1), [], T0)
    assert aborted is not None
    assert aborted.job == {
        "round/duration_seconds": 7.5,
        "round/contributors": 0.0,
        "round/committed": 0.0,
    }
    assert aborted.orgs == {}
    open_round = make_round(3, Phase.INPUTS, 1, finished_at=None)
    assert round_scalars(job, open_round, [], T0 + 10_000) is None


def test_a_secure_round_has_no_training_loss() -> None:
    secure = make_round(1, Phase.COMMITTED, 0, total_weight=0, train_loss_sum=0.0)
    scalars = round_scalars(make_job(), secure, [], T0 + 10_000)
    assert scalars is not None
    assert "training/loss" not in scalars.job
    assert "evaluation/loss" not in scalars.job  # nobody reported


def test_the_job_run_name_is_one_safe_path_component() -> None:
    assert job_run_name(make_job()) == f"digits-{JOB_ID}"
    assert job_run_name(make_job(name="../x y/z")) == f"x_y_z-{JOB_ID}"
    assert job_run_name(make_job(name="..")) == f"job-{JOB_ID}"


# -- the exporter over a store ---------------------------------------------------------------


def test_final_rounds_are_written_in_order_to_the_job_run_and_each_org_run(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    exporter = TensorBoardExporter(store, out, clock)
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.COMMITTED, 0))
        tx.add_round(make_round(2, Phase.ABORTED, 1))
        tx.add_round(make_round(3, Phase.COMMITTED, 1))
        tx.add_metric(report(1, "org-a", 10, 0.5, 0.8))
        tx.add_metric(report(1, "org-b", 30, 0.1, 0.4))
        tx.add_metric(report(2, "org-a", 10, 0.3, 0.9))  # round 3's: org-b has not reported
    clock.now = T0 + 310
    assert exporter.export_pending() == 2

    job_run = out / f"digits-{JOB_ID}"
    written = scalars_by_step(job_run)
    assert sorted(written) == [1, 2]
    assert written[1]["evaluation/accuracy"] == pytest.approx(0.5)
    assert written[2]["round/committed"] == 0.0
    # TensorBoard scalars are 32-bit floats.
    assert scalars_by_step(job_run / "orgs" / "org-b") == {
        1: {
            "evaluation/loss": pytest.approx(0.1),
            "evaluation/accuracy": pytest.approx(0.4),
            "evaluation/examples": 30.0,
        }
    }
    assert sorted(scalars_by_step(job_run / "orgs" / "org-a")) == [1]
    assert exporter.export_pending() == 0  # nothing new is final

    with store.transaction() as tx:
        tx.add_metric(report(2, "org-b", 30, 0.2, 0.6))
    assert exporter.export_pending() == 1
    assert scalars_by_step(job_run)[3]["evaluation/accuracy"] == pytest.approx(
        (0.9 * 10 + 0.6 * 30) / 40
    )
    assert sorted(scalars_by_step(job_run / "orgs" / "org-b")) == [1, 3]
    [event_file] = [p for p in job_run.iterdir() if EVENT_FILE_MARKER in p.name]
    assert event_file.name.startswith("events.out.tfevents.")


def test_a_later_round_waits_for_an_earlier_one_still_collecting_reports(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.COMMITTED, 0))
        tx.add_round(make_round(2, Phase.ABORTED, 1))
        tx.add_metric(report(1, "org-a", 10, 0.5, 0.8))
    clock.now = T0 + 150  # org-b may still report its evaluation of round 1's model
    exporter = TensorBoardExporter(store, out, clock)
    assert exporter.export_pending() == 0
    assert not (out / f"digits-{JOB_ID}").exists()
    clock.now = T0 + 100 + 7.5 + TIMEOUT_S  # round 1's evaluation window has closed
    assert exporter.export_pending() == 2
    assert sorted(scalars_by_step(out / f"digits-{JOB_ID}")) == [1, 2]


def test_a_restarted_coordinator_writes_the_missed_rounds_and_no_step_twice(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.ABORTED, 0))
        tx.add_round(make_round(2, Phase.ABORTED, 0))
    clock.now = T0 + 300
    assert TensorBoardExporter(store, out, clock).export_pending() == 2

    with store.transaction() as tx:
        tx.add_round(make_round(3, Phase.COMMITTED, 0))
        tx.add_metric(report(1, "org-a", 10, 0.5, 0.8))
        tx.add_metric(report(1, "org-b", 10, 0.5, 0.8))
    restarted = TensorBoardExporter(store, out, clock)
    assert restarted.export_pending() == 1
    job_run = out / f"digits-{JOB_ID}"
    assert sorted(scalars_by_step(job_run)) == [1, 2, 3]
    assert len([p for p in job_run.iterdir() if EVENT_FILE_MARKER in p.name]) == 2

    # Died after the organizations' runs, before the job run's record of round 4.
    with store.transaction() as tx:
        tx.add_round(make_round(4, Phase.COMMITTED, 1))
        tx.add_metric(report(2, "org-a", 10, 0.2, 0.9))
        tx.add_metric(report(2, "org-b", 10, 0.2, 0.9))
    ScalarRun(job_run / "orgs" / "org-a").append([ScalarEvent(4, T0, {"evaluation/loss": 0.2})])
    assert TensorBoardExporter(store, out, clock).export_pending() == 1
    assert sorted(scalars_by_step(job_run)) == [1, 2, 3, 4]
    assert sorted(scalars_by_step(job_run / "orgs" / "org-a")) == [3, 4]
    assert sorted(scalars_by_step(job_run / "orgs" / "org-b")) == [3, 4]


def test_a_torn_last_record_is_skipped_and_its_round_written_again(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.ABORTED, 0))
        tx.add_round(make_round(2, Phase.ABORTED, 0))
    clock.now = T0 + 300
    exporter = TensorBoardExporter(store, out, clock)
    exporter.export_pending()
    job_run = out / f"digits-{JOB_ID}"
    [event_file] = list(job_run.iterdir())
    event_file.write_bytes(event_file.read_bytes()[:-5])
    assert sorted(scalars_by_step(job_run)) == [1]
    assert TensorBoardExporter(store, out, clock).export_pending() == 1
    assert sorted(scalars_by_step(job_run)) == [1, 2]


def test_an_unwritable_directory_is_logged_once_and_retried(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    out.write_text("a file where the directory should be")
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.ABORTED, 0))
    clock.now = T0 + 200
    exporter = TensorBoardExporter(store, out, clock)
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        assert exporter.export_pending() == 0
        assert exporter.export_pending() == 0
    warnings = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1
    assert getattr(warnings[0], "job") == JOB_ID

    out.unlink()
    assert exporter.export_pending() == 1
    assert sorted(scalars_by_step(out / f"digits-{JOB_ID}")) == [1]


def test_an_ended_job_is_not_read_again_once_written(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.ABORTED, 0))
        tx.update_job(make_job(JobState.FAILED))
    clock.now = T0 + 200
    exporter = TensorBoardExporter(store, out, clock)
    assert exporter.export_pending() == 1
    # A round added behind the ended job's back is not looked for: the job is done.
    with store.transaction() as tx:
        tx.add_round(make_round(2, Phase.ABORTED, 0))
    assert exporter.export_pending() == 0


class FlakyExporter(TensorBoardExporter):
    """Fails with a defect on its first pass, then counts its passes."""

    def __init__(self, store: Store, directory: Path) -> None:
        super().__init__(store, directory, FakeClock())
        self.passes = 0
        self.more_than_one = threading.Event()

    def export_pending(self) -> int:
        self.passes += 1
        if self.passes == 1:
            raise RuntimeError("defect")
        if self.passes > 2:
            self.more_than_one.set()
        return 0


def test_the_export_thread_survives_a_failing_pass_and_stops_when_asked(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = FlakyExporter(store, tmp_path / "tensorboard")
    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="coordinator"):
        thread = start_tensorboard_export(exporter, 0.01, stop)
        assert exporter.more_than_one.wait(10)
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert any("TensorBoard export failed" in r.getMessage() for r in caplog.records)


def test_writing_and_reading_events_never_imports_tensorflow(tmp_path: Path) -> None:
    probe = (
        "import sys, json, pathlib\n"
        "from coordinator.observability.event_files import ScalarEvent, ScalarRun, "
        "read_scalar_events\n"
        f"run = ScalarRun(pathlib.Path({str(tmp_path)!r}))\n"
        "run.append([ScalarEvent(1, 1.0, {'a': 2.0})])\n"
        "assert [e.step for e in read_scalar_events(run.directory)] == [1]\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tensorflow', 'keras'))))\n"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# -- TensorBoard's own reader ----------------------------------------------------------------


@pytest.mark.tf
def test_tensorboard_reads_the_job_run_and_the_org_runs(store: Store, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    clock = FakeClock()
    out = tmp_path / "tensorboard"
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.COMMITTED, 0))
        tx.add_round(make_round(2, Phase.ABORTED, 1))
        tx.add_metric(report(1, "org-a", 10, 0.5, 0.8))
        tx.add_metric(report(1, "org-b", 30, 0.1, 0.4))
    clock.now = T0 + 300
    assert TensorBoardExporter(store, out, clock).export_pending() == 2

    # What ``tensorboard --logdir out`` loads: one run per directory holding event files.
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(out))
    multiplexer.Reload()
    job = f"digits-{JOB_ID}"
    assert set(multiplexer.Runs()) == {job, f"{job}/orgs/org-a", f"{job}/orgs/org-b"}
    duration = multiplexer.Scalars(job, "round/duration_seconds")
    assert [(e.step, e.value, e.wall_time) for e in duration] == [
        (1, 7.5, T0 + 107.5),
        (2, 7.5, T0 + 207.5),
    ]
    [accuracy] = multiplexer.Scalars(job, "evaluation/accuracy")
    assert (accuracy.step, accuracy.value) == (1, pytest.approx(0.5))
    [org_b] = multiplexer.Scalars(f"{job}/orgs/org-b", "evaluation/accuracy")
    assert (org_b.step, org_b.value) == (1, pytest.approx(0.4))
    committed = multiplexer.Scalars(job, "round/committed")
    assert [e.value for e in committed] == [1.0, 0.0]


def test_a_deleted_jobs_run_is_removed_on_the_next_pass_and_other_jobs_stay(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    out = tmp_path / "tensorboard"
    other = out / "other-job"
    ScalarRun(other).append([ScalarEvent(1, T0, {"round/committed": 1.0})])
    with store.transaction() as tx:
        tx.add_round(make_round(1, Phase.ABORTED, 0))
    clock.now = T0 + 300
    exporter = TensorBoardExporter(store, out, clock)
    assert exporter.export_pending() == 1
    job_run = out / f"digits-{JOB_ID}"
    assert job_run.is_dir()

    with store.transaction() as tx:
        tx.update_job(make_job(JobState.ABORTED))
        tx.delete_job(JOB_ID)
    assert exporter.export_pending() == 0
    assert not job_run.exists()
    assert sorted(scalars_by_step(other)) == [1]
    # A coordinator that was down when the job was deleted removes the run at its start.
    ScalarRun(job_run).append([ScalarEvent(1, T0, {"round/committed": 0.0})])
    assert TensorBoardExporter(store, out, clock).export_pending() == 0
    assert not job_run.exists()
