"""AES-256-GCM with associated data; the random 12-byte nonce is prepended to the ciphertext."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg.errors import DecryptionFailed, InvalidInput
from secagg.primitives.randomness import RandomSource, random_bytes

__all__ = ["KEY_BYTES", "NONCE_BYTES", "TAG_BYTES", "decrypt", "encrypt"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes, random: RandomSource) -> bytes:
    """Return ``nonce || AES-256-GCM(key, nonce, plaintext, associated_data) || tag``."""
    nonce = random_bytes(random, NONCE_BYTES)
    return nonce + _cipher(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Invert :func:`encrypt`; any tampering or a wrong key or associated data fails."""
    if not isinstance(ciphertext, bytes) or len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("ciphertext is too short")
    try:
        return _cipher(key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], associated_data
        )
    except InvalidTag:
        raise DecryptionFailed("AES-GCM authentication failed") from None


def _cipher(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise InvalidInput(f"an AES-256-GCM key is {KEY_BYTES} bytes")
    return AESGCM(key)
