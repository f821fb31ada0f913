"""The upload spool: payloads written to a private file chunk by chunk, never held in memory.

An upload may be as large as ``max_payload_bytes`` and an organization may hold several at once,
so the coordinator keeps at most one chunk of each stream in memory: every chunk goes straight
to a file beside the blob store, its SHA-256 computed as it passes, the announced size enforced
as soon as it is exceeded. The file is removed when the upload is refused, cancelled or stalls,
and once it has been used; a process killed mid-upload leaves files that the next start removes.

Memory is bounded that way, disk by two budgets: the bytes one organization's uploads in flight
may hold, and the bytes all of them may hold. An upload's announced size is reserved before its
first payload byte is read, and refused (``SpoolFull``) when it does not fit; the reservation
ends with the spool file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from coordinator.errors import SpoolFull, StorageUnavailable
from fedsilo.chunking import ChunkError
from fedsilo.files import remove_orphaned

__all__ = ["SpooledUpload", "UploadSpool"]

log = logging.getLogger("coordinator")

_PREFIX = "upload-"
_SUFFIX = ".part"


class SpooledUpload:
    """One received payload in its spool file: size and SHA-256 already checked; removed on
    ``close`` (or leaving a ``with`` block)."""

    def __init__(
        self,
        path: Path,
        total_bytes: int,
        sha256: bytes,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.total_bytes = total_bytes
        self.sha256 = sha256
        self._on_close = on_close

    def read(self) -> bytes:
        """The whole payload (for the callers that need it as one bytes object)."""
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise StorageUnavailable(f"cannot read a spooled upload: {exc.strerror}") from exc

    def open(self) -> io.BufferedReader:
        """The payload as a file to read from the start (the caller closes it)."""
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise StorageUnavailable(f"cannot read a spooled upload: {exc.strerror}") from exc

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self) -> SpooledUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class UploadSpool:
    """A directory of uploads being received; files of dead processes are removed at start.

    ``owner_budget_bytes`` bounds what one owner's (organization's) uploads in flight may hold,
    ``total_budget_bytes`` what all of them may hold; None: no bound.
    """

    def __init__(
        self,
        root: Path,
        *,
        owner_budget_bytes: int | None = None,
        total_budget_bytes: int | None = None,
    ) -> None:
        self._root = root
        self._owner_budget = owner_budget_bytes
        self._total_budget = total_budget_bytes
        self._held: dict[str, int] = {}
        self._held_lock = threading.Lock()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror
            raise StorageUnavailable(f"upload spool directory is not usable: {reason}") from exc
        self._remove_stale()

    @property
    def root(self) -> Path:
        return self._root

    def files(self) -> list[Path]:
        """The spool files present now (in flight, or left by a killed process)."""
        return sorted(self._root.glob(f"{_PREFIX}*{_SUFFIX}"))

    def held_bytes(self, owner: str | None = None) -> int:
        """The bytes reserved now by ``owner``'s uploads in flight (None: by everyone's)."""
        with self._held_lock:
            if owner is None:
                return sum(self._held.values())
            return self._held.get(owner, 0)

    def receive(
        self, chunks: Iterable[bytes], total_bytes: int, sha256: bytes, owner: str = ""
    ) -> SpooledUpload:
        """Write ``chunks`` to a new spool file, failing as soon as they exceed ``total_bytes``;
        then check the size and hash. The file is removed on every failure, including a client
        that cancels or stalls (the iterator raises) and a full disk.

        ``total_bytes`` is reserved in ``owner``'s budget and the total one before the first
        chunk is read (``SpoolFull`` if it does not fit), until the returned upload is closed.
        """
        self._reserve(owner, total_bytes)
        try:
            return self._receive(
                chunks, total_bytes, sha256, lambda: self._release(owner, total_bytes)
            )
        except BaseException:
            self._release(owner, total_bytes)
            raise

    def _reserve(self, owner: str, total_bytes: int) -> None:
        with self._held_lock:
            mine = self._held.get(owner, 0)
            if self._owner_budget is not None and mine + total_bytes > self._owner_budget:
                raise SpoolFull(
                    f"uploads of this organization in flight hold {mine} bytes of its "
                    f"{self._owner_budget}-byte spool budget; this one ({total_bytes} bytes) "
                    "must wait until they end"
                )
            everyone = sum(self._held.values())
            if self._total_budget is not None and everyone + total_bytes > self._total_budget:
                raise SpoolFull(
                    "the coordinator's upload spool is full for now; send this upload again later"
                )
            self._held[owner] = mine + total_bytes

    def _release(self, owner: str, total_bytes: int) -> None:
        with self._held_lock:
            left = self._held.get(owner, 0) - total_bytes
            if left > 0:
                self._held[owner] = left
            else:
                self._held.pop(owner, None)

    def _receive(
        self,
        chunks: Iterable[bytes],
        total_bytes: int,
        sha256: bytes,
        on_close: Callable[[], None],
    ) -> SpooledUpload:
        try:
            fd, name = tempfile.mkstemp(
                dir=self._root, prefix=f"{_PREFIX}{os.getpid()}-", suffix=_SUFFIX
            )
        except OSError as exc:
            raise _unwritable(exc) from exc
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                received, digest = _write_chunks(handle, chunks, total_bytes)
                _flushed(handle)
            if received != total_bytes:
                raise ChunkError(f"stream ended after {received} of {total_bytes} bytes")
            if digest != sha256:
                raise ChunkError("stream SHA-256 does not match the announced hash")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return SpooledUpload(path, total_bytes, digest, on_close)

    def _remove_stale(self) -> None:
        """Remove what an earlier process (killed mid-upload) left: its uploads will never be
        used. Files of another live process sharing the directory are kept."""
        removed = remove_orphaned(self.files(), _owner_pid)
        if removed:
            log.info("removed %d upload(s) left in the spool by an earlier run", removed)


def _write_chunks(handle: BinaryIO, chunks: Iterable[bytes], total_bytes: int) -> tuple[int, bytes]:
    """Write chunks through ``handle``; the bytes written and their SHA-256."""
    digest = hashlib.sha256()
    received = 0
    for chunk in _bounded(chunks, total_bytes):
        digest.update(chunk)
        try:
            handle.write(chunk)
        except OSError as exc:
            raise _unwritable(exc) from exc
        received += len(chunk)
    return received, digest.digest()


def _flushed(handle: BinaryIO) -> None:
    try:
        handle.flush()
    except OSError as exc:
        raise _unwritable(exc) from exc


def _unwritable(exc: OSError) -> StorageUnavailable:
    """A full or failing disk; errors of the stream itself pass through unchanged."""
    return StorageUnavailable(f"cannot write to the upload spool: {exc.strerror}")


def _bounded(chunks: Iterable[bytes], total_bytes: int) -> Iterator[bytes]:
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > total_bytes:
            raise ChunkError(f"stream exceeds the announced {total_bytes} bytes")
        yield chunk


def _owner_pid(path: Path) -> int | None:
    pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
    return int(pid) if pid.isdigit() else None
