"""A consortium spread over network namespaces this test creates, for partitions and slow links.

Topology: the coordinator runs in its own namespace; each organization runs in another, joined
to the coordinator's by its own veth pair (organization ``i``: 10.213.i.2 on its side, 10.213.i.1
on the coordinator's). Traffic only ever flows between these namespaces: the test process in the
root namespace never dials them (a down link would send such packets out of the machine); every
admin call runs inside the coordinator's namespace (``netns_admin.py``). A partition is the
organization's end of its link set down; a slow link is a ``tc tbf`` qdisc on both ends.
Everything is deleted at the end, after each process we started is stopped by its pid.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from coordinator_settings import coordinator_settings

from fedsilo.cli.daemons import Process
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = ["CHAOS_REPORT_KEY", "NetConsortium", "PORT", "pg_bin_dir"]

CHAOS_REPORT_KEY = "chaos_report"
"""The user property holding the lines the chaos test reports; printed in the session's terminal
summary (conftest.py). A property travels with the test's report, also from an xdist worker."""

HERE = Path(__file__).resolve().parent
PORT = 50051  # each namespace has its own ports: nothing else can hold this one
PG_PORT = 5432
PG_USER = "postgres"
COMMAND_TIMEOUT_S = 120.0
_serial = itertools.count(1)


def _ip(*args: str) -> None:
    result = subprocess.run(  # noqa: S603 - iproute2 with our own arguments
        ["ip", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _tc(namespace: str, *args: str) -> None:
    result = subprocess.run(  # noqa: S603
        ["tc", "-n", namespace, *args], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} failed: {result.stderr.strip()}")


def pg_bin_dir() -> Path:
    """The PostgreSQL server binaries (installed by scripts/ensure-test-packages.sh)."""
    configured = os.environ.get("FEDSILO_PG_BIN")
    candidates = [Path(configured)] if configured else []
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    if on_path := shutil.which("initdb"):
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise AssertionError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found: "
        "run scripts/ensure-test-packages.sh"
    )


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; these tests run as root (namespaces need it).
    return ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else args


@dataclass
class NetConsortium:
    """A coordinator and organizations as processes, each in its own network namespace."""

    root: Path
    orgs: list[str]
    task_spec: dict[str, str]
    task_configs: dict[str, dict[str, Any]]
    participant_settings: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)
    postgres_dir: Path | None = None

    def __post_init__(self) -> None:
        tag = f"fs{os.getpid() % 100_000}{next(_serial)}"
        self.coordinator_ns = f"{tag}-c"
        self.org_ns = {org: f"{tag}-{i}" for i, org in enumerate(self.orgs, 1)}
        self.org_link = {org: f"{tag}o{i}" for i, org in enumerate(self.orgs, 1)}
        self.coordinator_link = {org: f"{tag}c{i}" for i, org in enumerate(self.orgs, 1)}
        self.coordinator_ip = {org: f"10.213.{i}.1" for i, org in enumerate(self.orgs, 1)}
        self.pki: DemoPki = make_demo_pki(
            self.root / "pki",
            self.orgs,
            coordinator_ips=["127.0.0.1", *self.coordinator_ip.values()],
        )

    # -- the network ---------------------------------------------------------------------------

    def create_network(self) -> None:
        for namespace in (self.coordinator_ns, *self.org_ns.values()):
            _ip("netns", "add", namespace)
            self.namespaces.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        for i, org in enumerate(self.orgs, 1):
            ns, link, peer = self.org_ns[org], self.org_link[org], self.coordinator_link[org]
            _ip("-n", ns, "link", "add", link, "type", "veth", "peer", "name", peer, "netns",
                self.coordinator_ns)  # fmt: skip
            _ip("-n", ns, "addr", "add", f"10.213.{i}.2/24", "dev", link)
            _ip("-n", self.coordinator_ns, "addr", "add", f"10.213.{i}.1/24", "dev", peer)
            _ip("-n", ns, "link", "set", link, "up")
            _ip("-n", self.coordinator_ns, "link", "set", peer, "up")

    def partition(self, org: str) -> None:
        """Cut ``org`` off: its end of the link goes down (both ends lose the carrier)."""
        _ip("-n", self.org_ns[org], "link", "set", self.org_link[org], "down")

    def heal(self, org: str) -> None:
        _ip("-n", self.org_ns[org], "link", "set", self.org_link[org], "up")

    def limit_bandwidth(self, org: str, rate: str) -> None:
        """Shape both directions of ``org``'s link to ``rate`` (e.g. ``20mbit``) with tbf."""
        for namespace, link in (
            (self.org_ns[org], self.org_link[org]),
            (self.coordinator_ns, self.coordinator_link[org]),
        ):
            _tc(namespace, "qdisc", "add", "dev", link, "root", "tbf", "rate", rate,
                "burst", "32kb", "latency", "400ms")  # fmt: skip

    # -- PostgreSQL, inside the coordinator's namespace ------------------------------------------

    def start_postgres(self) -> str:
        """A throwaway cluster on the coordinator namespace's loopback; its SQLAlchemy URL."""
        bin_dir = pg_bin_dir()
        # Not under pytest's tmp_path: its parents are mode 0700 and the server runs as postgres.
        root = Path(tempfile.mkdtemp(prefix="fedsilo-netns-pg-"))
        if os.geteuid() == 0:
            shutil.chown(root, PG_USER, PG_USER)
        self.postgres_dir = root
        self._run_postgres(
            [str(bin_dir / "initdb"), "-A", "trust", "-U", PG_USER, "-D", str(root / "data")],
            in_namespace=False,
        )
        options = f"-p {PG_PORT} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-l",
                str(root / "server.log"),
                "-o",
                options,
                "-w",
                "start",
            ],  # fmt: skip
            in_namespace=True,
        )
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{PG_PORT}/postgres"

    def _run_postgres(self, args: list[str], *, in_namespace: bool) -> None:
        command = _as_postgres(args)
        if in_namespace:
            command = self._in(self.coordinator_ns, *command)
        result = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            log = self.postgres_dir / "server.log" if self.postgres_dir else None
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise AssertionError(f"{args[0]} failed: {result.stdout}{result.stderr}\n{tail}")

    def kill_postgres(self) -> None:
        """SIGKILL the PostgreSQL server (a power cut of the database), then start it again."""
        assert self.postgres_dir is not None
        data = self.postgres_dir / "data"
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        # The whole server goes at once, as in a power cut: the postmaster and its backends.
        server = [pid, *_children(pid)]
        for each in server:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while any(_alive(each) for each in server):
            assert time.monotonic() < deadline, "the killed PostgreSQL processes did not exit"
            time.sleep(0.02)
        # A killed postmaster may linger as a zombie until its new parent reaps it, and the
        # server refuses to start while that pid exists: its lock files are stale, remove them.
        (data / "postmaster.pid").unlink()
        (self.postgres_dir / f".s.PGSQL.{PG_PORT}.lock").unlink(missing_ok=True)
        options = f"-p {PG_PORT} -k {self.postgres_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run_postgres(
            [
                str(pg_bin_dir() / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.postgres_dir / "server.log"),
                "-o",
                options,
                "-w",
                "start",
            ],  # fmt: skip
            in_namespace=True,
        )

    def stop_postgres(self) -> None:
        if self.postgres_dir is None:
            return
        data = self.postgres_dir / "data"
        try:
            if (data / "postmaster.pid").exists():
                self._run_postgres(
                    [str(pg_bin_dir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                    in_namespace=True,
                )
        finally:
            shutil.rmtree(self.postgres_dir, ignore_errors=True)
            self.postgres_dir = None

    def delete_network(self) -> None:
        for namespace in reversed(self.namespaces):
            _ip("netns", "delete", namespace)  # its veth ends go with it
        self.namespaces.clear()

    # -- processes -----------------------------------------------------------------------------

    def _in(self, namespace: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *args]

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH", "")
        return {"PYTHONPATH": f"{HERE}{os.pathsep}{path}" if path else str(HERE)}

    def start_coordinator(self, settings: dict[str, Any] | None = None) -> Process:
        config = {
            **coordinator_settings(self.pki, f"0.0.0.0:{PORT}", self.root / "coordinator"),
            **(settings or {}),
        }
        path = self.root / "coordinator.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "fedsilo", "coordinator", "serve", "--config", str(path)]
        process = Process(
            "coordinator",
            self._in(self.coordinator_ns, *command),
            self._log_path("coordinator"),
            self._env(),
        )
        self.processes["coordinator"] = process
        self.admin("wait-serving")
        # The CA's membership list, as an operator publishes it (acknowledged again after a
        # restart: the same list is already published).
        self.admin("publish-membership", str(self.pki.membership_list))
        return process

    def start_participant(self, org: str, env: dict[str, str] | None = None) -> Process:
        files = self.pki.participants[org]
        config = {
            "coordinator": f"{self.coordinator_ip[org]}:{PORT}",
            "state_dir": str(self.root / org),
            "tls": {
                "ca_cert": str(self.pki.ca_cert),
                "cert": str(files.cert_path),
                "key": str(files.key_path),
            },
            "tasks": self.task_spec,
            "task_config": self.task_configs[org],
            "poll_seconds": 2,
            "backoff": {"initial_seconds": 0.1, "max_seconds": 1},
            **self.participant_settings,
        }
        path = self.root / f"{org}.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "fedsilo", "participant", "run", "--config", str(path)]
        process = Process(
            org,
            self._in(self.org_ns[org], *command),
            self._log_path(org),
            {**self._env(), **(env or {})},
        )
        self.processes[org] = process
        return process

    def _log_path(self, name: str) -> Path:
        """``name.log``, then ``name-1.log``, ``name-2.log``, ... for each restart."""
        previous = self.processes.get(name)
        if previous is not None:
            previous.stop()  # ends it if it still runs and closes its log
        count = len(list(self.root.glob(f"{name}*.log")))
        return self.root / (f"{name}.log" if count == 0 else f"{name}-{count}.log")

    def logs(self, name: str) -> str:
        """Every log of ``name``'s processes so far, in order."""
        paths = sorted(self.root.glob(f"{name}*.log"), key=lambda p: p.stat().st_mtime_ns)
        return "".join(path.read_text() for path in paths)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=10)

    # -- the admin, inside the coordinator's namespace -------------------------------------------

    def admin(self, command: str, *args: str) -> str:
        env = {
            **os.environ,
            **self._env(),
            "FEDSILO_ADMIN_CA_CERT": str(self.pki.ca_cert),
            "FEDSILO_ADMIN_CERT": str(self.pki.admin_cert),
            "FEDSILO_ADMIN_KEY": str(self.pki.admin_key),
        }
        script = str(HERE / "netns_admin.py")
        result = subprocess.run(  # noqa: S603
            self._in(
                self.coordinator_ns, sys.executable, script, command, f"127.0.0.1:{PORT}", *args
            ),  # fmt: skip
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"admin {command} failed: {result.stderr[-2000:]}")
        return result.stdout.strip()

    def watch_health(self, out: Path) -> subprocess.Popen[bytes]:
        """Follow the coordinator's Health.Watch stream in the background (statuses to ``out``)."""
        env = {
            **os.environ,
            **self._env(),
            "FEDSILO_ADMIN_CA_CERT": str(self.pki.ca_cert),
            "FEDSILO_ADMIN_CERT": str(self.pki.admin_cert),
            "FEDSILO_ADMIN_KEY": str(self.pki.admin_key),
        }
        script = str(HERE / "netns_admin.py")
        return subprocess.Popen(  # noqa: S603
            self._in(
                self.coordinator_ns,
                sys.executable,
                script,
                "watch-health",
                f"127.0.0.1:{PORT}",
                str(out),
            ),  # fmt: skip
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def sent_bytes(self, org: str) -> int:
        """Bytes ``org`` has sent over its link so far (its interface's counter)."""
        counter = Path(f"/sys/class/net/{self.org_link[org]}/statistics/tx_bytes")
        result = subprocess.run(  # noqa: S603
            self._in(self.org_ns[org], "cat", str(counter)),
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return int(result.stdout)

    def create_job(self, spec: pb.JobSpec, weights: list[npt.NDArray[Any]]) -> str:
        self.admin("wait-orgs", str(len(self.orgs)))
        saved = self.root / "initial-weights.npz"
        np.savez(saved, **{f"w{i}": w for i, w in enumerate(weights)})
        encoded = base64.b64encode(spec.SerializeToString()).decode()
        return self.admin("create-job", encoded, str(saved))

    def status(self, job_id: str) -> pb.JobStatus:
        return pb.JobStatus.FromString(base64.b64decode(self.admin("status", job_id)))

    def models(self, job_id: str) -> dict[int, list[npt.NDArray[Any]]]:
        """Every model version of the job: version -> weights."""
        out = self.root / "models.npz"
        self.admin("models", job_id, str(out))
        versions: dict[int, list[npt.NDArray[Any]]] = {}
        with np.load(out, allow_pickle=False) as saved:
            for key in sorted(saved.files, key=lambda k: tuple(int(x) for x in k[1:].split("_w"))):
                version, _ = (int(x) for x in key[1:].split("_w"))
                versions.setdefault(version, []).append(saved[key])
        return versions

    def model(self, job_id: str, version: int = -1) -> tuple[int, list[npt.NDArray[Any]]]:
        out = self.root / "model.npz"
        version = int(self.admin("model", job_id, str(version), str(out)))
        with np.load(out, allow_pickle=False) as saved:
            return version, [saved[f"w{i}"] for i in range(len(saved.files))]
