"""Integration fixtures: an in-process coordinator over real mutual TLS, raw stubs and daemons.

Everything talks gRPC over 127.0.0.1 with certificates from a test consortium CA
(docs/fault-matrix.md#test-harnesses, "In-process gRPC"). Every channel, daemon thread and
server a fixture starts is closed, stopped and joined at teardown (warnings are errors).
Nothing sleeps to wait: conditions are polled with a deadline.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.persistence.blobs import BlobStore
from coordinator.transport.server import (
    ParticipantServicerFactory,
    RunningCoordinator,
    start_coordinator,
)
from coordinator.transport.servicers import ParticipantServicer
from fedsilo.admin import AdminClient
from fedsilo.config import (
    AcceptSection,
    BackoffSection,
    CoordinatorConfig,
    DatabaseSection,
    LimitsSection,
    ParticipantConfig,
    TlsSection,
)
from fedsilo.pki import DemoPki, IssuedFiles, Role, create_ca, issue, make_demo_pki
from fedsilo.tls import TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from participant.main import build_daemon

# pytest imports test modules with --import-mode=importlib, which does not put this directory on
# sys.path; the daemons load the test task by its "module:attr" spec, so it must be importable.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from inproc_consortium import (  # noqa: E402
    ORGS,
    RPC_TIMEOUT_S,
    ConsortiumPki,
    DaemonThread,
    initial_weights,
    open_round,
    shift_job_spec,
    target_of,
    wait_for_job,
)
from integration_shift_task import ORG_SETTINGS, TASK_SPEC  # noqa: E402

# -- PKI -------------------------------------------------------------------------------------------


_PKI_DIRS = ("pki", "foreign-ca", "foreign")


@pytest.fixture(scope="session")
def pki_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ConsortiumPki]:
    """The consortium's keys and certificates, made once per session (each test gets a copy)."""
    root = tmp_path_factory.mktemp("pki-template")
    demo = make_demo_pki(root / "pki", list(ORGS))
    foreign_ca = create_ca("evil consortium CA")
    foreign_ca_files = foreign_ca.save(root / "foreign-ca")
    foreign_org_a = issue(foreign_ca, "org-a", Role.PARTICIPANT, root / "foreign")
    return root, ConsortiumPki(demo, foreign_ca_files.cert_path, foreign_org_a)


@pytest.fixture
def pki(pki_template: tuple[Path, ConsortiumPki], tmp_path: Path) -> ConsortiumPki:
    """A private copy of the session's consortium PKI under ``tmp_path``: a test may renew or
    damage its files (rotation, revocation) without touching another test's."""
    root, made = pki_template
    for name in _PKI_DIRS:
        shutil.copytree(root / name, tmp_path / name)

    def moved(path: Path) -> Path:
        return tmp_path / path.relative_to(root)

    def moved_files(files: IssuedFiles) -> IssuedFiles:
        return IssuedFiles(moved(files.cert_path), moved(files.key_path))

    demo = made.demo
    return ConsortiumPki(
        DemoPki(
            ca_cert=moved(demo.ca_cert),
            ca_key=moved(demo.ca_key),
            coordinator=moved_files(demo.coordinator),
            participants={org: moved_files(f) for org, f in demo.participants.items()},
            admin=moved_files(demo.admin),
            membership_list=moved(demo.membership_list),
        ),
        moved(made.foreign_ca_cert),
        moved_files(made.foreign_org_a),
    )


# -- coordinator -----------------------------------------------------------------------------------


@pytest.fixture
def start_test_coordinator(
    pki: ConsortiumPki, tmp_path: Path, new_coordinator_db: Callable[[Path], str]
) -> Iterator[Callable[..., RunningCoordinator]]:
    """Factory: start a coordinator on 127.0.0.1:<port> (0 = any); all are stopped at teardown.

    ``tick_seconds`` is how often the round driver runs on its own; deadlines are also applied
    whenever a submission or a job start triggers a tick.
    """
    started: list[RunningCoordinator] = []

    def start(
        port: int = 0,
        tick_seconds: float = 0.05,
        *,
        auto_approve: bool = True,
        max_calls_per_org: int = 16,
        data_dir: Path | None = None,
        database_url: str | None = None,
        participant_servicer: ParticipantServicerFactory = ParticipantServicer,
        health_listen: str = "",
        max_workers: int = 32,
        reserved_workers: int = 0,
        stream_idle_seconds: float = 30.0,
        metrics_listen: str = "",
        tensorboard_dir: Path | None = None,
        publish_membership: bool = True,
        max_payload_bytes: int = 1 << 30,
        spool_bytes_per_org: int = 0,
        max_concurrent_rpcs: int = 256,
    ) -> RunningCoordinator:
        if data_dir is None:
            data_dir = tmp_path / ("coordinator" if not started else f"coordinator-{len(started)}")
        if database_url is None and not (data_dir / "coordinator.db").exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            new_coordinator_db(data_dir / "coordinator.db")
        config = CoordinatorConfig(
            listen=f"127.0.0.1:{port}",
            data_dir=data_dir,
            database=DatabaseSection(
                url=database_url or f"sqlite:///{data_dir / 'coordinator.db'}"
            ),
            tls=TlsSection(
                ca_cert=pki.demo.ca_cert,
                cert=pki.demo.coordinator_cert,
                key=pki.demo.coordinator_key,
            ),
            limits=LimitsSection(
                liveness_seconds=60.0,
                max_calls_per_org=max_calls_per_org,
                max_workers=max_workers,
                reserved_workers=reserved_workers,
                stream_idle_seconds=stream_idle_seconds,
                max_payload_bytes=max_payload_bytes,
                spool_bytes_per_org=spool_bytes_per_org,
                max_concurrent_rpcs=max_concurrent_rpcs,
            ),
            tick_seconds=tick_seconds,
            # Membership approval has its own tests; elsewhere every consortium member is admitted.
            auto_approve=auto_approve,
            health_listen=health_listen,
            metrics_listen=metrics_listen,
            tensorboard_dir=tensorboard_dir,
        )
        running = start_coordinator(config, participant_servicer)
        started.append(running)
        if publish_membership:
            # As an operator does after approving the organizations: the CA's list (serial 1)
            # admitting every consortium member, without which participants answer no secure
            # work (docs/configuration.md, require_membership_list).
            target = target_of(running.port)
            with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as client:
                client.publish_membership_list(pki.demo.membership_list.read_bytes())
        return running

    yield start
    for running in started:
        running.stop(grace=1)


@pytest.fixture
def coordinator(
    request: pytest.FixtureRequest, start_test_coordinator: Callable[..., RunningCoordinator]
) -> RunningCoordinator:
    """The test's coordinator; ``@pytest.mark.parametrize("coordinator", [{...}], indirect=True)``
    passes keyword arguments to the factory (e.g. ``tick_seconds``)."""
    return start_test_coordinator(0, **getattr(request, "param", {}))


@pytest.fixture
def blob_refs(coordinator: RunningCoordinator, tmp_path: Path) -> Callable[[], list[str]]:
    """Everything in the coordinator's content-addressed blob store right now."""
    blobs = BlobStore(tmp_path / "coordinator" / "blobs")
    return blobs.refs


@pytest.fixture
def target(coordinator: RunningCoordinator) -> str:
    return target_of(coordinator.port)


@pytest.fixture
def admin(pki: ConsortiumPki, target: str) -> Iterator[AdminClient]:
    with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as client:
        yield client


# -- raw channels and stubs ------------------------------------------------------------------------


@pytest.fixture
def open_channel(target: str) -> Iterator[Callable[..., grpc.Channel]]:
    """Factory: a secure channel to the coordinator with the given TLS files; closed at teardown.

    No message size options are set on purpose: a raw client must be able to send what the
    product's own clients would refuse to send, so the server's limits are what is tested.
    """
    channels: list[grpc.Channel] = []

    def open_(tls: TlsFiles, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        channel = grpc.secure_channel(target, channel_credentials(tls), options=options or [])
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        channel.close()


@pytest.fixture
def participant_channel(
    pki: ConsortiumPki, open_channel: Callable[..., grpc.Channel]
) -> Callable[[str], grpc.Channel]:
    """Factory: a secure channel presenting the certificate of one organization."""
    return lambda org: open_channel(pki.participant_tls(org))


@pytest.fixture
def participant_stub(
    participant_channel: Callable[[str], grpc.Channel],
) -> Callable[[str], pb_grpc.ParticipantServiceStub]:
    """Factory: a raw ParticipantService stub authenticated as one organization."""
    return lambda org: pb_grpc.ParticipantServiceStub(participant_channel(org))


@pytest.fixture
def health_check(
    pki: ConsortiumPki, open_channel: Callable[..., grpc.Channel]
) -> Callable[[], int]:
    """Calls grpc.health.v1 Check("") on a fresh admin channel; returns the status enum."""

    def check() -> int:
        stub = health_pb2_grpc.HealthStub(open_channel(pki.admin_tls()))
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
        return int(response.status)

    return check


# -- jobs ------------------------------------------------------------------------------------------


@pytest.fixture
def register(
    participant_stub: Callable[[str], pb_grpc.ParticipantServiceStub],
) -> Callable[..., None]:
    """Make organizations known (and live) to the coordinator with one non-waiting GetTask."""

    def register_(*orgs: str) -> None:
        for org in orgs:
            participant_stub(org).GetTask(pb.GetTaskRequest(wait_seconds=0), timeout=RPC_TIMEOUT_S)

    return register_


@pytest.fixture
def running_round(
    admin: AdminClient, register: Callable[..., None]
) -> Callable[..., tuple[str, pb.RoundStatus]]:
    """Factory: register orgs, create and start a shift job, return (job_id, its open round)."""

    def start(
        orgs: tuple[str, ...] = ORGS,
        min_participants: int | None = None,
        round_timeout_seconds: float = 60.0,
        num_rounds: int = 1,
    ) -> tuple[str, pb.RoundStatus]:
        register(*orgs)
        spec = shift_job_spec(
            num_rounds=num_rounds,
            min_participants=len(orgs) if min_participants is None else min_participants,
            round_timeout_seconds=round_timeout_seconds,
        )
        job_id = admin.create_job(spec, initial_weights()).job_id
        admin.start_job(job_id)
        status = wait_for_job(admin, job_id, lambda s: open_round(s) is not None, "a round")
        round_ = open_round(status)
        assert round_ is not None
        assert sorted(round_.cohort) == sorted(orgs)
        return job_id, round_

    return start


# -- participant daemons in threads ----------------------------------------------------------------


@pytest.fixture
def run_daemon(pki: ConsortiumPki, tmp_path: Path) -> Iterator[Callable[..., DaemonThread]]:
    """Factory: start org's daemon against a target; every daemon is stopped and joined after."""
    daemons: list[DaemonThread] = []

    def start(
        org: str,
        target: str,
        poll_seconds: float = 1.0,
        backoff: BackoffSection = BackoffSection(initial_seconds=0.05, max_seconds=0.5),
        accept: AcceptSection | None = None,
    ) -> DaemonThread:
        tls = pki.participant_tls(org)
        config = ParticipantConfig(
            coordinator=target,
            state_dir=tmp_path / "participants" / org,
            tls=TlsSection(ca_cert=tls.ca_cert, cert=tls.cert, key=tls.key),
            tasks=dict(TASK_SPEC),
            task_config=dict(ORG_SETTINGS[org]),
            poll_seconds=poll_seconds,
            rpc_timeout_seconds=RPC_TIMEOUT_S,
            backoff=backoff,
            accept=accept or AcceptSection(),
        )
        stop = threading.Event()
        daemon, channels = build_daemon(config, stop)
        channel = channels.current()
        errors: list[BaseException] = []

        def body() -> None:
            try:
                daemon.run()
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)

        thread = threading.Thread(target=body, name=f"daemon-{org}", daemon=True)
        running = DaemonThread(org, stop, channel, thread, errors)  # type: ignore[arg-type]
        daemons.append(running)
        thread.start()
        return running

    yield start
    stuck = [d.org for d in daemons if not d.stop()]
    for d in daemons:
        d.channel.close()
    assert not stuck, f"daemon threads did not stop: {stuck}"
    failures = [(d.org, repr(e)) for d in daemons for e in d.errors]
    assert not failures, f"daemon threads raised: {failures}"
