"""Coordinator and three organizations as real processes: a job completes, crashes and SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fedsilo.cli.daemons import wait_for
from fedsilo.tasks import as_float32, load_task
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.system


def _create_job(consortium, rounds: int) -> str:  # type: ignore[no-untyped-def]
    task = load_task("digits-linear", {"digits-linear": "examples.synthetic.task:task"})
    spec = pb.JobSpec(
        name="linear",
        task_name="digits-linear",
        protection=pb.PROTECTION_NONE,
        num_rounds=rounds,
        min_participants=3,
        round_timeout_seconds=120,
        training=pb.TrainingSettings(local_epochs=2, batch_size=32, learning_rate=0.1, seed=3),
    )
    with consortium.admin() as admin:
        wait_for(lambda: len(admin.list_participants()) == 3, 60, "three organizations")
        job = admin.create_job(spec, as_float32(task.initial_weights(3)))
        admin.start_job(job.job_id)
    return job.job_id


def _job_status(consortium, job_id: str) -> pb.JobStatus:  # type: ignore[no-untyped-def]
    with consortium.admin() as admin:
        return admin.get_job(job_id)


def test_three_organizations_complete_a_job(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    for org in consortium.orgs:
        consortium.start_participant(org)
    job_id = _create_job(consortium, rounds=3)

    def finished() -> pb.JobStatus | None:
        status = _job_status(consortium, job_id)
        metrics = {m.version: m for m in status.metrics}
        done = status.state == pb.JOB_STATE_COMPLETED and metrics.get(3) and metrics[3].reports == 3
        return status if done else None

    status = wait_for(finished, 120, "the job to complete")
    assert status.model_version == 3
    assert [r.phase for r in status.rounds] == [pb.ROUND_PHASE_COMMITTED] * 3
    assert all(sorted(r.contributors) == consortium.orgs for r in status.rounds)
    accuracy = {m.version: m.accuracy for m in status.metrics}
    assert accuracy[3] > 0.8
    assert accuracy[3] > accuracy[1]


def test_coordinator_killed_mid_job_resumes_from_the_database(consortium) -> None:  # type: ignore[no-untyped-def]
    coordinator = consortium.start_coordinator()
    for org in consortium.orgs:
        consortium.start_participant(org)
    job_id = _create_job(consortium, rounds=4)
    wait_for(lambda: _job_status(consortium, job_id).model_version >= 1, 120, "round 1 to commit")

    coordinator.popen.send_signal(signal.SIGKILL)
    coordinator.popen.wait(timeout=10)
    consortium.start_coordinator()  # same command, same database, same port

    def completed() -> pb.JobStatus | None:
        status = _job_status(consortium, job_id)
        return status if status.state == pb.JOB_STATE_COMPLETED else None

    status = wait_for(completed, 180, "the job to complete after the restart")
    assert status.model_version == 4
    committed = [r for r in status.rounds if r.phase == pb.ROUND_PHASE_COMMITTED]
    assert len(committed) == 4
    assert [r.base_version for r in committed] == [0, 1, 2, 3]

    engine = create_engine(f"sqlite:///{consortium.root / 'coordinator' / 'coordinator.db'}")
    with engine.connect() as conn:
        per_round = conn.execute(
            text("SELECT round_id, org_id, phase, COUNT(*) FROM submissions GROUP BY 1, 2, 3")
        ).all()
        versions = conn.execute(text("SELECT version FROM model_versions ORDER BY 1")).scalars()
        assert list(versions) == [0, 1, 2, 3, 4]
    engine.dispose()
    assert per_round and all(count == 1 for *_, count in per_round)


def test_sigterm_stops_coordinator_and_participant_cleanly(consortium) -> None:  # type: ignore[no-untyped-def]
    coordinator = consortium.start_coordinator()
    participant = consortium.start_participant("org-1")
    with consortium.admin() as admin:
        wait_for(lambda: len(admin.list_participants()) == 1, 60, "the organization to connect")
    participant.popen.send_signal(signal.SIGTERM)
    assert participant.popen.wait(timeout=15) == 0
    coordinator.popen.send_signal(signal.SIGTERM)
    assert coordinator.popen.wait(timeout=15) == 0
    assert "coordinator stopped" in Path(coordinator.log_path).read_text()


def _handshake(consortium, maximum: ssl.TLSVersion) -> str:  # type: ignore[no-untyped-def]
    files = consortium.pki.participants["org-1"]
    context = ssl.create_default_context(cafile=str(consortium.pki.ca_cert))
    context.load_cert_chain(str(files.cert_path), str(files.key_path))
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", consortium.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return str(tls.version())


def test_coordinator_speaks_tls_13_only(consortium) -> None:  # type: ignore[no-untyped-def]
    consortium.start_coordinator()
    assert _handshake(consortium, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        _handshake(consortium, ssl.TLSVersion.TLSv1_2)


def test_demo_with_numpy_task_writes_its_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "fedsilo",
            "demo",
            "--task",
            "digits-linear",
            "--rounds",
            "3",
            "--summary-json",
            str(summary),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(summary.read_text())
    assert set(data) == {
        "rounds",
        "participants",
        "protection",
        "final_accuracy",
        "central_accuracy",
    }
    assert (data["rounds"], data["participants"], data["protection"]) == (3, 3, "secagg")
    assert 0.8 < data["final_accuracy"] <= 1.0
    assert "round" in result.stdout and "central" in result.stdout
