"""The key ceremony: signed job keys, a signed public key, private keys sealed per receiver."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secagg.errors import DecryptionFailed, InvalidInput, InvalidSignature
from secagg.paillier import PaillierPrivateKey, PaillierPublicKey
from secagg.paillier.ceremony import (
    DealtKey,
    JobKey,
    SealedKey,
    make_job_key,
    open_private_key,
    seal_private_key,
    sign_public_key,
)

JOB = "job-1"
ORGS = ("org-a", "org-b", "org-c")


@pytest.fixture(scope="module")
def org_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {org: ec.generate_private_key(ec.SECP256R1()) for org in ORGS}


def test_every_receiver_opens_the_dealers_key(
    private_key: PaillierPrivateKey, org_keys: dict[str, ec.EllipticCurvePrivateKey]
) -> None:
    pairs, job_keys = {}, {}
    for org in ORGS:
        pairs[org], job_keys[org] = make_job_key(JOB, org, org_keys[org], os.urandom)
        assert JobKey.from_bytes(job_keys[org].to_bytes()) == job_keys[org]
    dealt = sign_public_key(JOB, "org-a", private_key.public_key, org_keys["org-a"])
    dealt = DealtKey.from_bytes(dealt.to_bytes())
    public = dealt.verify(JOB, org_keys["org-a"].public_key())
    assert public.fingerprint == private_key.public_key.fingerprint
    for receiver in ("org-b", "org-c"):
        job_keys[receiver].verify(JOB, org_keys[receiver].public_key())
        sealed = seal_private_key(
            JOB, private_key, "org-a", pairs["org-a"], job_keys[receiver], os.urandom
        )
        sealed = SealedKey.from_bytes(sealed.to_bytes())
        opened = open_private_key(JOB, sealed, pairs[receiver], job_keys["org-a"], public)
        assert opened.to_bytes() == private_key.to_bytes()


def test_tampering_is_detected(
    private_key: PaillierPrivateKey,
    other_private_key: PaillierPrivateKey,
    org_keys: dict[str, ec.EllipticCurvePrivateKey],
) -> None:
    pair_a, key_a = make_job_key(JOB, "org-a", org_keys["org-a"], os.urandom)
    pair_b, key_b = make_job_key(JOB, "org-b", org_keys["org-b"], os.urandom)
    pair_c, _ = make_job_key(JOB, "org-c", org_keys["org-c"], os.urandom)
    sealed = seal_private_key(JOB, private_key, "org-a", pair_a, key_b, os.urandom)
    public = private_key.public_key
    # Another receiver, another job or another public key: the channel does not open.
    with pytest.raises(DecryptionFailed):
        open_private_key(JOB, sealed, pair_c, key_a, public)
    with pytest.raises(DecryptionFailed):
        open_private_key("job-2", sealed, pair_b, key_a, public)
    with pytest.raises(DecryptionFailed):
        open_private_key(JOB, sealed, pair_b, key_a, other_private_key.public_key)
    flipped = SealedKey(sealed.sender, sealed.receiver, sealed.ciphertext[:-1] + b"\x00")
    with pytest.raises(DecryptionFailed, match="sealed by 'org-a'") as raised:
        open_private_key(JOB, flipped, pair_b, key_a, public)
    assert raised.value.sender == "org-a"
    # A job key or public key signed by someone else, or for another job, does not verify.
    with pytest.raises(InvalidSignature):
        key_a.verify(JOB, org_keys["org-b"].public_key())
    with pytest.raises(InvalidSignature):
        key_a.verify("job-2", org_keys["org-a"].public_key())
    dealt = sign_public_key(JOB, "org-a", public, org_keys["org-a"])
    swapped = DealtKey("org-a", other_private_key.public_key.to_bytes(), dealt.signature)
    with pytest.raises(InvalidSignature):
        swapped.verify(JOB, org_keys["org-a"].public_key())
    with pytest.raises(InvalidInput):
        seal_private_key(JOB, private_key, "org-a", pair_a, key_a, os.urandom)


@pytest.mark.parametrize("kind", [JobKey, DealtKey, SealedKey])
def test_garbage_is_refused(kind: type[JobKey] | type[DealtKey] | type[SealedKey]) -> None:
    with pytest.raises(InvalidInput):
        kind.from_bytes(b"\x00\x00\x00\x03abc")
    with pytest.raises(InvalidInput):
        kind.from_bytes(b"")


def test_a_dealt_key_with_a_weak_randomizer_base_is_refused_naming_its_dealer(
    private_key: PaillierPrivateKey, org_keys: dict[str, ec.EllipticCurvePrivateKey]
) -> None:
    p, q, n = private_key.p, private_key.q, private_key.public_key.n
    # h = -9 mod p, -1 mod q: h_s = h^n has order 2 modulo q (docs/paillier.md, Validation).
    h = (-9 * q * pow(q, -1, p) - p * pow(p, -1, q)) % n
    weak_public = PaillierPublicKey(n, pow(h, n, n * n))
    # A dealer's code that skips the checks: the key is built without PaillierPrivateKey's own.
    weak = object.__new__(PaillierPrivateKey)
    for name, value in (("p", p), ("q", q), ("public_key", weak_public)):
        object.__setattr__(weak, name, value)
    pair_a, key_a = make_job_key(JOB, "org-a", org_keys["org-a"], os.urandom)
    pair_b, key_b = make_job_key(JOB, "org-b", org_keys["org-b"], os.urandom)
    sealed = seal_private_key(JOB, weak, "org-a", pair_a, key_b, os.urandom)
    with pytest.raises(InvalidInput, match="sealed by 'org-a' is refused: .*small order"):
        open_private_key(JOB, sealed, pair_b, key_a, weak_public)
