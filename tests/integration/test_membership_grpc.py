"""The consortium CA's membership list over real gRPC: published by the admin, handed on by the
coordinator, verified by the real participant daemons, which then refuse a round holding an
organization the CA revoked even when the coordinator keeps it in the cohort.
"""

from __future__ import annotations

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
)
from test_secure_rounds_grpc import secure_spec

from coordinator.domain.jobs import ParticipantStatus
from coordinator.persistence.store import Store
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.cli.main import main
from fedsilo.membership import certificate_sha256, sign_membership_list
from fedsilo.pki import create_ca, load_ca, load_certificate
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc


def signed_list(
    pki: ConsortiumPki, serial: int, members: Sequence[str], revoked: Sequence[str] = ()
) -> bytes:
    ca = load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    prints = {
        org: [certificate_sha256(load_certificate(pki.demo.participants[org].cert_path))]
        for org in members
    }
    return sign_membership_list(ca.cert, ca.key, prints, revoked, serial)


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
