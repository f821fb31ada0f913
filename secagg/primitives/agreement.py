"""X25519 key agreement with raw 32-byte keys (Bonawitz 2017: KA.gen and KA.agree)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from secagg.errors import InvalidInput
from secagg.primitives.randomness import RandomSource, random_bytes

__all__ = [
    "KEY_BYTES",
    "AgreementKeyPair",
    "generate_key_pair",
    "public_key_of",
    "shared_secret",
    "shared_secrets",
]

KEY_BYTES = 32


@dataclass(frozen=True)
class AgreementKeyPair:
    """An X25519 key pair as raw bytes; the private half never appears in ``repr``."""

    private_key: bytes = field(repr=False)
    public_key: bytes


def generate_key_pair(random: RandomSource) -> AgreementKeyPair:
    """A fresh key pair whose private key is 32 bytes from ``random`` (clamped by X25519)."""
    private = random_bytes(random, KEY_BYTES)
    return AgreementKeyPair(private, public_key_of(private))


def public_key_of(private_key: bytes) -> bytes:
    """The raw public key of a raw private key."""
    key = _private(private_key)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def shared_secret(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519(private, peer public); never used directly as a key, always through HKDF."""
    return shared_secrets(private_key, [peer_public_key])[0]


def shared_secrets(private_key: bytes, peer_public_keys: Sequence[bytes]) -> list[bytes]:
    """:func:`shared_secret` with many peers, loading the private key once."""
    private = _private(private_key)
    secrets = []
    for peer_public_key in peer_public_keys:
        if not isinstance(peer_public_key, bytes) or len(peer_public_key) != KEY_BYTES:
            raise InvalidInput(f"an X25519 public key is {KEY_BYTES} bytes")
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public_key)
        try:
            secrets.append(private.exchange(peer))
        except ValueError:
            # A low-order point gives the all-zero secret, which OpenSSL refuses: a malicious key.
            raise InvalidInput("the peer public key is a low-order point") from None
    return secrets


def _private(private_key: bytes) -> x25519.X25519PrivateKey:
    if not isinstance(private_key, bytes) or len(private_key) != KEY_BYTES:
        raise InvalidInput(f"an X25519 private key is {KEY_BYTES} bytes")
    return x25519.X25519PrivateKey.from_private_bytes(private_key)
