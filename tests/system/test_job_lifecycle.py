"""A job's life under admin control over real processes: pause, resume, abort, delete, restarts.

The coordinator and three organizations run as OS processes, the admin uses the ``fedsilo`` CLI,
and ``job watch`` runs through both coordinator restarts. Pause and abort are written to the
database: a restarted coordinator whose organizations are all live again opens no round for a
paused or an aborted job.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from sqlalchemy import create_engine, text

from fedsilo.cli.daemons import Process, fedsilo_command, wait_for
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.system

_ENDED = (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)


def _admin_env(consortium) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "FEDSILO_ADMIN_COORDINATOR": consortium.target,
        "FEDSILO_ADMIN_CA_CERT": str(consortium.pki.ca_cert),
        "FEDSILO_ADMIN_CERT": str(consortium.pki.admin_cert),
        "FEDSILO_ADMIN_KEY": str(consortium.pki.admin_key),
        "COLUMNS": "200",
    }


def _fedsilo(consortium, *args: str, expect: int = 0) -> str:  # type: ignore[no-untyped-def]
    result = subprocess.run(  # noqa: S603
        fedsilo_command(*args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **_admin_env(consortium)},
        check=False,
    )
    assert result.returncode == expect, result.stdout + result.stderr
    return result.stdout


def _status(consortium, job_id: str) -> pb.JobStatus:  # type: ignore[no-untyped-def]
    with consortium.admin() as admin:
        return admin.get_job(job_id)


def _restart_coordinator(consortium, watch: Process | None = None) -> float:  # type: ignore[no-untyped-def]
    """Stop the coordinator, let a running watch notice, start it again; when it served."""
    consortium.processes["coordinator"].stop()
    if watch is not None:
        wait_for(
            lambda: "coordinator unreachable" in watch.log_path.read_text(),
            30,
            "job watch to notice the coordinator is gone",
        )
    consortium.start_coordinator()  # same configuration, database and port
    return time.time()


def _all_live_since(consortium, moment: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until every organization called the coordinator after ``moment`` (it is live)."""

    def live() -> bool:
        with consortium.admin() as admin:
            seen = {p.org_id: p.last_seen for p in admin.list_participants()}
        return all(seen.get(org, 0.0) > moment for org in consortium.orgs)

    wait_for(live, 60, "every organization to call the restarted coordinator")


def _blob_refs(consortium, job_id: str) -> set[str]:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{consortium.root / 'coordinator' / 'coordinator.db'}")
    try:
        with engine.connect() as conn:
            refs = conn.execute(
                text("SELECT blob_ref FROM model_versions WHERE job_id = :job"), {"job": job_id}
            ).scalars()
            return set(refs)
    finally:
        engine.dispose()


def test_pause_abort_and_delete_hold_across_coordinator_restarts(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    for org in consortium.orgs:
        consortium.start_participant(org)
    # More rounds than the test lets run: the job is still running when it is aborted.
    created = _fedsilo(
        consortium,
        "job",
        "create",
        "--task",
        "digits-linear",
        "--protection",
        "none",
        "--rounds",
        "100",
        "--min-participants",
        "3",
        "--epochs",
        "1",
        "--start",
        "--json",
    )
    job_id = json.loads(created)["job_id"]
    watch = Process(
        "watch",
        fedsilo_command("job", "watch", job_id),
        consortium.root / "watch.log",
        _admin_env(consortium),
    )
    try:
        wait_for(lambda: _status(consortium, job_id).rounds, 60, "the first round to open")
        paused = json.loads(_fedsilo(consortium, "job", "pause", job_id, "--json"))
        assert paused["state"] == "paused"
        # A running job cannot be deleted: the admin is told to abort it first.
        refused = _fedsilo(consortium, "job", "delete", job_id, expect=1)
        assert "FAILED_PRECONDITION" in refused and "abort first" in refused

        # The round open at the pause goes on to its end; then nothing opens.
        def open_round_ended() -> pb.JobStatus | None:
            status = _status(consortium, job_id)
            return status if all(r.phase in _ENDED for r in status.rounds) else None

        rounds_at_pause = len(wait_for(open_round_ended, 60, "the open round to end").rounds)

        served = _restart_coordinator(consortium, watch)
        _all_live_since(consortium, served + 1.0)  # the driver ticks every 0.1 s meanwhile
        status = _status(consortium, job_id)
        assert status.state == pb.JOB_STATE_PAUSED
        assert len(status.rounds) == rounds_at_pause
        assert status.waiting_reason == "paused by admin (fedsilo job resume)"

        resumed = json.loads(_fedsilo(consortium, "job", "resume", job_id, "--json"))
        assert resumed["state"] == "running"
        version = status.model_version
        wait_for(
            lambda: _status(consortium, job_id).model_version > version,
            60,
            "a round to commit after resuming",
        )
        aborted = json.loads(_fedsilo(consortium, "job", "abort", job_id, "--json"))
        assert aborted["state"] == "aborted"
        assert all(r["phase"] in ("committed", "aborted") for r in aborted["rounds"])
        assert watch.popen.wait(timeout=60) == 1  # the watch ends with the job
    finally:
        watch.stop()
    watched = watch.log_path.read_text()
    assert "coordinator reachable again" in watched
    assert f"job aborted at model version {aborted['model_version']}" in watched

    served = _restart_coordinator(consortium)
    _all_live_since(consortium, served + 1.0)
    status = _status(consortium, job_id)
    assert status.state == pb.JOB_STATE_ABORTED
    assert len(status.rounds) == len(aborted["rounds"])
    assert all(r.phase in _ENDED for r in status.rounds)

    blobs = consortium.root / "coordinator" / "blobs"
    refs = _blob_refs(consortium, job_id)
    assert refs and all((blobs / ref[:2] / ref).is_file() for ref in refs)
    deleted = _fedsilo(consortium, "job", "delete", job_id)
    assert f"deleted job {job_id}" in deleted
    assert not any((blobs / ref[:2] / ref).exists() for ref in refs)
    assert _blob_refs(consortium, job_id) == set()
    assert json.loads(_fedsilo(consortium, "job", "list", "--json")) == []
    assert "NOT_FOUND" in _fedsilo(consortium, "job", "status", job_id, expect=1)
    events = json.loads(_fedsilo(consortium, "audit", "list", "--json"))
    mine = [e["action"] for e in reversed(events) if f"job={job_id}" in e["detail"]]
    # Version 0 is committed (job.initial_weights) once the organizations built it alike.
    assert mine == [
        "job.create",
        "job.start",
        "job.initial_weights",
        "job.pause",
        "job.resume",
        "job.abort",
        "job.delete",
    ]
