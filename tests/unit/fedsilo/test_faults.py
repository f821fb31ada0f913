"""Named crash points: unknown names are bugs; a named point SIGKILLs only when asked to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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
