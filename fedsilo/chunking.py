"""Chunked streaming of large payloads under a small gRPC message cap, with size and hash checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from fedsilo.errors import FedsiloError

__all__ = ["CHUNK_BYTES", "MAX_MESSAGE_BYTES", "ChunkError", "assemble", "split"]

# Every gRPC message stays far below the cap, so one member cannot make a server buffer a huge
# message; whole payloads are limited separately by the receiver (max_payload_bytes).
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 4 << 20


class ChunkError(FedsiloError, ValueError):
    """A chunk stream is longer than announced, shorter, or does not match its hash."""


def split(payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield consecutive slices of at most chunk_bytes (one empty chunk for an empty payload)."""
    if chunk_bytes <= 0:
        raise ChunkError("chunk_bytes must be positive")
    view = memoryview(payload)
    if not view:
        yield b""
        return
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


def assemble(chunks: Iterable[bytes], total_bytes: int, sha256: bytes) -> bytes:
    """Join chunks, failing as soon as they exceed total_bytes; then check size and hash."""
    buffer = bytearray()
    digest = hashlib.sha256()
    for chunk in chunks:
        if len(buffer) + len(chunk) > total_bytes:
            raise ChunkError(f"stream exceeds the announced {total_bytes} bytes")
        buffer += chunk
        digest.update(chunk)
    if len(buffer) != total_bytes:
        raise ChunkError(f"stream ended after {len(buffer)} of {total_bytes} bytes")
    if digest.digest() != sha256:
        raise ChunkError("stream SHA-256 does not match the announced hash")
    return bytes(buffer)
