"""The consortium CA's membership list: signed, verified, canonical, and what it admits."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fedsilo.membership import (
    FORMAT,
    MembershipListError,
    NotAMember,
    certificate_sha256,
    sign_membership_list,
    verify_membership_list,
)
from fedsilo.pki import (
    CLOCK_SKEW_ALLOWANCE,
    CertificateAuthority,
    PeerCertificateError,
    Role,
    create_ca,
    issue,
)

ISSUED = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("membership test CA")


@pytest.fixture(scope="module")
def org_certificates(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("orgs")
    return {
        org: issue(ca, org, Role.PARTICIPANT, out).cert_path.read_bytes()
        for org in ("org-a", "org-b", "org-c")
    }


def _sign(
    ca: CertificateAuthority,
    certificates: dict[str, bytes],
    members: tuple[str, ...] = ("org-a", "org-b"),
    revoked: tuple[str, ...] = ("org-c",),
    serial: int = 7,
) -> bytes:
    prints = {org: [certificate_sha256(certificates[org])] for org in members}
    return sign_membership_list(ca.cert, ca.key, prints, revoked, serial, issued_at=ISSUED)


def _self_signed_ca(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other CA")])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(ISSUED)
        .not_valid_after(ISSUED + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, algorithm)
    )


def test_a_signed_list_verifies_and_says_who_is_admitted(
    ca: CertificateAuthority, org_certificates: dict[str, bytes]
) -> None:
    listed = verify_membership_list(_sign(ca, org_certificates), ca.cert)
    assert listed.serial == 7
    assert listed.issued_at == ISSUED
    assert listed.ca_sha256 == certificate_sha256(ca.cert)
    assert set(listed.members) == {"org-a", "org-b"}
    assert listed.revoked == frozenset({"org-c"})
    listed.check_peer("org-a", org_certificates["org-a"])
    listed.check_peer("org-b")


@pytest.mark.parametrize(
    ("org", "certificate_of", "reason"),
    [
        ("org-c", "org-c", "is revoked"),
        ("org-d", None, "is not a member"),
        ("org-a", "org-b", "is not the one listed"),
    ],
)
def test_a_revoked_unlisted_or_differently_certified_peer_is_not_admitted(
    ca: CertificateAuthority,
    org_certificates: dict[str, bytes],
    org: str,
    certificate_of: str | None,
    reason: str,
) -> None:
    listed = verify_membership_list(_sign(ca, org_certificates), ca.cert)
    pem = None if certificate_of is None else org_certificates[certificate_of]
    with pytest.raises(NotAMember, match=reason) as refused:
        listed.check_peer(org, pem)
    assert refused.value.org_id == org
    # Whoever refuses a peer's certificate refuses a non-member the same way.
    assert isinstance(refused.value, PeerCertificateError)


def _altered(document: bytes, change: str) -> bytes:
    outer = json.loads(document)
    if change == "body":
        outer["body"] = outer["body"].replace('"revoked":["org-c"]', '"revoked":[]')
    elif change == "serial":
        outer["body"] = outer["body"].replace('"serial":7', '"serial":8')
    elif change == "signature":
        signature = bytearray(base64.b64decode(outer["signature"]))
        signature[-1] ^= 1
        outer["signature"] = base64.b64encode(bytes(signature)).decode()
    return json.dumps(outer).encode()


@pytest.mark.parametrize("change", ["body", "serial", "signature"])
def test_an_altered_list_is_refused(
    ca: CertificateAuthority, org_certificates: dict[str, bytes], change: str
) -> None:
    document = _altered(_sign(ca, org_certificates), change)
    with pytest.raises(MembershipListError, match="not signed by the consortium CA"):
        verify_membership_list(document, ca.cert)


def test_a_list_signed_by_another_ca_is_refused(
    ca: CertificateAuthority, org_certificates: dict[str, bytes]
) -> None:
    other = create_ca("another consortium")
    with pytest.raises(MembershipListError, match="not signed by the consortium CA"):
        verify_membership_list(_sign(other, org_certificates), ca.cert)


def test_a_list_naming_another_ca_is_refused_even_with_a_valid_signature(
    ca: CertificateAuthority, org_certificates: dict[str, bytes]
) -> None:
    # The same key under another CA certificate: the signature holds, the CA named does not.
    twin = create_ca("twin").cert
    renamed = x509.CertificateBuilder(
        issuer_name=twin.issuer,
        subject_name=twin.subject,
        public_key=ca.key.public_key(),
        serial_number=2,
        not_valid_before=twin.not_valid_before_utc,
        not_valid_after=twin.not_valid_after_utc,
    ).sign(ca.key, hashes.SHA256())
    document = sign_membership_list(renamed, ca.key, {}, ["org-c"], 3, issued_at=ISSUED)
    with pytest.raises(MembershipListError, match="names another consortium CA"):
        verify_membership_list(document, ca.cert)


def test_a_body_not_in_canonical_form_is_refused_though_signed(
    ca: CertificateAuthority, org_certificates: dict[str, bytes]
) -> None:
    body = json.loads(json.loads(_sign(ca, org_certificates))["body"])
    text = json.dumps(body, indent=1)  # the same content, other bytes
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    signature = ca.key.sign(FORMAT.encode() + b"\x00" + text.encode(), ec.ECDSA(hashes.SHA256()))
    document = json.dumps(
        {
            "format": FORMAT,
            "body": text,
            "signature": base64.b64encode(signature).decode(),
        }
    ).encode()
    with pytest.raises(MembershipListError, match="canonical"):
        verify_membership_list(document, ca.cert)


@pytest.mark.parametrize(
    ("members", "revoked", "serial", "reason"),
    [
        ({"org-a": ["0" * 64]}, ["org-a"], 1, "both members and revoked"),
        ({"org-a": ["0" * 64]}, [], 0, "positive integer"),
        ({"org-a": []}, [], 1, "one or more certificate"),
        ({"org-a": ["zz"]}, [], 1, "one or more certificate"),
        ({"Org A": ["0" * 64]}, [], 1, "invalid organization id"),
    ],
)
def test_a_malformed_list_is_not_signed(
    ca: CertificateAuthority,
    members: dict[str, list[str]],
    revoked: list[str],
    serial: int,
    reason: str,
) -> None:
    with pytest.raises(MembershipListError, match=reason):
        sign_membership_list(ca.cert, ca.key, members, revoked, serial)


@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
def test_ca_keys_of_other_types_sign_and_verify(
    key_type: str, org_certificates: dict[str, bytes]
) -> None:
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if key_type == "ed25519"
        else rsa.generate_private_key(65537, 2048)
    )
    cert = _self_signed_ca(key)
    prints = {"org-a": [certificate_sha256(org_certificates["org-a"])]}
    document = sign_membership_list(cert, key, prints, [], 1, issued_at=ISSUED)
    assert verify_membership_list(document, cert).members["org-a"] == frozenset(prints["org-a"])
    with pytest.raises(MembershipListError, match="not signed"):
        verify_membership_list(_altered(document, "signature"), cert)


def test_a_key_that_is_not_the_cas_does_not_sign(ca: CertificateAuthority) -> None:
    with pytest.raises(MembershipListError, match="does not belong"):
        sign_membership_list(ca.cert, create_ca().key, {}, ["org-c"], 1)


def test_garbage_is_refused_with_a_plain_message(ca: CertificateAuthority) -> None:
    for document in (b"", b"not json", b"[]", b'{"format": "fedsilo-membership/1"}'):
        with pytest.raises(MembershipListError):
            verify_membership_list(document, ca.cert)


def test_a_list_is_stale_only_past_its_age_limit_and_the_clock_skew_allowance(
    ca: CertificateAuthority, org_certificates: dict[str, bytes]
) -> None:
    listed = verify_membership_list(_sign(ca, org_certificates), ca.cert)
    max_age = dt.timedelta(days=30)
    limit = ISSUED + max_age + CLOCK_SKEW_ALLOWANCE
    assert CLOCK_SKEW_ALLOWANCE == dt.timedelta(minutes=5)  # as for certificates
    assert listed.age(ISSUED + dt.timedelta(days=2)) == dt.timedelta(days=2)
    assert not listed.is_stale(ISSUED, max_age)
    # A reader whose clock runs minutes ahead of the CA's still takes a list within its limit.
    assert not listed.is_stale(ISSUED + max_age + dt.timedelta(minutes=4), max_age)
    assert not listed.is_stale(limit, max_age)
    assert listed.is_stale(limit + dt.timedelta(seconds=1), max_age)
    # A reader whose clock is behind the CA's sees a list from the future: not stale.
    assert listed.age(ISSUED - dt.timedelta(minutes=4)) < dt.timedelta(0)
    assert not listed.is_stale(ISSUED - dt.timedelta(minutes=4), max_age)
