"""Named crash points: unknown names are bugs; a named point SIGKILLs only when asked to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsilo import faults
from participant.service.key_ceremony import ACTIONS


def test_unknown_point_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown crash point"):
        faults.crash_point("participant.nowhere")


def test_a_point_does_nothing_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV_VAR, "participant.secagg.after_keys")
    faults.crash_point("participant.secagg.after_shares")  # another point: no effect
    monkeypatch.delenv(faults.ENV_VAR)
    faults.crash_point("participant.secagg.after_keys")


def test_every_key_ceremony_step_has_a_crash_point() -> None:
    assert {f"participant.ceremony.after_{action}" for action in ACTIONS} <= set(faults.POINTS)


@pytest.mark.system
@pytest.mark.parametrize("point", sorted(faults.POINTS))
def test_the_named_point_kills_the_process(point: str) -> None:
    code = f"from fedsilo import faults; faults.crash_point({point!r}); print('survived')"
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code],
        env={**os.environ, faults.ENV_VAR: point},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL
    assert "survived" not in result.stdout


@pytest.mark.system
def test_a_pause_point_waits_until_its_file_is_removed(tmp_path: Path) -> None:
    pause_file = tmp_path / "paused"
    code = (
        "from fedsilo import faults\n"
        "faults.crash_point('participant.secagg.after_shares')\n"
        "print('resumed', flush=True)\n"
        "faults.crash_point('participant.secagg.after_shares')\n"  # only the first time
        "print('passed again', flush=True)\n"
    )
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", code],
        env={
            **os.environ,
            faults.PAUSE_ENV_VAR: "participant.secagg.after_shares",
            faults.PAUSE_FILE_ENV_VAR: str(pause_file),
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not pause_file.exists():
            assert process.poll() is None, "the process ran past its pause point"
            assert time.monotonic() < deadline, "the process never reached its pause point"
            time.sleep(0.02)
        assert pause_file.read_text() == f"{process.pid}\n"
        assert process.poll() is None  # still paused: the file is there
        pause_file.unlink()
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert out == "resumed\npassed again\n"
    assert process.returncode == 0
