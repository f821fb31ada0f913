"""Durable atomic file writes: a private temporary file, fsync, rename over the target."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, *, sync_directory: bool = False) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new one.

    The temporary file is made by ``mkstemp`` next to ``path`` (mode 0600, a name unique per
    writer, hidden: ``.<name>.<random>.tmp``), so two writers of one file never write through
    one temporary name. ``sync_directory`` also fsyncs the directory, making the rename itself
    durable (content-addressed stores rely on that).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
