"""Named crash points for fault-injection tests (docs/design.md, "Fault injection").

A process started with ``FEDSILO_FAULT_AT=<point>`` kills itself with SIGKILL the first time it
reaches that point: no cleanup, no flushing, exactly like a power cut. Unset (production), a
crash point is one dictionary lookup. Every point is listed here so tests can loop over them.

A process started with ``FEDSILO_PAUSE_AT=<point>`` and ``FEDSILO_PAUSE_FILE=<path>`` instead
stops at the point the first time it reaches it: it writes its pid to the file and carries on
once the file is removed. A test uses it to act at an exact moment of the protocol (cut the
network of an organization that has just sent its shares, say) without racing the process.
"""

from __future__ import annotations

import os
import signal
import time

from fedsilo.errors import FedsiloError

__all__ = [
    "ENV_VAR",
    "PAUSE_ENV_VAR",
    "PAUSE_FILE_ENV_VAR",
    "POINTS",
    "UnknownCrashPoint",
    "crash_point",
]

ENV_VAR = "FEDSILO_FAULT_AT"
PAUSE_ENV_VAR = "FEDSILO_PAUSE_AT"
PAUSE_FILE_ENV_VAR = "FEDSILO_PAUSE_FILE"
_PAUSE_POLL_S = 0.02

POINTS: dict[str, str] = {
    **{
        f"coordinator.secagg.after_{phase}_commit": (
            f"the coordinator committed a {phase} submission, before acknowledging it"
        )
        for phase in ("keys", "shares", "inputs", "consistency", "unmask")
    },
    "coordinator.secagg.before_aggregated": (
        "the coordinator unmasked the sum and stored the model blob, before the round moved on"
    ),
    "coordinator.plain.after_update_commit": (
        "the coordinator committed an update of a round without protection, before acknowledging it"
    ),
    "coordinator.ceremony.after_commit": (
        "the coordinator committed a new key-ceremony message, before acknowledging it"
    ),
    "participant.secagg.before_inputs": (
        "a participant's masked input is saved and about to be sent for the first time"
    ),
    "participant.secagg.after_keys": "a participant's KEYS message was acknowledged",
    "participant.secagg.after_shares": "a participant's SHARES message was acknowledged",
    "participant.secagg.after_inputs": (
        "a participant's masked input (Paillier-encrypted in a paillier job) was acknowledged"
    ),
    "participant.secagg.after_consistency": "a participant's CONSISTENCY message was acknowledged",
    "participant.secagg.after_unmask": "a participant's UNMASK message was acknowledged",
    # Key ceremony (participant/service/key_ceremony.py): reached after each acknowledged
    # message of a step, once the outbox without it is saved, so a process dies after the
    # step's first message. A restarted daemon re-sending its outbox reaches none of them.
    "participant.ceremony.after_advertise": "a participant's signed job key was acknowledged",
    "participant.ceremony.after_deal": (
        "the dealer's signed public key was acknowledged; the sealed keys and its confirmation "
        "are still in its saved outbox"
    ),
    "participant.ceremony.after_seal": (
        "a key holder's private key sealed for late joiners was acknowledged"
    ),
    "participant.ceremony.after_receive": (
        "a participant's confirmation of the key it opened was acknowledged"
    ),
}


class UnknownCrashPoint(FedsiloError, ValueError):
    """A crash point name that :data:`POINTS` does not declare (a typo in the code or a test)."""


_paused: set[str] = set()


def crash_point(name: str) -> None:
    """SIGKILL this process if ``FEDSILO_FAULT_AT`` names this point; pause here (once) if
    ``FEDSILO_PAUSE_AT`` does."""
    if name not in POINTS:
        raise UnknownCrashPoint(f"unknown crash point {name!r}")
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV_VAR) == name and name not in _paused:
        _paused.add(name)
        _pause(os.environ[PAUSE_FILE_ENV_VAR])


def _pause(path: str) -> None:
    # Written whole, then renamed: whoever waits for the file never reads a partial pid.
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="ascii") as out:
        out.write(f"{os.getpid()}\n")
    os.replace(partial, path)
    while os.path.exists(path):
        time.sleep(_PAUSE_POLL_S)
