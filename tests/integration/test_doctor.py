"""``fedsilo participant doctor`` against real in-process coordinators over real mutual TLS.

Every broken setup is built for real (a foreign CA, an expired certificate, a coordinator
certificate without the dialled name, a coordinator that trusts another CA, a plaintext listener,
a full accept queue) and the doctor must name the cause. Loopback only; nothing sleeps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from inproc_consortium import RPC_TIMEOUT_S, ConsortiumPki, free_port, target_of
from rich.console import Console

from coordinator.transport.server import RunningCoordinator, start_coordinator
from fedsilo import pki as pki_lib
from fedsilo.admin import AdminClient
from fedsilo.cli import doctor
from fedsilo.cli.doctor import CHECKS, CheckResult, Outcome, diagnose
from fedsilo.config import CoordinatorConfig, DatabaseSection, ParticipantConfig, TlsSection
from fedsilo.tls import TlsFiles

# Short enough to keep failing cases quick, long enough for a loaded CI machine on loopback.
TIMEOUT_S = 5.0
NETWORK_CHECKS = (
    doctor.TLS_HANDSHAKE,
    doctor.COORDINATOR_HEALTH,
    doctor.IDENTITY,
    doctor.CLOCK,
    doctor.MEMBERSHIP,
)


# This organization's slice of the digits example: what the task data check loads.
DIGITS_SLICE = {"partition": 0, "num_partitions": 3}


def participant_config(
    tls: TlsFiles, target: str, tmp_path: Path, task_config: dict[str, object] | None = None
) -> ParticipantConfig:
    return ParticipantConfig(
        coordinator=target,
        state_dir=tmp_path / "participant",
        tls=TlsSection(ca_cert=tls.ca_cert, cert=tls.cert, key=tls.key),
        task_config=dict(DIGITS_SLICE if task_config is None else task_config),
    )


def run_doctor(
    tls: TlsFiles,
    target: str,
    tmp_path: Path,
    clock: Callable[[], float] = time.time,
    timeout: float = TIMEOUT_S,
    tasks: tuple[str, ...] = ("digits",),
    task_config: dict[str, object] | None = None,
) -> dict[str, CheckResult]:
    results = diagnose(
        participant_config(tls, target, tmp_path, task_config),
        clock=clock,
        timeout=timeout,
        tasks=tasks,
    )
    assert [r.name for r in results] == list(CHECKS)
    return {r.name: r for r in results}


def outcomes(results: dict[str, CheckResult]) -> dict[str, Outcome]:
    return {name: result.outcome for name, result in results.items()}


def assert_skipped(results: dict[str, CheckResult], names: tuple[str, ...]) -> None:
    for name in names:
        assert results[name].outcome is Outcome.SKIPPED, results[name]
        assert not results[name].ok


def write_participant_files(
    pki: ConsortiumPki, tmp_path: Path, valid_days: int, issued_days_ago: float = 0.0
) -> TlsFiles:
    """A certificate for org-a from the real consortium CA, with the given validity window."""
    ca = pki_lib.load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    key = pki_lib.make_key()
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=issued_days_ago)
    csr = pki_lib.make_csr("org-a", pki_lib.Role.PARTICIPANT, key)
    cert = pki_lib.sign_csr(ca, csr, valid_days=valid_days, now=now)
    out = tmp_path / f"org-a-{valid_days}d"
    out.mkdir()
    pki_lib.write_private_key(out / "org-a.key", key)
    pki_lib.write_certificate(out / "org-a.crt", cert)
    return TlsFiles(pki.demo.ca_cert, out / "org-a.crt", out / "org-a.key")


@pytest.fixture
def start_coordinator_with(tmp_path: Path) -> Iterator[Callable[[TlsSection], RunningCoordinator]]:
    """Factory: a coordinator on 127.0.0.1 with the given TLS files; all stopped at teardown."""
    started: list[RunningCoordinator] = []

    def start(tls: TlsSection) -> RunningCoordinator:
        data_dir = tmp_path / f"doctor-coordinator-{len(started)}"
        config = CoordinatorConfig(
            listen="127.0.0.1:0",
            data_dir=data_dir,
            database=DatabaseSection(url=f"sqlite:///{data_dir / 'coordinator.db'}"),
            tls=tls,
            auto_approve=True,
        )
        running = start_coordinator(config)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(grace=1)


# -- a healthy consortium ----------------------------------------------------------------------


def test_every_check_passes_against_a_healthy_coordinator(
    pki: ConsortiumPki, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    results = run_doctor(pki.participant_tls("org-a"), f"localhost:{coordinator.port}", tmp_path)

    assert all(r.outcome is Outcome.PASS for r in results.values()), results
    assert "org org-a, role participant" in results[doctor.CERTIFICATE].detail
    assert "days left" in results[doctor.CERTIFICATE].detail
    assert "TLSv1.3" in results[doctor.TLS_HANDSHAKE].detail
    assert "SERVING" in results[doctor.COORDINATOR_HEALTH].detail
    assert "'org-a' with role participant" in results[doctor.IDENTITY].detail
    assert "active member" in results[doctor.MEMBERSHIP].detail
    assert "digits: " in results[doctor.TASK_DATA].detail
    assert "training and" in results[doctor.TASK_DATA].detail
    assert all(r.fix == "" for r in results.values())


def _doctor_args(argv: list[str]) -> argparse.Namespace:
    """Parse like ``fedsilo participant ...`` once fedsilo/cli/main.py calls doctor.register."""
    parser = argparse.ArgumentParser(prog="fedsilo participant")
    doctor.register(parser.add_subparsers(dest="action", required=True))
    return parser.parse_args(argv)


def _write_config(path: Path, tls: TlsFiles, target: str) -> Path:
    path.write_text(
        f"coordinator: {target}\n"
        f"state_dir: {path.parent / 'state'}\n"
        "tls:\n"
        f"  ca_cert: {tls.ca_cert}\n"
        f"  cert: {tls.cert}\n"
        f"  key: {tls.key}\n"
        "task_config:\n"
        "  partition: 0\n"
        "  num_partitions: 3\n"
    )
    return path


def test_command_prints_a_table_and_exits_0_when_healthy(
    pki: ConsortiumPki, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    config = _write_config(
        tmp_path / "participant.yaml", pki.participant_tls("org-a"), target_of(coordinator.port)
    )
    args = _doctor_args(["doctor", "--config", str(config), "--task", "digits"])
    assert args.action == "doctor"
    out = io.StringIO()

    code = doctor.run(args, Console(file=out, width=200))

    assert code == 0
    text = out.getvalue()
    for name in CHECKS:
        assert re.search(rf"{name}\s+│ PASS", text), name
    assert "all checks passed" in text


def test_command_json_lists_every_check_and_exits_1_on_a_failure(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    config = _write_config(
        tmp_path / "participant.yaml", pki.participant_tls("org-a"), target_of(free_port())
    )
    out = io.StringIO()

    code = doctor.run(
        _doctor_args(["doctor", "--config", str(config), "--json"]), Console(file=out)
    )

    assert code == 1
    rows = json.loads(out.getvalue())
    assert [row["name"] for row in rows] == list(CHECKS)
    assert {row["result"] for row in rows[:3]} == {"pass"}
    assert rows[3]["result"] == "fail" and rows[3]["ok"] is False and rows[3]["fix"]
    assert {row["result"] for row in rows[4:-1]} == {"skipped"}
    # No --task and no tasks: listed: the data was not loaded, and the doctor says so.
    assert rows[-1]["name"] == doctor.TASK_DATA and rows[-1]["result"] == "warn"
    assert "--task NAME" in rows[-1]["fix"]


@pytest.mark.parametrize(
    "content",
    [
        "coordinator: [unclosed\n",  # not YAML
        "coordinatr: localhost:50051\n",  # unknown key
        "coordinator: localhost:50051\ntls:\n  ca_cert: /nonexistent/ca.crt\n",
    ],
    ids=["not-yaml", "unknown-key", "missing-tls-file"],
)
def test_bad_configuration_file_exits_2(content: str, tmp_path: Path) -> None:
    config = tmp_path / "participant.yaml"
    config.write_text(content)
    out = io.StringIO()

    code = doctor.run(
        _doctor_args(["doctor", "--config", str(config), "--json"]), Console(file=out)
    )

    assert code == 2
    rows = json.loads(out.getvalue())
    assert rows[0]["name"] == doctor.CONFIGURATION and rows[0]["result"] == "fail"
    assert rows[0]["detail"]
    assert {row["result"] for row in rows[1:]} == {"skipped"}


def test_missing_configuration_file_exits_2(tmp_path: Path) -> None:
    out = io.StringIO()
    args = _doctor_args(["doctor", "--config", str(tmp_path / "absent.yaml")])

    assert doctor.run(args, Console(file=out, width=200)) == 2
    assert "cannot read configuration file" in out.getvalue()


# -- local files -------------------------------------------------------------------------------


def test_key_of_another_organization_fails_the_configuration_check(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    a, b = pki.participant_tls("org-a"), pki.participant_tls("org-b")
    results = run_doctor(TlsFiles(a.ca_cert, a.cert, b.key), target_of(free_port()), tmp_path)

    assert results[doctor.CONFIGURATION].outcome is Outcome.FAIL
    assert "does not belong to" in results[doctor.CONFIGURATION].detail
    assert_skipped(results, CHECKS[1:])  # the task data check needs the configuration too


def test_certificate_from_a_foreign_ca_fails_the_certificate_check(
    pki: ConsortiumPki, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    results = run_doctor(pki.foreign_tls(), target_of(coordinator.port), tmp_path)

    certificate = results[doctor.CERTIFICATE]
    assert certificate.outcome is Outcome.FAIL
    assert "issued by 'CN=evil consortium CA'" in certificate.detail
    assert "CN=fedsilo consortium CA" in certificate.detail
    assert certificate.fix
    # Reachability does not depend on the certificate; everything that uses it is skipped.
    assert results[doctor.NAME_RESOLUTION].outcome is Outcome.PASS
    assert results[doctor.TCP_CONNECTION].outcome is Outcome.PASS
    assert_skipped(results, NETWORK_CHECKS)


def test_expired_certificate_fails_with_its_expiry_date(
    pki: ConsortiumPki, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    tls = write_participant_files(pki, tmp_path, valid_days=10, issued_days_ago=30)
    expired_on = pki_lib.load_certificate(tls.cert).not_valid_after_utc

    results = run_doctor(tls, target_of(coordinator.port), tmp_path)

    certificate = results[doctor.CERTIFICATE]
    assert certificate.outcome is Outcome.FAIL
    assert f"expired on {expired_on:%Y-%m-%d %H:%M} UTC (20 days ago)" in certificate.detail
    assert "fedsilo pki csr --org org-a --role participant" in certificate.fix
    assert_skipped(results, NETWORK_CHECKS)


def test_certificate_expiring_within_two_weeks_is_a_warning(
    pki: ConsortiumPki, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    tls = write_participant_files(pki, tmp_path, valid_days=7)

    results = run_doctor(tls, target_of(coordinator.port), tmp_path)

    certificate = results[doctor.CERTIFICATE]
    assert certificate.outcome is Outcome.WARN and certificate.ok
    assert "(6 days left)" in certificate.detail
    assert "renew it soon" in certificate.fix
    assert all(results[name].outcome is Outcome.PASS for name in NETWORK_CHECKS)


def test_admin_certificate_fails_the_role_check(
    pki: ConsortiumPki, coordinator: RunningCoordinator, tmp_path: Path
) -> None:
    results = run_doctor(pki.admin_tls(), target_of(coordinator.port), tmp_path)

    assert results[doctor.CERTIFICATE].outcome is Outcome.FAIL
    assert "role 'admin'" in results[doctor.CERTIFICATE].detail
    assert_skipped(results, NETWORK_CHECKS)


# -- the network path --------------------------------------------------------------------------


def test_nothing_listening_is_diagnosed_as_connection_refused(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    port = free_port()
    results = run_doctor(pki.participant_tls("org-a"), f"127.0.0.1:{port}", tmp_path)

    assert outcomes(results)[doctor.CONFIGURATION] is Outcome.PASS
    assert outcomes(results)[doctor.CERTIFICATE] is Outcome.PASS
    assert outcomes(results)[doctor.NAME_RESOLUTION] is Outcome.PASS
    tcp = results[doctor.TCP_CONNECTION]
    assert tcp.outcome is Outcome.FAIL
    assert f"connection refused by 127.0.0.1:{port}" in tcp.detail
    assert "nothing listens" in tcp.detail
    assert "coordinator is running" in tcp.fix
    assert_skipped(results, NETWORK_CHECKS)


def test_dropped_connection_attempts_are_diagnosed_as_a_timeout(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, as a firewall would.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT_S):
            results = run_doctor(
                pki.participant_tls("org-a"), f"127.0.0.1:{port}", tmp_path, timeout=0.5
            )

    tcp = results[doctor.TCP_CONNECTION]
    assert tcp.outcome is Outcome.FAIL
    assert f"no answer from 127.0.0.1:{port} within 0.5 s" in tcp.detail
    assert "firewall" in tcp.detail
    assert_skipped(results, NETWORK_CHECKS)


def test_host_name_missing_from_the_coordinator_certificate_is_explained(
    pki: ConsortiumPki,
    start_coordinator_with: Callable[[TlsSection], RunningCoordinator],
    tmp_path: Path,
) -> None:
    ca = pki_lib.load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    ip_only = pki_lib.issue(
        ca,
        "coordinator",
        pki_lib.Role.COORDINATOR,
        tmp_path / "ip-only",
        ip_addresses=["127.0.0.1"],
    )
    running = start_coordinator_with(
        TlsSection(ca_cert=pki.demo.ca_cert, cert=ip_only.cert_path, key=ip_only.key_path)
    )
    tls = pki.participant_tls("org-a")

    results = run_doctor(tls, f"localhost:{running.port}", tmp_path)

    handshake = results[doctor.TLS_HANDSHAKE]
    assert results[doctor.TCP_CONNECTION].outcome is Outcome.PASS
    assert handshake.outcome is Outcome.FAIL
    assert "not valid for 'localhost': it names IP:127.0.0.1" in handshake.detail
    assert "Hostname mismatch" in handshake.detail  # Python's ssl error text
    assert "--dns localhost" in handshake.fix
    assert_skipped(results, NETWORK_CHECKS[1:])
    # Control: the name the certificate does carry works against the same coordinator.
    by_ip = run_doctor(tls, f"127.0.0.1:{running.port}", tmp_path)
    assert by_ip[doctor.TLS_HANDSHAKE].outcome is Outcome.PASS


def test_coordinator_certificate_from_another_ca_is_explained(
    pki: ConsortiumPki,
    start_coordinator_with: Callable[[TlsSection], RunningCoordinator],
    tmp_path: Path,
) -> None:
    other = pki_lib.make_demo_pki(tmp_path / "other-consortium", ["org-a"])
    running = start_coordinator_with(
        TlsSection(ca_cert=pki.demo.ca_cert, cert=other.coordinator_cert, key=other.coordinator_key)
    )

    results = run_doctor(pki.participant_tls("org-a"), f"localhost:{running.port}", tmp_path)

    handshake = results[doctor.TLS_HANDSHAKE]
    assert handshake.outcome is Outcome.FAIL
    # Both demo CAs are called "fedsilo consortium CA": the diagnosis must not blame the name.
    assert "same name as ours" in handshake.detail and "another key" in handshake.detail
    assert "unable to get local issuer certificate" in handshake.detail
    assert "tls.ca_cert" in handshake.fix
    assert_skipped(results, NETWORK_CHECKS[1:])


def test_coordinator_that_refuses_our_certificate_is_explained(
    pki: ConsortiumPki,
    start_coordinator_with: Callable[[TlsSection], RunningCoordinator],
    tmp_path: Path,
) -> None:
    # The coordinator presents a certificate we trust but only accepts clients of another CA.
    running = start_coordinator_with(
        TlsSection(
            ca_cert=pki.foreign_ca_cert,
            cert=pki.demo.coordinator_cert,
            key=pki.demo.coordinator_key,
        )
    )

    results = run_doctor(pki.participant_tls("org-a"), target_of(running.port), tmp_path)

    handshake = results[doctor.TLS_HANDSHAKE]
    assert handshake.outcome is Outcome.FAIL
    assert "refused" in handshake.detail and "our certificate" in handshake.detail
    serial = format(pki_lib.load_certificate(pki.participant_tls("org-a").cert).serial_number, "x")
    assert serial in handshake.fix
    assert_skipped(results, NETWORK_CHECKS[1:])


def test_plaintext_listener_is_explained(
    pki: ConsortiumPki,
    start_coordinator_with: Callable[[TlsSection], RunningCoordinator],
    tmp_path: Path,
) -> None:
    running = start_coordinator_with(TlsSection(insecure=True))

    results = run_doctor(pki.participant_tls("org-a"), target_of(running.port), tmp_path)

    handshake = results[doctor.TLS_HANDSHAKE]
    assert handshake.outcome is Outcome.FAIL
    assert "does not answer in TLS" in handshake.detail
    assert_skipped(results, NETWORK_CHECKS[1:])


# -- what the coordinator says ------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "direction"), [(120.0, "ahead of"), (-120.0, "behind")])
def test_clock_skew_is_measured_against_the_coordinator(
    offset: float,
    direction: str,
    pki: ConsortiumPki,
    coordinator: RunningCoordinator,
    tmp_path: Path,
) -> None:
    results = run_doctor(
        pki.participant_tls("org-a"),
        target_of(coordinator.port),
        tmp_path,
        clock=lambda: time.time() + offset,
    )

    clock = results[doctor.CLOCK]
    assert clock.outcome is Outcome.FAIL
    match = re.search(rf"this clock is ([0-9.]+) s {direction} the coordinator's", clock.detail)
    assert match is not None, clock.detail
    assert abs(float(match.group(1)) - 120.0) < 5.0
    assert "NTP" in clock.fix
    # The skew is the only problem: membership is still judged from the same answer.
    assert results[doctor.MEMBERSHIP].outcome is Outcome.PASS


def test_pending_membership_is_a_warning_naming_the_approve_command(
    pki: ConsortiumPki,
    start_test_coordinator: Callable[..., RunningCoordinator],
    tmp_path: Path,
) -> None:
    running = start_test_coordinator(auto_approve=False)
    target = target_of(running.port)
    tls = pki.participant_tls("org-b")

    results = run_doctor(tls, target, tmp_path)

    membership = results[doctor.MEMBERSHIP]
    assert membership.outcome is Outcome.WARN and membership.ok
    assert "pending" in membership.detail
    assert membership.fix == (
        "ask the consortium admin to run `fedsilo participants approve org-b`"
    )
    assert all(r.ok for r in results.values())  # a warning does not fail the preflight

    # Following the advice clears the warning.
    with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
        assert admin.approve_participant("org-b").status == "active"
    assert run_doctor(tls, target, tmp_path)[doctor.MEMBERSHIP].outcome is Outcome.PASS


def test_revoked_certificate_is_explained(
    pki: ConsortiumPki, coordinator: RunningCoordinator, admin: AdminClient, tmp_path: Path
) -> None:
    tls = pki.participant_tls("org-a")
    admin.revoke_certificate(format(pki_lib.load_certificate(tls.cert).serial_number, "x"))

    results = run_doctor(tls, target_of(coordinator.port), tmp_path)

    # TLS still completes (revocation is enforced per call); every call is then refused.
    assert results[doctor.TLS_HANDSHAKE].outcome is Outcome.PASS
    identity = results[doctor.IDENTITY]
    assert identity.outcome is Outcome.FAIL
    assert "UNAUTHENTICATED: this certificate has been revoked" in identity.detail
    assert "fedsilo pki csr --org org-a" in identity.fix
    assert results[doctor.COORDINATOR_HEALTH].outcome is Outcome.FAIL
    assert_skipped(results, (doctor.CLOCK, doctor.MEMBERSHIP))


def test_revoked_membership_is_explained(
    pki: ConsortiumPki, coordinator: RunningCoordinator, admin: AdminClient, tmp_path: Path
) -> None:
    tls = pki.participant_tls("org-c")
    target = target_of(coordinator.port)
    assert run_doctor(tls, target, tmp_path)[doctor.MEMBERSHIP].outcome is Outcome.PASS
    assert admin.revoke_participant("org-c").status == "revoked"

    results = run_doctor(tls, target, tmp_path)

    assert results[doctor.COORDINATOR_HEALTH].outcome is Outcome.PASS
    identity = results[doctor.IDENTITY]
    assert identity.outcome is Outcome.FAIL
    assert "PERMISSION_DENIED" in identity.detail and "revoked" in identity.detail
    assert "consortium admins" in identity.fix
    assert_skipped(results, (doctor.CLOCK, doctor.MEMBERSHIP))


# -- this organization's data ------------------------------------------------------------------


def test_a_partition_that_does_not_exist_fails_the_task_data_check(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    results = run_doctor(
        pki.participant_tls("org-a"),
        target_of(free_port()),
        tmp_path,
        task_config={"partition": 7, "num_partitions": 3},
    )

    task_data = results[doctor.TASK_DATA]
    assert task_data.outcome is Outcome.FAIL
    assert "task digits" in task_data.detail and "partition" in task_data.detail
    assert "task_config" in task_data.fix


def test_an_unknown_task_fails_the_task_data_check(pki: ConsortiumPki, tmp_path: Path) -> None:
    results = run_doctor(
        pki.participant_tls("org-a"), target_of(free_port()), tmp_path, tasks=("digitz",)
    )

    task_data = results[doctor.TASK_DATA]
    assert task_data.outcome is Outcome.FAIL
    assert "'digitz' is not installed" in task_data.detail
