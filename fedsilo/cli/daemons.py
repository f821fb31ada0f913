"""Daemons as child processes stopped by their own pid, readiness polled with a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fedsilo.errors import FedsiloError

__all__ = ["Process", "WaitTimeout", "fedsilo_command", "wait_for"]

T = TypeVar("T")


class WaitTimeout(FedsiloError, TimeoutError):
    """A polled condition did not hold before its deadline."""


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll condition until it returns a truthy value (returned), or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def fedsilo_command(*arguments: str) -> list[str]:
    """The ``fedsilo`` command with ``arguments``, run by this interpreter (so on this code)."""
    return [sys.executable, "-m", "fedsilo", *arguments]


class Process:
    """A child process we started; stopped by its own pid only."""

    def __init__(
        self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )

    def stop(self, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return int(self.popen.returncode)
