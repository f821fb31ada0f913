"""Participants killed during a paillier job's key ceremony, then started again (R17).

Three organizations run as participant daemon processes. With ``min_participants = 3`` the key
is dealt once every job key is in, so org-1 (the lowest id) deals and the others receive it
sealed. The organization under test is started with ``FEDSILO_FAULT_AT`` naming a ceremony crash
point, SIGKILLs itself right after the coordinator acknowledged that step's first message, and
is started again with the same state directory. Oracle: the job completes, every organization
contributes, and every organization decrypts the same model, the FedAvg of all three.
"""

from __future__ import annotations

from typing import Any

import pytest
from secure_jobs import (
    assert_model,
    killed,
    logged,
    register,
    run_secure_job,
    secure_spec,
    start_job,
    start_participant,
    wait_for_end,
)

from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.system

ORGS = ["org-1", "org-2", "org-3"]
Consortium = Any  # tests/system/conftest.py's Consortium (conftest modules are not imported)


@pytest.fixture
def three(consortium: Consortium) -> Consortium:
    assert consortium.orgs == ORGS
    return consortium


def _assert_everyone_contributed(three: Consortium, status: pb.JobStatus) -> None:
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_COMMITTED
    assert sorted(round_.contributors) == ORGS
    assert_model(three, status, ORGS)


@pytest.mark.parametrize(
    ("step", "org", "message", "after_restart"),
    [
        # The dealer's job key is in: nobody deals until it is back, then it deals.
        ("advertise", "org-1", "job_key", "dealt a 2048-bit Paillier key"),
        # Its public key is in; the sealed keys and its confirmation wait in its outbox.
        ("deal", "org-1", "dealt_key", "sending 2 pending key-ceremony messages"),
        # It confirmed the key it opened: the round opens while it is down; nothing is re-sent.
        ("receive", "org-3", "confirm", None),
    ],
    ids=["advertise", "deal", "receive"],
)
def test_a_participant_killed_in_the_ceremony_resumes_and_the_job_completes(
    three: Consortium, step: str, org: str, message: str, after_restart: str | None
) -> None:
    point = f"participant.ceremony.after_{step}"
    status = run_secure_job(
        three, {org: point}, protection=pb.PROTECTION_PAILLIER, phase_timeout=60.0, restart=True
    )
    _assert_everyone_contributed(three, status)
    # It died right after the coordinator acknowledged the step's first message.
    last = (three.root / f"{org}.log").read_text().splitlines()[-1]
    assert f"phase=ceremony-{step} org={org} key ceremony: {message} acknowledged" in last, last
    if after_restart is None:
        assert not logged(three, org, "key ceremony:")
    else:
        assert logged(three, org, after_restart)


def test_a_key_holder_killed_after_sealing_for_a_late_joiner_resumes(three: Consortium) -> None:
    # min_participants = 2: org-1 deals to org-2 before org-3 runs. org-3 is registered (a live
    # organization the ceremony waits for) and starts after the deal, so org-1, the first
    # confirmed holder, seals the key for it, and is killed right after.
    # org-3 counts as live from its registration on, however long the deal takes.
    three.start_coordinator({"FEDSILO_LIMITS_LIVENESS_SECONDS": "600"})
    crashing = {"org-1": "participant.ceremony.after_seal"}
    start_participant(three, "org-1", crashing)
    start_participant(three, "org-2", crashing)
    register(three, "org-3")
    spec = secure_spec(pb.PROTECTION_PAILLIER, min_participants=2, phase_timeout=60.0)
    job_id = start_job(three, spec)
    wait_for(lambda: logged(three, "org-2", "confirm acknowledged"), 60, "org-2 to hold the key")
    start_participant(three, "org-3", crashing)
    killed(three, ["org-1"])
    last = (three.root / "org-1.log").read_text().splitlines()[-1]
    assert "phase=ceremony-seal org=org-1 key ceremony: sealed acknowledged" in last, last
    three.start_participant("org-1")

    status = wait_for_end(three, job_id)
    _assert_everyone_contributed(three, status)
    assert logged(three, "org-3", "opened the job's 2048-bit Paillier key sealed by org-1")
