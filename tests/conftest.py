"""Shared fixtures: a throwaway PostgreSQL cluster for the tests marked ``postgres``, and
SQLite coordinator databases copied from one made at the newest schema once per session.

The cluster is started once per session (initdb + pg_ctl, about a second) and every test that
asks for ``fresh_postgres_url`` gets its own database on it. A missing server is a failure, not a
skip: CI installs PostgreSQL (scripts/ensure-test-packages.sh), and a silently skipped contract
suite would hide a broken backend.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

PG_USER = "postgres"
START_ATTEMPTS = 3
COMMAND_TIMEOUT_S = 60


def _pg_bin_dir() -> Path | None:
    """FEDSILO_PG_BIN, else Debian's versioned directory (15 first), else initdb on PATH."""
    configured = os.environ.get("FEDSILO_PG_BIN")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path("/usr/lib/postgresql/15/bin"))
    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; the tests usually do.
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *args]
    return args


def _run(args: list[str], what: str) -> None:
    result = subprocess.run(
        _as_postgres(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _server_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL cluster that lives for the test session."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found under "
            "/usr/lib/postgresql/*/bin or on PATH; install the 'postgresql' package "
            "(scripts/ensure-test-packages.sh) or set FEDSILO_PG_BIN"
        )
    # Not under pytest's tmp_path: its parents are mode 0700 and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="fedsilo-pg-"))
    data_dir = root / "data"
    log_file = root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER, PG_USER)
    started = False
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-A",
                "trust",
                "-U",
                PG_USER,
                "-E",
                "UTF8",
                "-D",
                str(data_dir),
            ],
            "initdb",
        )
        port = 0
        for _attempt in range(START_ATTEMPTS):
            # A free port can be taken between the probe and the server's bind: try again.
            port = _free_port()
            options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            result = subprocess.run(
                _as_postgres(
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data_dir),
                        "-l",
                        str(log_file),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        str(COMMAND_TIMEOUT_S),
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S + 10,
                check=False,
            )
            if result.returncode == 0:
                started = True
                break
        if not started:
            log = log_file.read_text() if log_file.exists() else ""
            pytest.fail(f"pg_ctl start failed {START_ATTEMPTS} times; server log:\n{log}")
        yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            pid = _server_pid(data_dir)
            stop = subprocess.run(
                _as_postgres(
                    [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"]
                ),
                capture_output=True,
                timeout=COMMAND_TIMEOUT_S + 10,
                check=False,
            )
            if stop.returncode != 0 and pid is not None:
                # The server we started did not stop cleanly: end it by its pid.
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session cluster, dropped after the test."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    admin_dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty coordinator database at the newest schema, made once per session.

    Creating the schema on a new file runs every migration (about a quarter of a second, mostly
    fsyncs); tests that only need a coordinator start on a copy instead. Migrations themselves
    are tested on their own (tests/unit/coordinator/persistence/test_migrations.py).
    """
    from coordinator.persistence.store import Store  # only where a coordinator is needed

    path = tmp_path_factory.mktemp("schema") / "coordinator.db"
    Store(f"sqlite:///{path}").close()
    return path


@pytest.fixture
def new_coordinator_db(migrated_sqlite: Path) -> Callable[[Path], str]:
    """Factory: a copy of :func:`migrated_sqlite` at ``path`` (through SQLite's backup API,
    consistent whatever the journal mode); returns its URL."""

    def make(path: Path) -> str:
        with (
            closing(sqlite3.connect(migrated_sqlite)) as src,
            closing(sqlite3.connect(path)) as dst,
        ):
            src.backup(dst)
        return f"sqlite:///{path}"

    return make


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended: stands for a writer that died mid-write."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(ended.stdout)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the chaos test injected and survived (tests/system/test_chaos.py).

    Here, not in tests/system/conftest.py: under pytest-xdist the controlling process prints the
    summary and loads only this conftest; the lines come with the test's report from its worker.
    The key is ``netns.CHAOS_REPORT_KEY``.
    """
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, lines in getattr(report, "user_properties", ()):
                if key == "chaos_report":
                    for line in lines:
                        terminalreporter.write_line(line)
