"""AES-256-GCM: test vectors of the GCM specification (McGrew & Viega), tampering, bad inputs."""

from __future__ import annotations

import pytest

from secagg.errors import DecryptionFailed, InvalidInput
from secagg.primitives.aead import NONCE_BYTES, TAG_BYTES, decrypt, encrypt

# "The Galois/Counter Mode of Operation (GCM)", test cases 13, 14 and 16 (AES-256).
VECTORS = [
    ("0" * 64, "0" * 24, "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    (
        "0" * 64,
        "0" * 24,
        "0" * 32,
        "",
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
    ),
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]


@pytest.mark.parametrize(("key", "iv", "plaintext", "aad", "ciphertext", "tag"), VECTORS)
def test_gcm_spec_vectors(
    key: str, iv: str, plaintext: str, aad: str, ciphertext: str, tag: str
) -> None:
    nonce = bytes.fromhex(iv)
    sealed = encrypt(
        bytes.fromhex(key), bytes.fromhex(plaintext), bytes.fromhex(aad), lambda n: nonce[:n]
    )
    assert sealed == nonce + bytes.fromhex(ciphertext + tag)
    assert decrypt(bytes.fromhex(key), sealed, bytes.fromhex(aad)) == bytes.fromhex(plaintext)


KEY = bytes(range(32))
AD = b"job|round|a|b"


def _sealed() -> bytes:
    return encrypt(KEY, b"secret share", AD, lambda n: b"\x07" * n)


def test_layout_is_nonce_ciphertext_tag() -> None:
    assert len(_sealed()) == NONCE_BYTES + len(b"secret share") + TAG_BYTES


@pytest.mark.parametrize("position", [0, NONCE_BYTES, NONCE_BYTES + 5, -1])
def test_any_flipped_bit_fails(position: int) -> None:
    sealed = bytearray(_sealed())
    sealed[position] ^= 0x01
    with pytest.raises(DecryptionFailed, match="authentication"):
        decrypt(KEY, bytes(sealed), AD)


def test_wrong_associated_data_or_key_fails() -> None:
    with pytest.raises(DecryptionFailed):
        decrypt(KEY, _sealed(), AD + b"x")
    with pytest.raises(DecryptionFailed):
        decrypt(bytes(32), _sealed(), AD)


def test_too_short_ciphertext_fails() -> None:
    with pytest.raises(DecryptionFailed, match="too short"):
        decrypt(KEY, bytes(NONCE_BYTES + TAG_BYTES - 1), AD)


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        encrypt(bytes(16), b"x", AD, lambda n: bytes(n))
