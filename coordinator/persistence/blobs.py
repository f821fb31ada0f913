"""Content-addressed blob store: files named by SHA-256 under the data dir, fsync'd on write.

A blob is written to a temporary file and renamed into place (``write_atomic``); a process
killed mid-write leaves that temporary file, which the next process to open the store removes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from coordinator.errors import NotFound, StorageUnavailable
from fedsilo.files import atomic_write_owner, remove_orphaned, write_atomic

__all__ = ["BlobStore"]

log = logging.getLogger("coordinator")

_REF = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Immutable blobs keyed by the hex SHA-256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self._root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"blob store directory is not usable: {exc.strerror}") from exc
        removed = remove_orphaned(self.temporary_files(), atomic_write_owner)
        if removed:
            log.info("removed %d unfinished blob write(s) left by an earlier run", removed)

    @property
    def root(self) -> Path:
        return self._root

    def _path(self, ref: str) -> Path:
        if not _REF.fullmatch(ref):
            raise NotFound("unknown blob reference")
        return self._root / ref[:2] / ref

    def put(self, data: bytes) -> str:
        """Store data durably (write, fsync, rename, fsync dir); return its reference."""
        ref = hashlib.sha256(data).hexdigest()
        path = self._path(ref)
        if path.exists():
            return ref
        try:
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, data, sync_directory=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write to the blob store: {exc.strerror}") from exc
        return ref

    def put_file(self, path: Path, sha256: bytes) -> str:
        """Store the file at ``path`` (whose SHA-256 the caller checked) by moving it in, without
        reading it into memory; the file is gone afterwards either way."""
        ref = sha256.hex()
        target = self._path(ref)
        try:
            if target.exists():
                path.unlink(missing_ok=True)
                return ref
            target.parent.mkdir(exist_ok=True)
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            # Same file system (the spool lives beside the blobs): an atomic rename, no copy.
            os.replace(path, target)
            _sync_directory(target.parent)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise StorageUnavailable(f"cannot write to the blob store: {exc.strerror}") from exc
        return ref

    def get(self, ref: str) -> bytes:
        path = self._path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound("blob is missing from the blob store") from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read the blob store: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != ref:
            raise StorageUnavailable("blob store content is corrupted")
        return data

    def stream(self, ref: str, chunk_bytes: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """A blob's size and its bytes in chunks, read as they are consumed: a reader holds one
        chunk, not the blob. Corruption (a hash that no longer matches the name) is found only
        at the end, and raised there."""
        path = self._path(ref)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound("blob is missing from the blob store") from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read the blob store: {exc.strerror}") from exc

        def chunks() -> Iterator[bytes]:
            digest = hashlib.sha256()
            try:
                with path.open("rb") as handle:
                    while chunk := handle.read(chunk_bytes):
                        digest.update(chunk)
                        yield chunk
            except OSError as exc:
                raise StorageUnavailable(f"cannot read the blob store: {exc.strerror}") from exc
            if digest.hexdigest() != ref:
                raise StorageUnavailable("blob store content is corrupted")

        return size, chunks()

    def delete(self, ref: str) -> None:
        try:
            self._path(ref).unlink(missing_ok=True)
        except OSError:
            pass  # an orphaned blob wastes space but breaks nothing

    def temporary_files(self) -> list[Path]:
        """Blob writes in progress now, or left unfinished by a killed process."""
        return sorted(self._root.glob("??/.*.tmp"))

    def refs(self) -> list[str]:
        return sorted(p.name for p in self._root.glob("??/*") if _REF.fullmatch(p.name))


def _sync_directory(directory: Path) -> None:
    """Make a rename into ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
