"""Durable atomic file writes, and removal of the temporary files a killed writer left behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["atomic_write_owner", "remove_orphaned", "write_atomic"]

_TMP_SUFFIX = ".tmp"


def write_atomic(path: Path, data: bytes, *, sync_directory: bool = False) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new one.

    The temporary file is made by ``mkstemp`` next to ``path`` (mode 0600, a name unique per
    writer, hidden: ``.<name>.<pid>-<random>.tmp``), so two writers of one file never write
    through one temporary name, and a later process can tell whether its writer is still alive
    (:func:`atomic_write_owner`). ``sync_directory`` also fsyncs the directory, making the rename
    itself durable (content-addressed stores rely on that).
    """
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=_TMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_directory:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_owner(path: Path) -> int | None:
    """The pid of the process writing the temporary file ``path`` of :func:`write_atomic`; None
    for a name without one (written by an older release: its writer is long gone)."""
    stem = path.name.removesuffix(_TMP_SUFFIX)
    owner = stem.rpartition(".")[2].split("-", 1)[0]
    return int(owner) if owner.isdigit() else None


def remove_orphaned(temporaries: Iterable[Path], owner: Callable[[Path], int | None]) -> int:
    """Remove the temporary files whose writing process (``owner``) is dead; the number removed.

    A file written by another live process sharing the directory is kept. One with this
    process's pid or none is removed: a crashed earlier run may have had this pid, and this
    process has not started writing yet (callers clean up when they open the directory).
    """
    removed = 0
    for path in temporaries:
        pid = owner(path)
        if pid is not None and pid != os.getpid() and _alive(pid):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True
