"""Org-key signatures: RFC 8032 and RFC 6979 vectors, deterministic ECDSA, refusals."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from secagg.errors import InvalidInput, InvalidSignature
from secagg.primitives.signatures import sign, verify, verifying_key

# RFC 8032, section 7.1, TEST 1 (empty message).
ED_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ED_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
ED_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
# RFC 6979, appendix A.2.5: P-256, SHA-256, message "sample".
P256_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
P256_R = 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
P256_S = 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8


def test_rfc8032_ed25519_vector() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(ED_SECRET)
    assert sign(key, b"") == ED_SIGNATURE
    verify(ed25519.Ed25519PublicKey.from_public_bytes(ED_PUBLIC), ED_SIGNATURE, b"")


def test_rfc6979_ecdsa_p256_vector_is_deterministic() -> None:
    key = ec.derive_private_key(P256_KEY, ec.SECP256R1())
    signature = sign(key, b"sample")
    assert decode_dss_signature(signature) == (P256_R, P256_S)
    assert sign(key, b"sample") == signature
    verify(key.public_key(), signature, b"sample")


@pytest.mark.parametrize(
    "key",
    [
        ec.derive_private_key(P256_KEY, ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.from_private_bytes(ED_SECRET),
    ],
    ids=["ecdsa", "ed25519"],
)
def test_wrong_message_key_or_garbage_fails(key: ec.EllipticCurvePrivateKey) -> None:
    signature = sign(key, b"message")
    with pytest.raises(InvalidSignature):
        verify(key.public_key(), signature, b"messagf")
    other = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    with pytest.raises(InvalidSignature):
        verify(other, signature, b"message")
    with pytest.raises(InvalidSignature):
        verify(key.public_key(), b"garbage", b"message")
    with pytest.raises(InvalidSignature, match="not bytes"):
        verify(key.public_key(), "sig", b"message")  # type: ignore[arg-type]


def test_only_p256_and_ed25519_are_accepted() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidInput, match="P-256"):
        sign(p384, b"m")
    with pytest.raises(InvalidInput, match="P-256"):
        verify(p384.public_key(), b"sig", b"m")
    with pytest.raises(InvalidInput, match="P-256"):
        verifying_key(p384.public_key())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidInput, match="EC P-256 or Ed25519"):
        sign(rsa_key, b"m")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="EC P-256 or Ed25519"):
        verify(rsa_key.public_key(), b"sig", b"m")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="EC P-256 or Ed25519"):
        verifying_key(rsa_key.public_key())


def test_verifying_key_narrows_certificate_keys() -> None:
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(ED_SECRET).public_key()
    p256 = ec.derive_private_key(P256_KEY, ec.SECP256R1()).public_key()
    assert verifying_key(ed) is ed
    assert verifying_key(p256) is p256
