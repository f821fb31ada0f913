"""One daemon per state directory: an exclusive lock held for the daemon's lifetime.

Two daemons on one ``state_dir`` would overwrite each other's round secrets and answers. The
lock is ``fcntl.flock`` on ``state_dir/daemon.lock``, which the kernel releases when the process
dies however it dies, so a crashed daemon never leaves a stale lock behind. The file holds the
owner's pid, only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from participant.errors import LocalStateError

__all__ = ["LOCK_FILENAME", "StateDirInUse", "StateDirLock"]

LOCK_FILENAME = "daemon.lock"


class StateDirInUse(LocalStateError):
    """Another live process holds this state directory."""


class StateDirLock:
    """``with StateDirLock(state_dir):`` -- raises :class:`StateDirInUse` if another holds it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._fd: int | None = None

    def __enter__(self) -> StateDirLock:
        path = self.state_dir / LOCK_FILENAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateDirInUse(
                f"state_dir {self.state_dir} is in use by pid {owner}: one daemon per state "
                "directory (stop that daemon, or give this one its own state_dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            # Closing releases the lock; the file stays (removing it would race a new owner).
            os.close(self._fd)
            self._fd = None
