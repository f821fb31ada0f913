"""Network faults between real processes in network namespaces (docs/fault-matrix.md R6, R13-R15).

A partition is an organization's link set down at an exact moment of the protocol: its daemon
pauses with its masked input saved and not yet sent (``FEDSILO_PAUSE_AT``), the test cuts the
link, and lets it go. Every organization trains ``digits-linear`` (R13, R14) or a large
``wide`` model (R15); the committed model is checked against FedAvg over exactly the recorded
contributors. Traffic stays between the namespaces the test creates; nothing sleeps to wait.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from netns import NetConsortium
from secure_jobs import BASE, BOUND, LINEAR_TASK, expected_model, secure_spec
from wide_task import EXAMPLES, TASK_SPEC

from fedsilo.faults import PAUSE_ENV_VAR, PAUSE_FILE_ENV_VAR
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = [pytest.mark.system, pytest.mark.netns]

ORGS = ["org-1", "org-2", "org-3"]
CUT = "org-3"
DEADLINE_S = 120.0
T = TypeVar("T")


def poll(condition: Callable[[], T], what: str, timeout: float = DEADLINE_S) -> T:
    """Poll ``condition`` until it returns a truthy value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


@pytest.fixture
def make_consortium(tmp_path: Path) -> Iterator[Callable[..., NetConsortium]]:
    made: list[NetConsortium] = []

    def make(task_spec: dict[str, str], configs: dict[str, dict[str, object]]) -> NetConsortium:
        # Calls in flight over a cut link fail fast, then retry with backoff.
        settings = {"rpc_timeout_seconds": 3}
        group = NetConsortium(tmp_path, ORGS, task_spec, configs, settings)
        made.append(group)
        group.create_network()
        return group

    yield make
    for group in made:
        try:
            group.stop_all()
        finally:
            group.delete_network()


def digits_consortium(make: Callable[..., NetConsortium]) -> NetConsortium:
    configs = {org: {"partition": i, "num_partitions": len(ORGS)} for i, org in enumerate(ORGS)}
    return make(LINEAR_TASK, configs)


def start_with_a_paused_input(
    group: NetConsortium, spec: pb.JobSpec, limits: dict[str, object] | None = None
) -> tuple[str, Path]:
    """Start the consortium and the job; CUT pauses with its masked input saved, unsent."""
    pause_file = group.root / "paused"
    group.start_coordinator({"limits": limits} if limits else None)
    for org in ORGS:
        env = {PAUSE_ENV_VAR: "participant.secagg.before_inputs"} if org == CUT else {}
        if env:
            env[PAUSE_FILE_ENV_VAR] = str(pause_file)
        group.start_participant(org, env)
    job_id = group.create_job(spec, BASE)
    poll(pause_file.exists, f"{CUT} to reach its pause point")
    return job_id, pause_file


def input_submissions(group: NetConsortium, round_id: str, org: str) -> int:
    database = group.root / "coordinator" / "coordinator.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM submissions WHERE round_id = ? AND org_id = ? AND phase = ?",
            (round_id, org, "inputs"),
        ).fetchone()
    return int(count)


def log_of(group: NetConsortium, org: str) -> str:
    return group.processes[org].log_path.read_text()


def first_round_ended(group: NetConsortium, job_id: str) -> pb.RoundStatus | None:
    status = group.status(job_id)
    ended = (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED)
    if status.rounds and status.rounds[0].phase in ended:
        return status.rounds[0]
    return None


def wide_spec() -> pb.JobSpec:
    """One plain round of the ``wide`` task."""
    return pb.JobSpec(
        name="wide",
        task_name="wide",
        protection=pb.PROTECTION_NONE,
        num_rounds=1,
        min_participants=3,
        round_timeout_seconds=300.0,
        max_failed_rounds=0,
        training=pb.TrainingSettings(local_epochs=1, batch_size=1, learning_rate=0.1, seed=1),
    )


def assert_version_1_is_fedavg_of(group: NetConsortium, job_id: str, orgs: list[str]) -> None:
    version, weights = group.model(job_id, 1)
    assert version == 1
    for got, want in zip(weights, expected_model(ORGS, orgs), strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= BOUND


def test_r13_an_organization_cut_off_during_inputs_drops_out_and_rejoins_later(
    make_consortium: Callable[..., NetConsortium],
) -> None:
    group = digits_consortium(make_consortium)
    spec = secure_spec(
        pb.PROTECTION_SECAGG, min_participants=2, phase_timeout=8.0, round_timeout=20.0
    )
    # The healed organization stays in the cohort of the next rounds (it was seen recently);
    # it may still be reconnecting during round 2, so round 3 is there for it to join.
    spec.num_rounds = 3
    job_id, pause_file = start_with_a_paused_input(group, spec, {"liveness_seconds": 600})

    group.partition(CUT)
    pause_file.unlink()  # its masked input now goes out into a dead link

    first = poll(lambda: first_round_ended(group, job_id), "round 1 to end")
    group.heal(CUT)
    assert first.phase == pb.ROUND_PHASE_COMMITTED, first.abort_reason
    assert CUT in first.cohort
    assert sorted(first.contributors) == ["org-1", "org-2"]  # a dropout at the INPUTS deadline

    # Its stale masked input for round 1 is refused once it gets through, and stays unstored.
    poll(lambda: "coordinator refused" in log_of(group, CUT), f"{CUT}'s stale input refused")
    status = poll(
        lambda: (s := group.status(job_id)).state != pb.JOB_STATE_RUNNING and s, "the job to end"
    )
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    assert input_submissions(group, first.round_id, CUT) == 0
    assert_version_1_is_fedavg_of(group, job_id, ["org-1", "org-2"])
    later = [r for r in status.rounds[1:] if r.phase == pb.ROUND_PHASE_COMMITTED]
    assert any(CUT in r.contributors for r in later), [list(r.contributors) for r in later]


def test_r14_a_partition_that_heals_before_the_deadline_stores_one_submission(
    make_consortium: Callable[..., NetConsortium],
) -> None:
    group = digits_consortium(make_consortium)
    spec = secure_spec(pb.PROTECTION_SECAGG, min_participants=3, phase_timeout=45.0)
    job_id, pause_file = start_with_a_paused_input(group, spec)

    group.partition(CUT)
    pause_file.unlink()
    # The send over the dead link fails (deadline exceeded) and the daemon backs off ...
    poll(lambda: "retrying in" in log_of(group, CUT), f"{CUT} to fail a call and back off")
    group.heal(CUT)  # ... and gets through once the link is back, before the INPUTS deadline.

    status = poll(
        lambda: (s := group.status(job_id)).state != pb.JOB_STATE_RUNNING and s, "the job to end"
    )
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (only,) = status.rounds
    assert sorted(only.contributors) == ORGS
    assert input_submissions(group, only.round_id, CUT) == 1
    assert_version_1_is_fedavg_of(group, job_id, ORGS)


def test_r15_a_bandwidth_limited_link_still_completes_a_large_model_round(
    make_consortium: Callable[..., NetConsortium],
) -> None:
    size = 2_000_000  # float32 weights: an 8 MB model, each way
    offsets = {"org-1": 1.0, "org-2": 2.0, "org-3": -0.5}
    group = make_consortium(TASK_SPEC, {org: {"offset": offsets[org]} for org in ORGS})
    rate_mbit = 16
    group.limit_bandwidth(CUT, f"{rate_mbit}mbit")
    group.start_coordinator({"limits": {"liveness_seconds": 600}})
    for org in ORGS:
        group.start_participant(org)
    base = [np.linspace(-1.0, 1.0, size, dtype=np.float32)]
    started = time.monotonic()
    job_id = group.create_job(wide_spec(), base)
    status = poll(
        lambda: (s := group.status(job_id)).state != pb.JOB_STATE_RUNNING and s, "the job to end"
    )
    elapsed = time.monotonic() - started
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    assert sorted(status.rounds[0].contributors) == ORGS

    # The limit was in force: the cut organization's download and upload of the model alone
    # take this long at the shaped rate (a lower bound, whatever the machine's load).
    model_bits = size * 4 * 8
    assert elapsed >= 2 * model_bits / (rate_mbit * 1e6) * 0.9
    version, (weights,) = group.model(job_id, 1)
    assert version == 1
    shift = sum(offsets.values()) * EXAMPLES / (EXAMPLES * len(ORGS))
    np.testing.assert_allclose(weights, base[0] + np.float32(shift), atol=1e-6)


def test_r6_sigterm_mid_upload_reports_not_serving_finishes_the_upload_and_resumes(
    make_consortium: Callable[..., NetConsortium],
) -> None:
    size = 2_000_000  # an 8 MB model: its upload over the shaped link takes seconds
    model_bytes = size * 4
    offsets = {"org-1": 1.0, "org-2": 2.0, "org-3": -0.5}
    group = make_consortium(TASK_SPEC, {org: {"offset": offsets[org]} for org in ORGS})
    group.limit_bandwidth(CUT, "16mbit")
    settings = {"grace_seconds": 60, "limits": {"liveness_seconds": 600}}
    coordinator = group.start_coordinator(settings)
    health = group.root / "health.txt"
    watcher = group.watch_health(health)
    try:
        poll(lambda: health.exists() and "SERVING" in health.read_text(), "a health watch")
        for org in ORGS:
            group.start_participant(org)
        base = [np.linspace(-1.0, 1.0, size, dtype=np.float32)]
        job_id = group.create_job(wide_spec(), base)

        # CUT has trained and its upload is under way: a quarter of the model is on the wire.
        poll(lambda: "trained on" in log_of(group, CUT), f"{CUT} to train")
        sent_before = group.sent_bytes(CUT)
        poll(
            lambda: group.sent_bytes(CUT) - sent_before > model_bytes // 4,
            f"{CUT}'s upload to be under way",
        )
        assert "update acknowledged" not in log_of(group, CUT)
        coordinator.popen.send_signal(signal.SIGTERM)

        poll(lambda: "NOT_SERVING" in health.read_text(), "health to turn NOT_SERVING")
        assert coordinator.popen.wait(timeout=DEADLINE_S) == 0
        # The upload in flight was allowed to finish within the grace period: acknowledged by
        # the coordinator that was stopping, not sent again to the next one.
        assert "update acknowledged\n" in log_of(group, CUT).replace(" (duplicate)", "+dup")
    finally:
        watcher.wait(timeout=DEADLINE_S)  # the stream ends with the server

    group.start_coordinator(settings)
    status = poll(
        lambda: (s := group.status(job_id)).state != pb.JOB_STATE_RUNNING and s, "the job to end"
    )
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (only,) = status.rounds
    assert sorted(only.contributors) == ORGS
    assert input_submissions(group, only.round_id, CUT) == 1
    version, (weights,) = group.model(job_id, 1)
    assert version == 1
    shift = sum(offsets.values()) / len(ORGS)
    np.testing.assert_allclose(weights, base[0] + np.float32(shift), atol=1e-6)
