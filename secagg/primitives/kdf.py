"""HKDF-SHA256 (RFC 5869) with an explicit salt and info for every derived key."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import InvalidInput

__all__ = ["DEFAULT_KEY_BYTES", "derive_key"]

DEFAULT_KEY_BYTES = 32
_MAX_OUTPUT = 255 * 32


def derive_key(
    input_key: bytes, *, salt: bytes, info: bytes, length: int = DEFAULT_KEY_BYTES
) -> bytes:
    """HKDF-SHA256(salt, input_key, info, length); the caller always states salt and info."""
    if not 1 <= length <= _MAX_OUTPUT:
        raise InvalidInput(f"HKDF-SHA256 output length must be 1..{_MAX_OUTPUT} bytes")
    if not all(isinstance(part, bytes) for part in (input_key, salt, info)):
        raise InvalidInput("HKDF input key, salt and info must be bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(input_key)
