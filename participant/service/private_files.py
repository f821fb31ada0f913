"""Files only this organization's daemon may read: directories 0700, files 0600, atomic writes.

A file is written to a temporary file next to it, fsync'd and renamed over the old one, so a
crash leaves the old content or the new one, never a mix. The daemon's state files hold round
secrets and keys; they are treated like the organization's private key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedsilo.files import atomic_write_owner, remove_orphaned, write_atomic

__all__ = [
    "is_safe_name",
    "private_directory",
    "read_private_json",
    "remove_orphaned_writes",
    "remove_private",
    "write_private",
]

T = TypeVar("T")

# Ids are UUIDs; anything else must not reach the file system as a path component.
_SAFE_NAME = re.compile(r"[A-Za-z0-9-]{1,64}\Z")


def is_safe_name(value: object) -> bool:
    """Whether an id may name a file: 1 to 64 ASCII letters, digits and hyphens."""
    return isinstance(value, str) and _SAFE_NAME.match(value) is not None


def private_directory(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it mode 0700; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkdir leaves an existing directory's mode alone and is subject to the umask.
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, mode 0600.

    The temporary file is unique per writer (``mkstemp``, mode 0600): two writers of one file,
    e.g. the daemon and an export reading the same model chain, never write through one name.
    """
    write_atomic(path, data)


def remove_private(path: Path) -> None:
    """Delete ``path`` and any temporary file a writer of it left behind (e.g. at a crash)."""
    path.unlink(missing_ok=True)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def remove_orphaned_writes(state_dir: Path) -> int:
    """Remove, anywhere under ``state_dir``, the temporary files of writers that died mid-write
    (a daemon killed while saving its ledger, say); the number removed.

    Called by the daemon once it holds the state directory's lock, before it writes anything.
    A temporary file of another live process (an export writing the model chain) is kept.
    """
    return remove_orphaned(state_dir.rglob(".*.tmp"), atomic_write_owner)


def read_private_json(path: Path, decode: Callable[[Any], T], damaged: Exception) -> T | None:
    """``decode`` of the JSON document in ``path``; None if there is no such file.

    A file that is not valid JSON, or that ``decode`` rejects, raises ``damaged``; the content
    is never echoed (these files hold secrets).
    """
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
