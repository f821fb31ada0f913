"""Why a job waits, as the admin API reports it over real mutual TLS."""

from __future__ import annotations

from collections.abc import Callable

from inproc_consortium import DaemonThread, initial_weights, shift_job_spec, wait_for_job

from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.v1 import fedsilo_pb2 as pb


def test_a_job_short_of_live_organizations_names_who_is_active(
    coordinator: RunningCoordinator,
    target: str,
    admin: AdminClient,
    run_daemon: Callable[..., DaemonThread],
) -> None:
    job_id = admin.create_job(shift_job_spec(min_participants=3), initial_weights()).job_id
    assert "not started" in admin.get_job(job_id).waiting_reason

    run_daemon("org-a", target)
    run_daemon("org-b", target)
    admin.start_job(job_id)
    expected = "needs 3 live organizations, 2 active: org-a, org-b"
    status = wait_for_job(
        admin, job_id, lambda s: s.waiting_reason == expected, "the two-organization reason"
    )
    # Two of three organizations: no round may open, and the reason says who is missing.
    assert status.state == pb.JOB_STATE_RUNNING
    assert list(status.rounds) == []
    assert [j.waiting_reason for j in admin.list_jobs() if j.job_id == job_id] == [expected]


def test_a_running_round_has_no_waiting_reason_and_a_finished_job_none_either(
    coordinator: RunningCoordinator,
    target: str,
    admin: AdminClient,
    run_daemon: Callable[..., DaemonThread],
) -> None:
    for org in ("org-a", "org-b", "org-c"):
        run_daemon(org, target)
    job_id = admin.create_job(shift_job_spec(min_participants=3), initial_weights()).job_id
    admin.start_job(job_id)
    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to complete"
    )
    assert status.waiting_reason == ""
