"""Dropouts and restarts in secure rounds with real processes (docs/fault-matrix.md R1-R5, R17).

Five organizations run as participant daemon processes with the ``digits-linear`` numpy task;
``t = 4`` (two thirds of five). The organizations that drop are started with
``FEDSILO_FAULT_AT`` naming a crash point, so each SIGKILLs itself right after the coordinator
acknowledged one of its answers.
Oracle: a committed model equals the base model plus the weighted mean of the clipped deltas of
exactly the recorded contributors (within the quantization bound); with fewer than ``t``
answers nothing is released, the reason is recorded, and the survivors delete the round's
secrets once told. R1-R3 also run under ``paillier`` protection, where the survivors decrypt
the model and the coordinator holds neither an update nor the plaintext aggregate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from secure_jobs import (
    aggregate_traces,
    assert_aggregate_hidden,
    assert_model,
    assert_no_individual_update,
    killed,
    run_secure_job,
)

from fedsilo.cli.daemons import wait_for
from fedsilo.faults import POINTS
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.system

ORGS = ["org-1", "org-2", "org-3", "org-4", "org-5"]
Consortium = Any  # tests/system/conftest.py's Consortium (conftest modules are not imported)


@pytest.fixture
def five(five_organizations: Consortium) -> Consortium:
    assert five_organizations.orgs == ORGS
    return five_organizations


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
@pytest.mark.parametrize(
    "protection",
    [pb.PROTECTION_SECAGG, pb.PROTECTION_PAILLIER],
    ids=["secagg", "paillier"],
)
def test_one_dropout_still_releases_the_sum_of_exactly_the_contributors(
    five: Consortium, protection: pb.Protection.ValueType, point: str, in_sum: bool
) -> None:
    # Under paillier the job starts with the key ceremony and the input the dropped
    # organization sent (R1, R3) is its encrypted masked input; the model after version 0
    # exists only encrypted at the coordinator and is checked as the survivors decrypt it.
    # The INPUTS phase of R2 waits for its deadline, the round timeout: kept short.
    status = run_secure_job(five, {"org-2": point}, protection=protection, round_timeout=20.0)
    killed(five, ["org-2"])
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_COMMITTED
    contributors = sorted(round_.contributors)
    expected = ORGS if in_sum else [o for o in ORGS if o != "org-2"]
    assert contributors == expected
    model = assert_model(five, status, expected)
    assert_no_individual_update(five)
    if protection == pb.PROTECTION_PAILLIER:
        assert_aggregate_hidden(five, status, model)
    else:
        # The control: a secagg coordinator holds the model it released, and the scan sees it.
        assert "the model" in aggregate_traces(five, status, model)
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
    status = run_secure_job(five, crashing)
    killed(five, list(crashing))
    assert status.state == pb.JOB_STATE_FAILED
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_ABORTED
    assert f"phase {phase} closed with 2 of 5 answers, fewer than the 4 required" in (
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
    status = run_secure_job(five, {"org-2": point}, phase_timeout=60.0, restart=True)
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert sorted(round_.contributors) == ORGS
    assert_model(five, status, ORGS)
    log = five.processes["org-2"].log_path.read_text()
    assert "answer acknowledged" in log, log[-2000:]


_MASKED_POINTS = [
    *(
        f"coordinator.secagg.after_{phase}_commit"
        for phase in ("keys", "shares", "inputs", "consistency", "unmask")
    ),
    "coordinator.secagg.before_aggregated",
]
# Every coordinator crash point of fedsilo/faults.py, under each protection that reaches it.
COORDINATOR_POINTS = [
    *((pb.PROTECTION_SECAGG, point) for point in _MASKED_POINTS),
    # The first job key stored, then every point of the masked round under Paillier.
    (pb.PROTECTION_PAILLIER, "coordinator.ceremony.after_commit"),
    *((pb.PROTECTION_PAILLIER, point) for point in _MASKED_POINTS),
    (pb.PROTECTION_NONE, "coordinator.plain.after_update_commit"),
]
# The same on PostgreSQL, one point per protection (the store contract tests cover the rest).
ON_POSTGRES = [
    (pb.PROTECTION_SECAGG, "coordinator.secagg.after_inputs_commit"),
    (pb.PROTECTION_PAILLIER, "coordinator.ceremony.after_commit"),
    (pb.PROTECTION_NONE, "coordinator.plain.after_update_commit"),
]


def _point_id(value: object) -> str:
    if isinstance(value, str):
        return value
    assert isinstance(value, int)
    return pb.Protection.Name(value)[11:].lower()  # type: ignore[arg-type]


def test_every_coordinator_crash_point_is_exercised() -> None:
    points = {point for _, point in COORDINATOR_POINTS}
    assert points == {name for name in POINTS if name.startswith("coordinator.")}


@pytest.mark.parametrize(("protection", "point"), COORDINATOR_POINTS, ids=_point_id)
def test_a_coordinator_killed_mid_round_resumes_the_secure_round(
    five: Consortium, protection: pb.Protection.ValueType, point: str
) -> None:
    _killed_coordinator_resumes(five, protection, point)


@pytest.mark.postgres
@pytest.mark.parametrize(("protection", "point"), ON_POSTGRES, ids=_point_id)
def test_a_coordinator_on_postgres_killed_mid_round_resumes_the_round(
    five: Consortium, fresh_postgres_url: str, protection: pb.Protection.ValueType, point: str
) -> None:
    five.database_url = fresh_postgres_url
    _killed_coordinator_resumes(five, protection, point)


def _killed_coordinator_resumes(
    five: Consortium, protection: pb.Protection.ValueType, point: str
) -> None:
    # R5: SIGKILL between the database commit and the answer; the participants retry, get the
    # original acknowledgement, and the round (or the key ceremony) continues from the database
    # after a restart: still one round, with every organization's input.
    status = run_secure_job(
        five, {}, protection=protection, phase_timeout=60.0, coordinator_fault=point
    )
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert sorted(round_.contributors) == ORGS
    assert_model(five, status, ORGS)
