"""What the doctor reports: the check names, one result per check, and the verdict helpers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "CERTIFICATE",
    "CHECKS",
    "CLOCK",
    "CONFIGURATION",
    "COORDINATOR_HEALTH",
    "DEFAULT_TIMEOUT_S",
    "EXIT_BAD_CONFIG",
    "EXIT_CHECK_FAILED",
    "EXIT_OK",
    "EXPIRY_WARNING_DAYS",
    "IDENTITY",
    "MAX_CLOCK_SKEW_S",
    "MEMBERSHIP",
    "NAME_RESOLUTION",
    "RENEW_FIX",
    "TCP_CONNECTION",
    "TLS_HANDSHAKE",
    "CheckResult",
    "Outcome",
    "Verdict",
    "failed",
    "format_days",
    "format_when",
    "passed",
    "skipped_result",
    "unreadable",
    "warned",
]

DEFAULT_TIMEOUT_S = 5.0
EXPIRY_WARNING_DAYS = 14
# Round deadlines are set and enforced on the coordinator's clock; a participant whose clock is
# far off misjudges how long it has, and certificate validity is checked on both clocks.
MAX_CLOCK_SKEW_S = 30.0

CONFIGURATION = "configuration"
CERTIFICATE = "certificate"
NAME_RESOLUTION = "name resolution"
TCP_CONNECTION = "tcp connection"
TLS_HANDSHAKE = "tls handshake"
COORDINATOR_HEALTH = "coordinator health"
IDENTITY = "identity"
CLOCK = "clock"
MEMBERSHIP = "membership"
TASK_DATA = "task data"

CHECKS = (
    CONFIGURATION,
    CERTIFICATE,
    NAME_RESOLUTION,
    TCP_CONNECTION,
    TLS_HANDSHAKE,
    COORDINATOR_HEALTH,
    IDENTITY,
    CLOCK,
    MEMBERSHIP,
    TASK_DATA,
)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_CONFIG = 2

RENEW_FIX = (
    "make a new key and CSR (`fedsilo pki csr --org {org} --role participant --out DIR`), have "
    "the consortium CA sign it (`fedsilo pki sign`), and point tls.cert and tls.key at the new "
    "files"
)


class Outcome(StrEnum):
    """How one check ended."""

    PASS = "pass"  # noqa: S105 - an outcome, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One line of the diagnosis. ``ok`` is true for passes and warnings."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False
    skipped: bool = False

    def __post_init__(self) -> None:
        if self.warning and not self.ok:
            raise ValueError("a warning is a passing check (ok=True)")
        if self.skipped and self.ok:
            raise ValueError("a skipped check did not pass (ok=False)")

    @property
    def outcome(self) -> Outcome:
        if self.skipped:
            return Outcome.SKIPPED
        if not self.ok:
            return Outcome.FAIL
        return Outcome.WARN if self.warning else Outcome.PASS

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.outcome.value,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
        }


class Verdict(NamedTuple):
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False


def passed(detail: str) -> Verdict:
    return Verdict(True, detail)


def warned(detail: str, fix: str) -> Verdict:
    return Verdict(True, detail, fix, warning=True)


def failed(detail: str, fix: str) -> Verdict:
    return Verdict(False, detail, fix)


def skipped_result(name: str, because: str) -> CheckResult:
    return CheckResult(name, False, f"not run: the {because} check did not pass", skipped=True)


def unreadable(key: str, path: Path, what: str, exc: Exception) -> Verdict:
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = f"not a PEM {what}"
    return failed(
        f"{key}: cannot use {path}: {reason}",
        f"point {key} at the PEM {what} file (`fedsilo pki show` reads certificates)",
    )


def format_when(moment: dt.datetime) -> str:
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def format_days(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    if abs(days) >= 1:
        return f"{int(days)} day{'' if int(days) == 1 else 's'}"
    return f"{int(delta.total_seconds() // 3600)} hours"
