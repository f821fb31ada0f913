"""Real processes on loopback: a coordinator and participant daemons, started and ended by pid."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import Process, wait_for
from fedsilo.health import health_serving
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.tls import TlsFiles

# pytest imports test modules with --import-mode=importlib, which does not put this directory on
# sys.path; the tests share the helpers of secure_jobs.py.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from coordinator_settings import coordinator_settings  # noqa: E402  (needs the path above)

LINEAR_TASK = {"digits-linear": "examples.synthetic.task:task"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Consortium:
    """A coordinator and organizations as OS processes in one temporary directory."""

    root: Path
    pki: DemoPki
    port: int
    orgs: list[str]
    processes: dict[str, Process] = field(default_factory=dict)
    database_url: str = ""  # empty: SQLite in the coordinator's data directory
    coordinator_extra: dict[str, Any] = field(default_factory=dict)  # more configuration keys

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    @property
    def admin_tls(self) -> TlsFiles:
        return TlsFiles(self.pki.ca_cert, self.pki.admin_cert, self.pki.admin_key)

    def coordinator_config(self) -> Path:
        path = self.root / "coordinator.yaml"
        if not path.exists():
            config = coordinator_settings(
                self.pki, f"127.0.0.1:{self.port}", self.root / "coordinator"
            )
            if self.database_url:
                config["database"] = {"url": self.database_url}
            config.update(self.coordinator_extra)
            path.write_text(yaml.safe_dump(config))
        return path

    def start_coordinator(self, env: dict[str, str] | None = None) -> Process:
        args = [
            sys.executable,
            "-m",
            "fedsilo",
            "coordinator",
            "serve",
            "--config",
            str(self.coordinator_config()),
        ]
        log = self.root / f"coordinator-{len(self.processes)}.log"
        previous = self.processes.get("coordinator")
        if previous is not None:
            previous.stop()  # ends it if still running and closes its log
        process = Process("coordinator", args, log, env)
        self.processes["coordinator"] = process
        wait_for(lambda: self._serving(process), 60, "the coordinator to serve")
        # The CA's membership list, as an operator publishes it (again after a restart: the
        # same list is acknowledged as already published).
        with self.admin() as client:
            client.publish_membership_list(self.pki.membership_list.read_bytes())
        return process

    def _serving(self, process: Process) -> bool:
        if process.popen.poll() is not None:
            raise AssertionError(f"coordinator exited: {process.log_path.read_text()[-2000:]}")
        return health_serving(self.target, self.admin_tls)

    def participant_config(self, org: str) -> Path:
        """The organization's configuration file (written on first use)."""
        path = self.root / f"{org}.yaml"
        if path.exists():
            return path
        files = self.pki.participants[org]
        config = {
            "coordinator": self.target,
            "state_dir": str(self.root / org),
            "tls": {
                "ca_cert": str(self.pki.ca_cert),
                "cert": str(files.cert_path),
                "key": str(files.key_path),
            },
            "tasks": LINEAR_TASK,
            "task_config": {"partition": self.orgs.index(org), "num_partitions": len(self.orgs)},
            "poll_seconds": 2,
            "backoff": {"initial_seconds": 0.1, "max_seconds": 1},
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def start_participant(self, org: str, env: dict[str, str] | None = None) -> Process:
        path = self.participant_config(org)
        args = [sys.executable, "-m", "fedsilo", "participant", "run", "--config", str(path)]
        previous = self.processes.get(org)
        log = self.root / f"{org}.log"
        if previous is not None:
            previous.stop()  # ends it if still running and closes its log
            log = self.root / f"{org}-restart-{len(list(self.root.glob(f'{org}*.log')))}.log"
        process = Process(org, args, log, env)
        self.processes[org] = process
        return process

    def admin(self) -> AdminClient:
        return AdminClient(self.target, self.admin_tls)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=10)


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    orgs = ["org-1", "org-2", "org-3"]
    pki = make_demo_pki(tmp_path / "pki", orgs)
    group = Consortium(tmp_path, pki, free_port(), orgs)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def five_organizations(tmp_path: Path) -> Iterator[Consortium]:
    orgs = ["org-1", "org-2", "org-3", "org-4", "org-5"]
    group = Consortium(tmp_path, make_demo_pki(tmp_path / "pki", orgs), free_port(), orgs)
    try:
        yield group
    finally:
        group.stop_all()
