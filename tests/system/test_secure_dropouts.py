"""Dropouts in secure rounds with real processes (TEST-MATRIX R1-R4).

Five organizations run as participant daemon processes with the ``digits-linear`` numpy task;
``t = 3``. The organizations that drop are started with ``FEDSILO_FAULT_AT`` naming a crash
point, so each SIGKILLs itself right after the coordinator acknowledged one of its answers.
Oracle: a committed model equals the base model plus the weighted mean of the clipped deltas of
exactly the recorded contributors (within the quantization bound); with fewer than ``t``
answers nothing is released, the reason is recorded, and the survivors delete the round's
secrets once told.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsilo.faults import ENV_VAR
from fedsilo.processes import wait_for
from fedsilo.tasks import TrainingSettings, as_float32, load_task
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.system

ORGS = ["org-1", "org-2", "org-3", "org-4", "org-5"]
SEED = 3
TRAINING = TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1, seed=SEED)
CLIP = 1.0
LEVELS_BITS = 13
BOUND = math.ldexp(1.0, -(LEVELS_BITS + 1)) + 1e-6


Consortium = Any  # tests/system/conftest.py's Consortium (conftest modules are not importable)
LINEAR_TASK = {"digits-linear": "examples.synthetic.task:task"}


@pytest.fixture
def five(five_organizations: Consortium) -> Consortium:
    assert five_organizations.orgs == ORGS
    return five_organizations


def _run(
    consortium: Consortium,
    crashing: dict[str, str],
    phase_timeout: float = 3.0,
    restart: bool = False,
    coordinator_fault: str | None = None,
) -> pb.JobStatus:
    """Run one secure round with the given organizations crashing at the given points; with
    ``restart``, each crashed organization is started again (same state directory). With
    ``coordinator_fault``, the coordinator kills itself there and is started again."""
    coordinator = consortium.start_coordinator(
        {ENV_VAR: coordinator_fault} if coordinator_fault else None
    )
    for org in ORGS:
        point = crashing.get(org)
        consortium.start_participant(org, {ENV_VAR: point} if point else None)
    task = load_task("digits-linear", LINEAR_TASK)
    spec = pb.JobSpec(
        name="secure-dropouts",
        task_name="digits-linear",
        protection=pb.PROTECTION_SECAGG,
        num_rounds=1,
        min_participants=3,
        round_timeout_seconds=60,
        phase_timeout_seconds=phase_timeout,
        max_failed_rounds=0,
        training=pb.TrainingSettings(
            local_epochs=TRAINING.local_epochs,
            batch_size=TRAINING.batch_size,
            learning_rate=TRAINING.learning_rate,
            seed=SEED,
        ),
        secagg=pb.SecAggSettings(clip=CLIP, levels_bits=LEVELS_BITS),
    )
    with consortium.admin() as admin:
        wait_for(lambda: len(admin.list_participants()) == 5, 60, "five organizations")
        job = admin.create_job(spec, as_float32(task.initial_weights(SEED)))
        admin.start_job(job.job_id)
    if restart:
        _killed(consortium, list(crashing))
        for org in crashing:
            consortium.start_participant(org)
    if coordinator_fault:
        wait_for(lambda: coordinator.popen.poll() is not None, 60, "the coordinator to crash")
        assert coordinator.popen.returncode == -9
        consortium.start_coordinator()  # the same command, without the fault
    with consortium.admin() as admin:
        done = (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED)
        return wait_for(
            lambda: (s := admin.get_job(job.job_id)).state in done and s,
            120,
            "the secure job to end",
        )


def _expected_model(contributors: list[str]) -> list[np.ndarray]:
    """What an honest FedAvg over exactly ``contributors`` gives (each trains like its daemon)."""
    task = load_task("digits-linear", LINEAR_TASK)
    base = as_float32(task.initial_weights(SEED))
    settings = dataclasses.replace(TRAINING, seed=SEED * 1_000_003 + 1)  # round 1
    total = 0
    summed = [np.zeros(w.shape, dtype=np.float64) for w in base]
    for org in contributors:
        config = {"partition": ORGS.index(org), "num_partitions": len(ORGS)}
        result = task.train(base, task.load_data(config), settings)
        for acc, new, old in zip(summed, result.weights, base, strict=True):
            delta = np.asarray(new, dtype=np.float64) - old
            acc += np.clip(delta, -CLIP, CLIP) * result.num_examples
        total += result.num_examples
    return [(old + acc / total).astype(np.float32) for old, acc in zip(base, summed, strict=True)]


def _trained(org: str) -> list[np.ndarray]:
    """The weights ``org`` trained in round 1: its individual update, which must stay private."""
    task = load_task("digits-linear", LINEAR_TASK)
    base = as_float32(task.initial_weights(SEED))
    settings = dataclasses.replace(TRAINING, seed=SEED * 1_000_003 + 1)
    data = task.load_data({"partition": ORGS.index(org), "num_partitions": len(ORGS)})
    return as_float32(task.train(base, data, settings).weights)


def _examples(org: str) -> int:
    task = load_task("digits-linear", LINEAR_TASK)
    return task.load_data({"partition": ORGS.index(org), "num_partitions": len(ORGS)}).num_train


def _assert_no_individual_update(consortium: Consortium) -> None:
    """Privacy scan: the coordinator's database, blob store and log hold no org's update."""
    files = [p for p in (consortium.root / "coordinator").rglob("*") if p.is_file()]
    files += sorted(consortium.root.glob("coordinator-*.log"))
    contents = [p.read_bytes() for p in files]
    assert len(contents) >= 3
    task = load_task("digits-linear", LINEAR_TASK)
    base = [w.ravel() for w in as_float32(task.initial_weights(SEED))]
    for org in ORGS:
        for start, tensor in zip(base, _trained(org), strict=True):
            # Weights of always-zero pixels never change; look only at values training moved.
            flat = tensor.ravel()
            changed = np.flatnonzero(flat != start)
            runs = [i for i in changed if np.all(flat[i : i + 8] != start[i : i + 8])]
            assert runs, org
            needle = flat[runs[0] : runs[0] + 8].tobytes()
            assert all(needle not in data for data in contents), org
    # Nothing decodes to an update either, nor to an update times its example count (what a
    # plain running sum holds after its first input), within the quantization bound.
    updates = {org: np.concatenate([w.ravel() for w in _trained(org)]) for org in ORGS}
    examples = {org: _examples(org) for org in ORGS}
    size = updates[ORGS[0]].size
    for data in contents:
        for dtype in (np.float32, np.float64):
            width = np.dtype(dtype).itemsize
            if len(data) != size * width:
                continue
            vector = np.frombuffer(data, dtype=dtype).astype(np.float64)
            for org, update in updates.items():
                for scale in (1.0, float(examples[org])):
                    assert np.max(np.abs(vector / scale - update)) > BOUND, org


def _model(consortium: Consortium, job_id: str) -> list[np.ndarray]:
    with consortium.admin() as admin:
        version, weights = admin.download_model(job_id, -1)
    assert version == 1
    return weights


def _killed(consortium: Consortium, orgs: list[str]) -> None:
    for org in orgs:
        process = consortium.processes[org]
        wait_for(lambda p=process: p.popen.poll() is not None, 60, f"{org} to crash")
        assert process.popen.returncode == -9, process.log_path.read_text()[-2000:]


def _secrets(consortium: Consortium, org: str) -> list[Path]:
    return sorted((consortium.root / org / "secagg").glob("*.json"))


@pytest.mark.parametrize(
    ("point", "in_sum"),
    [
        ("participant.secagg.after_inputs", True),  # R1: masked input sent, then gone
        ("participant.secagg.after_shares", False),  # R2: shares sent, no masked input
        ("participant.secagg.after_consistency", True),  # R3: gone during UNMASK, t still met
    ],
    ids=["R1", "R2", "R3"],
)
def test_one_dropout_still_releases_the_sum_of_exactly_the_contributors(
    five: Consortium, point: str, in_sum: bool
) -> None:
    status = _run(five, {"org-2": point})
    _killed(five, ["org-2"])
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_COMMITTED
    contributors = sorted(round_.contributors)
    expected = ORGS if in_sum else [o for o in ORGS if o != "org-2"]
    assert contributors == expected
    for got, want in zip(_model(five, status.job_id), _expected_model(expected), strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= BOUND
    _assert_no_individual_update(five)
    # The survivors delete their round secrets once told the round ended.
    for org in expected:
        if org != "org-2":
            wait_for(lambda o=org: _secrets(five, o) == [], 30, f"{org}'s secrets deleted")


@pytest.mark.parametrize(
    ("point", "phase"),
    [
        ("participant.secagg.after_keys", "shares"),
        ("participant.secagg.after_consistency", "unmask"),
    ],
    ids=["R4-shares", "R3-R4-unmask"],
)
def test_fewer_than_t_survivors_abort_and_release_nothing(
    five: Consortium, point: str, phase: str
) -> None:
    crashing = {org: point for org in ("org-1", "org-2", "org-3")}
    status = _run(five, crashing)
    _killed(five, list(crashing))
    assert status.state == pb.JOB_STATE_FAILED
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_ABORTED
    assert f"phase {phase} closed with 2 of 5 answers, fewer than the 3 required" in (
        round_.abort_reason
    )
    assert status.model_version == 0
    for org in ("org-4", "org-5"):
        wait_for(lambda o=org: _secrets(five, o) == [], 30, f"{org}'s secrets deleted")
        log = five.processes[org].log_path.read_text()
        assert "ended (aborted: phase" in log, log[-2000:]


@pytest.mark.parametrize(
    "point",
    ["participant.secagg.after_shares", "participant.secagg.after_consistency"],
    ids=["after-shares", "after-consistency"],
)
def test_a_restarted_participant_resumes_its_round_from_its_state(
    five: Consortium, point: str
) -> None:
    # R17: killed mid-round and started again, it restores its round secrets and answers the
    # remaining phases; its masked input joins the sum exactly once.
    status = _run(five, {"org-2": point}, phase_timeout=60.0, restart=True)
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert sorted(round_.contributors) == ORGS
    for got, want in zip(_model(five, status.job_id), _expected_model(ORGS), strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= BOUND
    log = five.processes["org-2"].log_path.read_text()
    assert "answer acknowledged" in log, log[-2000:]


@pytest.mark.parametrize(
    "point",
    [
        "coordinator.secagg.after_shares_commit",
        "coordinator.secagg.after_inputs_commit",
        "coordinator.secagg.after_unmask_commit",
        "coordinator.secagg.before_aggregated",
    ],
)
def test_a_coordinator_killed_mid_round_resumes_the_secure_round(
    five: Consortium, point: str
) -> None:
    # R5: SIGKILL between the database commit and the answer; the participants retry, get the
    # original acknowledgement, and the round continues from the database after a restart.
    status = _run(five, {}, phase_timeout=60.0, coordinator_fault=point)
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert sorted(round_.contributors) == ORGS
    for got, want in zip(_model(five, status.job_id), _expected_model(ORGS), strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= BOUND
