"""Schema checks over real processes: serve refuses an older or newer database; migrate fixes it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from coordinator.persistence import migrate
from coordinator.persistence.store import Store
from fedsilo.cli.daemons import Process, fedsilo_command, wait_for

HEAD = migrate.head_revision()  # the newest revision this code ships

pytestmark = pytest.mark.system


def _coordinator_config(root: Path) -> Path:
    path = root / "coordinator.yaml"
    config = {"listen": "127.0.0.1:0", "data_dir": str(root / "data"), "tls": {"insecure": True}}
    path.write_text(yaml.safe_dump(config))
    return path


def _database_at(root: Path, revision: str) -> str:
    """The coordinator's default database, built at the newest revision and taken down to one."""
    (root / "data").mkdir()
    url = f"sqlite:///{root / 'data' / 'coordinator.db'}"
    Store(url).close()
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    try:
        with engine.begin() as conn:
            if revision in {"0001", "0002"}:
                config.attributes["connection"] = conn
                command.downgrade(config, revision)
            else:  # a revision only a newer release knows
                conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()
    return url


def _serve(root: Path, name: str, env: dict[str, str] | None = None) -> Process:
    args = fedsilo_command(
        "coordinator",
        "serve",
        "--config",
        str(root / "coordinator.yaml"),
        "--port-file",
        str(root / f"{name}.port"),
    )
    return Process("coordinator", args, root / f"{name}.log", env)


def _refused(process: Process) -> str:
    """The one line a coordinator that refused to serve logged (it must exit 1 quickly)."""
    assert process.popen.wait(timeout=60) == 1
    process.stop()
    lines = process.log_path.read_text().splitlines()
    errors = [line for line in lines if "cannot serve" in line]
    assert len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    return errors[0]


def _serves_then_stops(process: Process, port_file: Path) -> None:
    try:
        wait_for(lambda: port_file.exists() or process.popen.poll() is not None, 60, "serving")
        assert port_file.exists(), process.log_path.read_text()
    finally:
        assert process.stop() == 0, process.log_path.read_text()


def test_older_database_is_refused_until_fedsilo_coordinator_migrate(tmp_path: Path) -> None:
    config = _coordinator_config(tmp_path)
    url = _database_at(tmp_path, "0002")
    line = _refused(_serve(tmp_path, "refused"))
    assert f"database revision 0002 is older than this fedsilo's {HEAD}" in line
    assert "run `fedsilo coordinator migrate --config COORDINATOR.yaml`" in line
    assert migrate.current_revision(url) == "0002"

    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        fedsilo_command("coordinator", "migrate", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"database schema: revision 0002 upgraded to revision {HEAD}\n"
    assert migrate.current_revision(url) == HEAD
    _serves_then_stops(_serve(tmp_path, "migrated"), tmp_path / "migrated.port")


def test_auto_migrate_upgrades_at_start(tmp_path: Path) -> None:
    _coordinator_config(tmp_path)
    url = _database_at(tmp_path, "0001")
    env = {"FEDSILO_DATABASE_AUTO_MIGRATE": "true"}
    _serves_then_stops(_serve(tmp_path, "auto", env), tmp_path / "auto.port")
    assert migrate.current_revision(url) == HEAD
    assert f"revision 0001 upgraded to revision {HEAD}" in (tmp_path / "auto.log").read_text()


def test_newer_database_is_refused_with_both_revisions(tmp_path: Path) -> None:
    _coordinator_config(tmp_path)
    url = _database_at(tmp_path, "0042")
    for name, env in (("plain", None), ("auto", {"FEDSILO_DATABASE_AUTO_MIGRATE": "true"})):
        line = _refused(_serve(tmp_path, name, env))
        assert (
            f"database schema revision 0042 is newer than this fedsilo, whose newest is {HEAD}"
            in line
        )
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0042"
    engine.dispose()
