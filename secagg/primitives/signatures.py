"""Signatures with an organization key: ECDSA P-256/SHA-256 (fedsilo's org keys) or Ed25519.

ECDSA signatures are DER-encoded and deterministic (RFC 6979), so signing the same message twice
gives the same bytes. Verification takes a public key object; the caller extracts it from the
peer's certificate, which the consortium CA issued (Bonawitz 2017, active-adversary model: the
PKI binds each participant's signing key to its identity).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secagg.errors import InvalidInput, InvalidSignature

__all__ = ["SigningKey", "VerifyingKey", "sign", "verify", "verifying_key"]

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def sign(key: SigningKey, message: bytes) -> bytes:
    """Sign ``message`` (already a canonical encoding) with an organization key."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key.curve)
        return key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    raise InvalidInput("signing keys must be EC P-256 or Ed25519")


def verify(key: VerifyingKey, signature: bytes, message: bytes) -> None:
    """Return if ``signature`` on ``message`` is valid for ``key``; else raise InvalidSignature."""
    if not isinstance(signature, bytes):
        raise InvalidSignature("the signature is not bytes")
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
            return
        if isinstance(key, ec.EllipticCurvePublicKey):
            _check_curve(key.curve)
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            return
    except (_CryptographyInvalidSignature, ValueError):
        raise InvalidSignature("the signature does not verify") from None
    raise InvalidInput("verifying keys must be EC P-256 or Ed25519")


def verifying_key(public_key: object) -> VerifyingKey:
    """Narrow a certificate's public key to a supported verifying key, or raise InvalidInput."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        _check_curve(public_key.curve)
        return public_key
    raise InvalidInput("organization keys must be EC P-256 or Ed25519")


def _check_curve(curve: ec.EllipticCurve) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise InvalidInput(f"EC organization keys must be on P-256, not {curve.name}")
