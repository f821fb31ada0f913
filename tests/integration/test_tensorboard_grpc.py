"""TensorBoard event files of a real job run over mTLS gRPC: every round, globally and per org."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job

from coordinator.observability.event_files import ScalarEvent, read_scalar_events
from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb

NUM_ROUNDS = 2
JOB_NAME = "shift job/tb"


@pytest.fixture
def tensorboard_dir(tmp_path: Path) -> Path:
    return tmp_path / "tensorboard"


@pytest.fixture
def coordinator(
    start_test_coordinator: Callable[..., RunningCoordinator], tensorboard_dir: Path
) -> RunningCoordinator:
    return start_test_coordinator(0, tensorboard_dir=tensorboard_dir)


def test_event_files_hold_every_round_of_the_job(
    coordinator: RunningCoordinator,
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    tensorboard_dir: Path,
) -> None:
    for org in ORGS:
        run_daemon(org, target)
    wait_for(lambda: len(admin.list_participants()) == len(ORGS), 20, "registration", interval=0.02)
    spec = shift_job_spec(num_rounds=NUM_ROUNDS, name=JOB_NAME)
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)
    # Completed, and every organization has evaluated the last model: its round is final.
    status = wait_for_job(
        admin,
        job_id,
        lambda s: (
            s.state == pb.JOB_STATE_COMPLETED
            and any(m.version == NUM_ROUNDS and m.reports == len(ORGS) for m in s.metrics)
        ),
        "the job to complete and its last model to be evaluated",
        40,
    )
    job_run = tensorboard_dir / f"shift_job_tb-{job_id}"

    def written() -> list[ScalarEvent] | None:
        events = read_scalar_events(job_run)
        return events if len(events) == NUM_ROUNDS else None

    events = wait_for(written, 20, "the event files of every round", interval=0.05)
    assert [e.step for e in events] == [r.number for r in status.rounds] == [1, 2]
    metrics = {m.version: m for m in status.metrics}
    for event, round_ in zip(events, status.rounds, strict=True):
        assert round_.phase == pb.ROUND_PHASE_COMMITTED
        values = event.values
        assert values["round/committed"] == 1.0
        assert values["round/contributors"] == len(ORGS)
        assert values["round/duration_seconds"] == pytest.approx(
            round_.finished_at - round_.started_at, rel=1e-5
        )
        assert values["training/loss"] == pytest.approx(round_.train_loss, rel=1e-5)
        evaluated = metrics[round_.base_version + 1]
        assert values["evaluation/reports"] == len(ORGS)
        assert values["evaluation/loss"] == pytest.approx(evaluated.loss, rel=1e-5)
        assert values["evaluation/accuracy"] == pytest.approx(evaluated.accuracy, rel=1e-5)
    for org in ORGS:
        org_events = read_scalar_events(job_run / "orgs" / org)
        assert [e.step for e in org_events] == [1, 2], org
        for event in org_events:
            assert set(event.values) == {
                "evaluation/loss",
                "evaluation/accuracy",
                "evaluation/examples",
            }
            assert event.values["evaluation/examples"] > 0
    assert sorted(p.name for p in tensorboard_dir.iterdir()) == [job_run.name]
