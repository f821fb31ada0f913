"""The consortium CA's membership list over real gRPC: published by the admin, handed on by the
coordinator, verified by the real participant daemons, which then refuse a round holding an
organization the CA revoked even when the coordinator keeps it in the cohort, and take part in
nothing secure while the newest list they hold is older than their accept.max_membership_age.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import pytest
from inproc_consortium import (
    ORGS,
    ConsortiumPki,
    DaemonThread,
    initial_weights,
    rpc_error,
    wait_for_job,
)
from test_secure_rounds_grpc import secret_files, secure_spec

from coordinator.domain.jobs import ParticipantStatus
from coordinator.persistence.store import Store
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.cli.main import main
from fedsilo.config import AcceptSection
from fedsilo.membership import certificate_sha256, sign_membership_list, verify_membership_list
from fedsilo.pki import create_ca, load_ca, load_certificate
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc


def signed_list(
    pki: ConsortiumPki,
    serial: int,
    members: Sequence[str],
    revoked: Sequence[str] = (),
    issued_at: dt.datetime | None = None,
) -> bytes:
    ca = load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    prints = {
        org: [certificate_sha256(load_certificate(pki.demo.participants[org].cert_path))]
        for org in members
    }
    return sign_membership_list(ca.cert, ca.key, prints, revoked, serial, issued_at=issued_at)


def test_the_coordinator_hands_on_the_newest_list_only_when_it_is_newer(
    pki: ConsortiumPki,
    admin: AdminClient,
    participant_stub: Callable[[str], pb_grpc.ParticipantServiceStub],
) -> None:
    published = pki.demo.membership_list.read_bytes()  # serial 1, published at start
    stub = participant_stub("org-a")
    reply = stub.GetTask(pb.GetTaskRequest(wait_seconds=0, membership_serial=0), timeout=10)
    assert reply.membership_list == published
    reply = stub.GetTask(pb.GetTaskRequest(wait_seconds=0, membership_serial=1), timeout=10)
    assert reply.membership_list == b""

    # The same list again changes nothing; another list under serial 1 is refused.
    assert admin.publish_membership_list(published) == (1, True)
    refused = rpc_error(
        lambda: admin.publish_membership_list(signed_list(pki, 1, ORGS[:2], ORGS[2:]))
    )
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
    forger = create_ca("the coordinator's own CA")
    forged = sign_membership_list(forger.cert, forger.key, {"org-x": ["0" * 64]}, [], 9)
    refused = rpc_error(lambda: admin.publish_membership_list(forged))
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not signed by the consortium CA" in (refused.details() or "")

    newer = signed_list(pki, 2, ORGS[:2], ORGS[2:])
    assert admin.publish_membership_list(newer) == (2, False)
    reply = stub.GetTask(pb.GetTaskRequest(wait_seconds=0, membership_serial=1), timeout=10)
    assert reply.membership_list == newer
    actions = [(e.action, e.detail) for e in admin.audit_events(50)]
    assert ("membership.publish", "serial=2 members=2 revoked=org-c") in actions


def test_a_round_keeping_an_org_the_ca_revoked_is_refused_by_every_honest_daemon(
    pki: ConsortiumPki,
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    register: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="participant")
    for org in ("org-a", "org-b"):
        run_daemon(org, target, poll_seconds=0.5)
    register("org-c")  # known and live; org-c's own daemon is not needed to be put in a cohort
    wait_for(
        lambda: len(admin.list_participants()) == len(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    # The CA revokes org-c and the admin publishes the list; an honest coordinator revokes org-c
    # too. This one's operator undoes that in its own database and keeps org-c in its cohorts.
    document = signed_list(pki, 2, ORGS[:2], ORGS[2:])
    assert admin.publish_membership_list(document) == (2, False)
    statuses = {p.org_id: p.status for p in admin.list_participants()}
    assert statuses["org-c"] == "revoked"
    store = Store(f"sqlite:///{tmp_path / 'coordinator' / 'coordinator.db'}")
    try:
        with store.transaction() as tx:
            tx.set_participant_status("org-c", ParticipantStatus.ACTIVE)
    finally:
        store.close()
    job_id = admin.create_job(secure_spec(phase_timeout=120.0), initial_weights()).job_id
    admin.start_job(job_id)

    def refused_by(org: str) -> bool:
        return any(
            getattr(record, "org", None) == org
            and record.getMessage() == "organization org-c is not admitted by the membership list"
            for record in caplog.records
        )

    wait_for(
        lambda: refused_by("org-a") and refused_by("org-b"),
        60,
        "org-a and org-b to refuse the round with org-c",
        interval=0.05,
    )
    assert any("'org-c' is revoked in membership list 2" in r.getMessage() for r in caplog.records)
    status = admin.get_job(job_id)
    assert status.model_version == 0
    # The honest organizations sent no round keys: the round cannot leave KEYS.
    assert [(r.phase, sorted(r.cohort)) for r in status.rounds] == [
        (pb.ROUND_PHASE_KEYS, list(ORGS))
    ]
    for org in ("org-a", "org-b"):
        # Each keeps the list in its own state: a restart cannot bring back serial 1.
        held = tmp_path / "participants" / org / "membership" / "list.json"
        assert held.read_bytes() == document


def test_the_operator_publishes_a_list_from_the_shell(
    pki: ConsortiumPki,
    admin: AdminClient,
    target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    newer = tmp_path / "membership-2.json"
    newer.write_bytes(signed_list(pki, 2, ORGS[:2], ORGS[2:]))
    tls = pki.admin_tls()
    connection = [
        "--coordinator",
        target,
        "--ca-cert",
        str(tls.ca_cert),
        "--cert",
        str(tls.cert),
        "--key",
        str(tls.key),
    ]
    assert main(["participants", "publish-membership", str(newer), *connection]) == 0
    assert "membership list 2 published" in capsys.readouterr().out
    assert main(["participants", "publish-membership", str(newer), *connection, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"serial": 2, "already_published": True}
    # The list from before the revocation cannot be published again.
    older = tmp_path / "membership-1.json"
    older.write_bytes(pki.demo.membership_list.read_bytes())
    assert main(["participants", "publish-membership", str(older), *connection]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().out
    assert main(["participants", "publish-membership", str(tmp_path / "none"), *connection]) == 2
    assert "cannot read" in capsys.readouterr().out


@pytest.mark.parametrize("coordinator", [{"publish_membership": False}], indirect=True)
def test_a_coordinator_serving_a_list_past_its_age_limit_gets_no_secure_work_until_renewed(
    pki: ConsortiumPki,
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.INFO, logger="participant")
    # The newest list this coordinator lets anyone see was issued two days ago (it withholds any
    # later one, say one revoking its accomplice); the organizations accept lists a day old.
    issued = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=2)
    assert admin.publish_membership_list(signed_list(pki, 2, ORGS, issued_at=issued)) == (2, False)
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5, accept=AcceptSection(max_membership_age="1d"))
    wait_for(
        lambda: len(admin.list_participants()) == len(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = secure_spec(phase_timeout=4.0)
    spec.max_failed_rounds = 5
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)

    stale = f"membership list 2 (issued {issued.strftime('%Y-%m-%dT%H:%M:%SZ')}) is 2d"

    def held_back(org: str) -> bool:
        return any(
            getattr(record, "org", None) == org
            and record.levelno == logging.ERROR
            and record.getMessage().startswith(stale)
            and "older than accept.max_membership_age=1d" in record.getMessage()
            for record in caplog.records
        )

    wait_for(
        lambda: all(held_back(org) for org in ORGS),
        60,
        "every daemon to hold back the round under the stale list",
        interval=0.05,
    )
    # The admin sees the round end at its KEYS deadline without one answer; no key was made.
    status = wait_for_job(
        admin,
        job_id,
        lambda s: any(r.phase == pb.ROUND_PHASE_ABORTED for r in s.rounds),
        "the first round to abort",
        timeout=60,
    )
    aborted = next(r for r in status.rounds if r.phase == pb.ROUND_PHASE_ABORTED)
    assert aborted.abort_reason.startswith("phase keys closed with 0 of 3 answers")
    assert status.model_version == 0
    assert secret_files(tmp_path) == []

    # The CA re-issues the same membership; once it is published the job goes on, no restart.
    assert admin.publish_membership_list(signed_list(pki, 3, ORGS)) == (3, False)
    done = wait_for_job(admin, job_id, lambda s: s.model_version == 1, "a committed round", 90)
    assert sorted(done.rounds[-1].contributors) == list(ORGS)
    ca_cert = load_certificate(pki.demo.ca_cert)
    for org in ORGS:
        held = tmp_path / "participants" / org / "membership" / "list.json"
        assert verify_membership_list(held.read_bytes(), ca_cert).serial == 3
