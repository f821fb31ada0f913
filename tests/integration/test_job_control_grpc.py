"""Pause, resume, abort and delete of a job over the admin API, real mutual TLS and daemons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
from inproc_consortium import (
    ORGS,
    RPC_TIMEOUT_S,
    ConsortiumPki,
    DaemonThread,
    initial_weights,
    rpc_error,
    shift_job_spec,
    target_of,
    wait_for_job,
)

from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

_ENDED = (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)


def _actions(admin: AdminClient) -> list[str]:
    return [e.action for e in admin.audit_events(100)]


def test_a_bad_transition_is_failed_precondition_and_changes_nothing(
    coordinator: RunningCoordinator, admin: AdminClient
) -> None:
    job_id = admin.create_job(shift_job_spec(), initial_weights()).job_id
    for call in (admin.pause_job, admin.resume_job, admin.delete_job):
        error = rpc_error(lambda call=call: call(job_id))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "job is created" in (error.details() or "")
    assert admin.get_job(job_id).state == pb.JOB_STATE_CREATED
    assert not {"job.pause", "job.resume", "job.delete"} & set(_actions(admin))


def test_a_paused_job_opens_no_round_until_resumed_then_finishes(
    coordinator: RunningCoordinator,
    target: str,
    admin: AdminClient,
    run_daemon: Callable[..., DaemonThread],
) -> None:
    for org in ORGS:
        run_daemon(org, target)
    job_id = admin.create_job(shift_job_spec(num_rounds=2), initial_weights()).job_id
    admin.start_job(job_id)
    wait_for_job(admin, job_id, lambda s: len(s.rounds) == 1, "the first round to open")
    assert admin.pause_job(job_id).state == pb.JOB_STATE_PAUSED
    # The open round is not interrupted: it ends (committed) while the job is paused.
    status = wait_for_job(
        admin,
        job_id,
        lambda s: all(r.phase in _ENDED for r in s.rounds),
        "the open round to end",
    )
    assert status.state == pb.JOB_STATE_PAUSED
    assert [r.phase for r in status.rounds] == [pb.ROUND_PHASE_COMMITTED]
    # The driver ticks every 0.05 s; force one more so a paused job would have opened round 2.
    coordinator.service.driver.tick()
    status = admin.get_job(job_id)
    assert len(status.rounds) == 1
    assert status.waiting_reason == "paused by admin (fedsilo job resume)"
    assert admin.resume_job(job_id).state in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_COMPLETED)
    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to finish"
    )
    assert status.model_version == 2
    assert {"job.pause", "job.resume"} <= set(_actions(admin))


def test_abort_ends_the_open_round_and_the_job_for_good(
    coordinator: RunningCoordinator,
    admin: AdminClient,
    participant_stub: Callable[[str], pb_grpc.ParticipantServiceStub],
) -> None:
    # Two raw organizations are live (one call each) but never train: the round they are the
    # cohort of stays open until its 60 s deadline, so it is certainly open when abort arrives.
    for org in ("org-a", "org-b"):
        participant_stub(org).GetTask(pb.GetTaskRequest(), timeout=RPC_TIMEOUT_S)
    job_id = admin.create_job(shift_job_spec(min_participants=2), initial_weights()).job_id
    admin.start_job(job_id)
    status = wait_for_job(admin, job_id, lambda s: len(s.rounds) == 1, "a round to open")
    assert status.rounds[0].phase not in _ENDED
    status = admin.abort_job(job_id)
    assert status.state == pb.JOB_STATE_ABORTED
    assert [(r.phase, r.abort_reason) for r in status.rounds] == [
        (pb.ROUND_PHASE_ABORTED, "job aborted by admin")
    ]
    for call in (admin.resume_job, admin.pause_job, admin.abort_job, admin.start_job):
        error = rpc_error(lambda call=call: call(job_id))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    coordinator.service.driver.tick()
    status = admin.get_job(job_id)
    assert status.state == pb.JOB_STATE_ABORTED and len(status.rounds) == 1
    assert _actions(admin).count("job.abort") == 1

    # An aborted job can be deleted, once; the audit log keeps its entries.
    deleted = admin.delete_job(job_id)
    assert (deleted.job_id, deleted.name) == (job_id, status.spec.name)
    assert deleted.blobs_removed >= 1  # version 0; the aborted round's running sum went earlier
    for call in (admin.get_job, admin.delete_job):
        error = rpc_error(lambda call=call: call(job_id))  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert [j.job_id for j in admin.list_jobs()] == []
    assert {"job.create", "job.start", "job.abort", "job.delete"} <= set(_actions(admin))


def test_paused_and_aborted_survive_a_coordinator_restart(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: ConsortiumPki,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "restarted"

    def admin_of(running: RunningCoordinator) -> AdminClient:
        return AdminClient(target_of(running.port), pki.admin_tls(), timeout=RPC_TIMEOUT_S)

    first = start_test_coordinator(data_dir=data_dir)
    with admin_of(first) as admin:
        paused = admin.create_job(shift_job_spec(), initial_weights()).job_id
        aborted = admin.create_job(shift_job_spec(), initial_weights()).job_id
        admin.start_job(paused)
        admin.pause_job(paused)
        admin.abort_job(aborted)
    first.stop(grace=1)

    second = start_test_coordinator(data_dir=data_dir)
    with admin_of(second) as admin:
        assert admin.get_job(paused).state == pb.JOB_STATE_PAUSED
        assert admin.get_job(aborted).state == pb.JOB_STATE_ABORTED
        assert admin.resume_job(paused).state == pb.JOB_STATE_RUNNING
        error = rpc_error(lambda: admin.resume_job(aborted))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
