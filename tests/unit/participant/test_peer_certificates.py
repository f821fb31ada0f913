"""fedsilo.pki.verify_peer_certificate: which peer certificates secure aggregation accepts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.pki import (
    CertificateAuthority,
    PeerCertificateError,
    Role,
    create_ca,
    issue,
    load_certificate,
    make_csr,
    sign_csr,
    verify_peer_certificate,
)

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca(now=NOW - dt.timedelta(days=30))


def _pem(
    ca: CertificateAuthority, tmp_path: Path, org: str, role: Role = Role.PARTICIPANT
) -> bytes:
    files = issue(ca, org, role, tmp_path / f"{org}-{role.value}", now=NOW - dt.timedelta(days=1))
    return files.cert_path.read_bytes()


def test_a_valid_certificate_gives_its_public_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    pem = _pem(ca, tmp_path, "org-a")
    key = verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)
    expected = load_certificate(tmp_path / "org-a-participant" / "org-a.crt").public_key()
    assert key == expected


def test_a_certificate_from_another_ca_with_the_same_name_is_rejected(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    # Both CAs are called "fedsilo consortium CA": only the signature tells them apart.
    foreign = create_ca(now=NOW - dt.timedelta(days=30))
    assert foreign.cert.subject == ca.cert.subject
    pem = _pem(foreign, tmp_path, "org-a")
    with pytest.raises(PeerCertificateError, match="not issued by the consortium CA"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)


@pytest.mark.parametrize("offset", [dt.timedelta(days=400), -dt.timedelta(days=2)])
def test_a_certificate_outside_its_validity_is_rejected(
    ca: CertificateAuthority, tmp_path: Path, offset: dt.timedelta
) -> None:
    pem = _pem(ca, tmp_path, "org-a")  # valid from NOW - 1 day for 365 days
    with pytest.raises(PeerCertificateError, match="is not valid at"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW + offset)


def test_a_certificate_of_another_org_is_rejected(ca: CertificateAuthority, tmp_path: Path) -> None:
    pem = _pem(ca, tmp_path, "org-b")
    with pytest.raises(PeerCertificateError, match="names 'org-b'"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)


def test_a_certificate_with_another_role_is_rejected(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    pem = _pem(ca, tmp_path, "org-a", Role.ADMIN)
    with pytest.raises(PeerCertificateError, match="role admin, not participant"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)


def test_the_ca_certificate_itself_is_rejected(ca: CertificateAuthority) -> None:
    pem = ca.cert.public_bytes(serialization.Encoding.PEM)
    # Self-signed, so "issued by the CA" holds: the basic constraints must catch it.
    with pytest.raises(PeerCertificateError, match="not a signing certificate of an organization"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)


def test_a_key_secure_aggregation_cannot_verify_with_is_rejected(ca: CertificateAuthority) -> None:
    # P-384 is fine for TLS, but secagg signatures are ECDSA P-256 or Ed25519.
    csr = make_csr("org-a", Role.PARTICIPANT, ec.generate_private_key(ec.SECP384R1()))
    cert = sign_csr(ca, csr, now=NOW - dt.timedelta(days=1))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PeerCertificateError, match="not EC P-256 or Ed25519"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)


@pytest.mark.parametrize("pem", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_garbage_is_rejected(ca: CertificateAuthority, pem: bytes) -> None:
    with pytest.raises(PeerCertificateError, match="not a PEM certificate"):
        verify_peer_certificate(pem, ca.cert, "org-a", Role.PARTICIPANT, NOW)


def test_a_naive_time_is_a_programming_error(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_peer_certificate(
            _pem(ca, tmp_path, "org-a"),
            ca.cert,
            "org-a",
            Role.PARTICIPANT,
            NOW.replace(tzinfo=None),
        )
