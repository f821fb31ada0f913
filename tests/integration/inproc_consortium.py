"""Plain helpers shared by the integration tests and their fixtures (importable, unlike conftest).

pytest runs with ``--import-mode=importlib``, so test modules cannot import ``conftest``;
tests/integration/conftest.py puts this directory on ``sys.path`` so that test modules can import
this module and ``integration_shift_task``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
from integration_shift_task import TASK_NAME, task

from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.pki import DemoPki, IssuedFiles
from fedsilo.tls import TlsFiles
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "ORGS",
    "ConsortiumPki",
    "DaemonThread",
    "POLL_S",
    "RPC_TIMEOUT_S",
    "WAIT_S",
    "free_port",
    "initial_weights",
    "open_round",
    "rpc_error",
    "shift_job_spec",
    "target_of",
    "wait_for_job",
]

ORGS = ("org-a", "org-b", "org-c")
RPC_TIMEOUT_S = 10.0
WAIT_S = 20.0
POLL_S = 0.02


@dataclass(frozen=True)
class ConsortiumPki:
    """The demo consortium plus a certificate for org-a signed by a foreign CA (attack S1)."""

    demo: DemoPki
    foreign_ca_cert: Path
    foreign_org_a: IssuedFiles

    def participant_tls(self, org: str) -> TlsFiles:
        files = self.demo.participants[org]
        return TlsFiles(self.demo.ca_cert, files.cert_path, files.key_path)

    def admin_tls(self) -> TlsFiles:
        return TlsFiles(self.demo.ca_cert, self.demo.admin_cert, self.demo.admin_key)

    def foreign_tls(self) -> TlsFiles:
        # Trusts the real consortium CA (so the client accepts the coordinator), but presents a
        # certificate with the right subject ("org-a", participant) from the wrong CA.
        return TlsFiles(
            self.demo.ca_cert, self.foreign_org_a.cert_path, self.foreign_org_a.key_path
        )


@dataclass
class DaemonThread:
    """One participant daemon running ParticipantDaemon.run() in a thread of this process."""

    org: str
    stop_event: threading.Event
    channel: grpc.Channel
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> bool:
        """Set the stop event (what SIGTERM does) and join; True if the thread ended in time."""
        self.stop_event.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()


def free_port() -> int:
    """A port nothing listens on right now (the kernel hands out a fresh ephemeral one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def target_of(port: int) -> str:
    # The coordinator certificate carries 127.0.0.1 as an IP SAN.
    return f"127.0.0.1:{port}"


def shift_job_spec(
    num_rounds: int = 1,
    min_participants: int = 3,
    round_timeout_seconds: float = 60.0,
    name: str = "shift-job",
) -> pb.JobSpec:
    return pb.JobSpec(
        name=name,
        task_name=TASK_NAME,
        protection=pb.PROTECTION_NONE,
        num_rounds=num_rounds,
        min_participants=min_participants,
        round_timeout_seconds=round_timeout_seconds,
        training=pb.TrainingSettings(local_epochs=1, batch_size=8, learning_rate=0.1, seed=7),
    )


def initial_weights() -> list[npt.NDArray[np.float32]]:
    return [np.asarray(w, dtype=np.float32) for w in task.initial_weights(7)]


def wait_for_job(
    admin: AdminClient,
    job_id: str,
    condition: Callable[[pb.JobStatus], bool],
    what: str,
    timeout: float = WAIT_S,
) -> pb.JobStatus:
    """Poll GetJob until condition holds; returns that status (fails after the deadline)."""

    def check() -> pb.JobStatus | None:
        status = admin.get_job(job_id)
        return status if condition(status) else None

    return wait_for(check, timeout, what, interval=POLL_S)


def open_round(status: pb.JobStatus) -> pb.RoundStatus | None:
    """The round of a job that is collecting inputs, if any."""
    for round_ in status.rounds:
        if round_.phase == pb.ROUND_PHASE_INPUTS:
            return round_
    return None


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run call, which must fail with an RpcError; return the error for its code and details."""
    try:
        result = call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"call succeeded but was expected to fail: {result!r}")
