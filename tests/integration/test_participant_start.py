"""``fedsilo participant run`` refuses to start with a certificate the coordinator would refuse,
and refuses a state directory another live daemon holds; real processes, loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from inproc_consortium import ConsortiumPki, free_port, target_of
from test_doctor import write_participant_files

from fedsilo.tls import TlsFiles
from participant.service.state_lock import LOCK_FILENAME, StateDirInUse, StateDirLock

# A refusal happens before any network call; this bounds a slow interpreter start on a busy CI.
EXIT_DEADLINE_S = 60.0


def _config(tmp_path: Path, tls: TlsFiles, state_dir: Path) -> Path:
    path = tmp_path / "participant.yaml"
    path.write_text(
        f"coordinator: {target_of(free_port())}\n"  # nothing listens: the daemon would retry
        f"state_dir: {state_dir}\n"
        "tls:\n"
        f"  ca_cert: {tls.ca_cert}\n"
        f"  cert: {tls.cert}\n"
        f"  key: {tls.key}\n"
    )
    return path


def _run_participant(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "fedsilo.cli", "participant", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE_S,
        check=False,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    output = " ".join((result.stdout + result.stderr).split())  # undo the console's wrapping
    assert result.returncode == 2, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, output


def test_an_expired_certificate_stops_the_daemon_at_start(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    tls = write_participant_files(pki, tmp_path, valid_days=10, issued_days_ago=30)
    result = _run_participant(_config(tmp_path, tls, tmp_path / "state"))
    _assert_refused(result, "certificate check failed", "expired on", "fedsilo pki csr")
    assert not (tmp_path / "state").exists()  # nothing was started or written


def test_a_certificate_not_valid_yet_stops_the_daemon_at_start(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    tls = write_participant_files(pki, tmp_path, valid_days=10, issued_days_ago=-3)
    result = _run_participant(_config(tmp_path, tls, tmp_path / "state"))
    _assert_refused(result, "certificate check failed", "not valid before", "clock")


def test_a_certificate_from_another_ca_stops_the_daemon_at_start(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    result = _run_participant(_config(tmp_path, pki.foreign_tls(), tmp_path / "state"))
    _assert_refused(result, "certificate check failed", "evil consortium CA")


def test_a_second_daemon_on_one_state_dir_exits_naming_the_holder(
    pki: ConsortiumPki, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    config = _config(tmp_path, pki.participant_tls("org-a"), state_dir)
    with StateDirLock(state_dir):
        result = _run_participant(config)
    _assert_refused(result, f"state_dir {state_dir} is in use by pid {os.getpid()}")

    # Released (as the kernel does when a holder dies): a daemon starts and takes the lock.
    daemon = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "fedsilo.cli", "participant", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + EXIT_DEADLINE_S
        while (state_dir / LOCK_FILENAME).read_text().strip() != str(daemon.pid):
            assert daemon.poll() is None, "the daemon exited instead of taking the free lock"
            assert time.monotonic() < deadline, "the daemon never took the state_dir lock"
            time.sleep(0.05)  # polling the lock file with a deadline, not waiting blind
        with pytest.raises(StateDirInUse, match=f"in use by pid {daemon.pid}"):
            StateDirLock(state_dir).__enter__()
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=EXIT_DEADLINE_S) == 0


def test_the_lock_is_exclusive_and_released_on_exit(tmp_path: Path) -> None:
    with StateDirLock(tmp_path):
        with pytest.raises(StateDirInUse, match=f"pid {os.getpid()}"), StateDirLock(tmp_path):
            pass
    with StateDirLock(tmp_path):  # free again
        assert (tmp_path / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
