"""Tests for fedsilo.pki: identities in certificates, chain validity, and key file safety."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import DNSName
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedsilo import pki
from fedsilo.pki import Role

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_ca(now=NOW)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verify_client(ca: pki.CertificateAuthority, cert: x509.Certificate) -> None:
    verifier = PolicyBuilder().store(Store([ca.cert])).time(NOW).build_client_verifier()
    verifier.verify(cert, [])


def _csr_with_subject(attributes: list[x509.NameAttribute[str]]) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .sign(pki.make_key(), hashes.SHA256())
    )


def test_issued_key_is_0600_and_cert_0644_even_with_permissive_umask(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    old_umask = os.umask(0)
    try:
        files = pki.issue(ca, "acme", Role.PARTICIPANT, tmp_path, now=NOW)
    finally:
        os.umask(old_umask)
    assert _mode(files.key_path) == 0o600
    assert _mode(files.cert_path) == 0o644


def test_write_private_key_refuses_to_replace_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    first = pki.make_key()
    pki.write_private_key(path, first)
    with pytest.raises(FileExistsError):
        pki.write_private_key(path, pki.make_key())
    assert pki.load_private_key(path).public_key() == first.public_key()


def test_write_private_key_overwrite_tightens_mode_of_old_file(tmp_path: Path) -> None:
    path = tmp_path / "org.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    key = pki.make_key()
    pki.write_private_key(path, key, overwrite=True)
    assert _mode(path) == 0o600
    assert pki.load_private_key(path).public_key() == key.public_key()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["org.key"]


@pytest.mark.parametrize("role", list(Role))
def test_cn_and_ou_round_trip_through_files(
    ca: pki.CertificateAuthority, tmp_path: Path, role: Role
) -> None:
    files = pki.issue(ca, "acme-2", role, tmp_path, dns_names=["coord.example"], now=NOW)
    cert = pki.load_certificate(files.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "acme-2"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role
    assert pki.subject_identity(cert.subject) == ("acme-2", role)
    assert cert.public_key() == pki.load_private_key(files.key_path).public_key()


@pytest.mark.parametrize(
    "org_id",
    ["", "Acme", "-acme", "acme_corp", "acme.org", "a" * 64, "acme\n", " acme", "acmé"],
)
def test_bad_org_id_rejected(ca: pki.CertificateAuthority, org_id: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid organization id"):
        pki.make_csr(org_id, Role.PARTICIPANT, pki.make_key())
    with pytest.raises(ValueError, match="invalid organization id"):
        pki.issue(ca, org_id, Role.PARTICIPANT, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("org_id", ["a", "0", "acme", "org-1", "a" * 63])
def test_good_org_id_accepted(org_id: str) -> None:
    assert pki.validate_org_id(org_id) == org_id


def test_sign_csr_rejects_a_bad_subject_even_if_the_requester_built_it(
    ca: pki.CertificateAuthority,
) -> None:
    cn = NameOID.COMMON_NAME
    ou = NameOID.ORGANIZATIONAL_UNIT_NAME
    bad_subjects = {
        "invalid organization id": [
            x509.NameAttribute(cn, "Evil Corp"),
            x509.NameAttribute(ou, "participant"),
        ],
        "unknown role": [x509.NameAttribute(cn, "acme"), x509.NameAttribute(ou, "superuser")],
        "exactly one": [x509.NameAttribute(cn, "acme")],
    }
    for message, attributes in bad_subjects.items():
        with pytest.raises(ValueError, match=message):
            pki.sign_csr(ca, _csr_with_subject(attributes), 30, now=NOW)
    two_ous = [
        x509.NameAttribute(cn, "acme"),
        x509.NameAttribute(ou, "participant"),
        x509.NameAttribute(ou, "admin"),
    ]
    with pytest.raises(ValueError, match="exactly one"):
        pki.sign_csr(ca, _csr_with_subject(two_ous), 30, now=NOW)


def test_sign_csr_rejects_weak_key_types(ca: pki.CertificateAuthority) -> None:
    weak = ec.generate_private_key(ec.SECP256K1())
    csr = pki.make_csr("acme", Role.PARTICIPANT, weak)
    with pytest.raises(ValueError, match="unsupported EC curve"):
        pki.sign_csr(ca, csr, 30, now=NOW)


def test_sign_csr_ignores_extensions_requested_in_the_csr(ca: pki.CertificateAuthority) -> None:
    key = pki.make_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(pki.make_csr("acme", Role.PARTICIPANT, key).subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]), False)
        .sign(key, hashes.SHA256())
    )
    cert = pki.sign_csr(ca, csr, 30, now=NOW)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["acme"]


def test_participant_cert_chain_verifies_against_the_ca(ca: pki.CertificateAuthority) -> None:
    cert = pki.sign_csr(ca, pki.make_csr("acme", Role.PARTICIPANT, pki.make_key()), 30, now=NOW)
    _verify_client(ca, cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["acme"]
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and not key_usage.key_cert_sign


def test_coordinator_cert_verifies_as_server_for_its_names(ca: pki.CertificateAuthority) -> None:
    csr = pki.make_csr("coordinator", Role.COORDINATOR, pki.make_key())
    cert = pki.sign_csr(ca, csr, 30, ["localhost"], ["127.0.0.1"], now=NOW)
    store = Store([ca.cert])
    PolicyBuilder().store(store).time(NOW).build_server_verifier(DNSName("localhost")).verify(
        cert, []
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    wrong_name = PolicyBuilder().store(store).time(NOW).build_server_verifier(DNSName("evil"))
    with pytest.raises(VerificationError):
        wrong_name.verify(cert, [])


def test_coordinator_cert_needs_a_name(ca: pki.CertificateAuthority) -> None:
    csr = pki.make_csr("coordinator", Role.COORDINATOR, pki.make_key())
    with pytest.raises(ValueError, match="at least one DNS name or IP"):
        pki.sign_csr(ca, csr, 30, now=NOW)


def test_cert_from_a_foreign_ca_does_not_verify(ca: pki.CertificateAuthority) -> None:
    foreign = pki.create_ca("someone else", now=NOW)
    cert = pki.sign_csr(foreign, pki.make_csr("acme", Role.PARTICIPANT, pki.make_key()), now=NOW)
    with pytest.raises(VerificationError):
        _verify_client(ca, cert)


def test_validity_is_explicit(ca: pki.CertificateAuthority) -> None:
    cert = pki.sign_csr(ca, pki.make_csr("acme", Role.ADMIN, pki.make_key()), 90, now=NOW)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=90)
    # Backdated a few minutes for clock skew between organizations, not more.
    assert NOW - dt.timedelta(hours=1) < cert.not_valid_before_utc < NOW
    assert ca.cert.not_valid_after_utc == NOW + dt.timedelta(days=pki.DEFAULT_CA_VALID_DAYS)


def test_cert_may_not_outlive_its_ca(ca: pki.CertificateAuthority) -> None:
    csr = pki.make_csr("acme", Role.PARTICIPANT, pki.make_key())
    with pytest.raises(ValueError, match="outlive its CA"):
        pki.sign_csr(ca, csr, pki.DEFAULT_CA_VALID_DAYS + 1, now=NOW)
    with pytest.raises(ValueError, match="positive"):
        pki.sign_csr(ca, csr, 0, now=NOW)


def test_serial_numbers_are_random(ca: pki.CertificateAuthority) -> None:
    csr = pki.make_csr("acme", Role.PARTICIPANT, pki.make_key())
    serials = {pki.sign_csr(ca, csr, 30, now=NOW).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_ca_save_and_load_round_trip(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    files = ca.save(tmp_path, password=b"correct horse")
    assert _mode(files.key_path) == 0o600
    loaded = pki.load_ca(files.cert_path, files.key_path, password=b"correct horse")
    assert loaded.cert == ca.cert
    assert loaded.key.public_key() == ca.key.public_key()
    csr = pki.make_csr("acme", Role.ADMIN, pki.make_key())
    _verify_client(ca, pki.sign_csr(loaded, csr, 30, now=NOW))


def test_load_ca_rejects_mismatched_key_and_leaf_cert(
    ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    files = ca.save(tmp_path / "ca")
    other = pki.create_ca(now=NOW).save(tmp_path / "other")
    with pytest.raises(ValueError, match="does not belong"):
        pki.load_ca(files.cert_path, other.key_path)
    leaf = pki.issue(ca, "acme", Role.PARTICIPANT, tmp_path / "leaf")
    with pytest.raises(ValueError, match="not a CA certificate"):
        pki.load_ca(leaf.cert_path, leaf.key_path)


def test_make_demo_pki_issues_every_party(tmp_path: Path) -> None:
    demo = pki.make_demo_pki(tmp_path, ["org-a", "org-b"])
    ca = pki.load_ca(demo.ca_cert, demo.ca_key)
    assert set(demo.participants) == {"org-a", "org-b"}
    expected = {
        demo.coordinator: ("coordinator", Role.COORDINATOR),
        demo.participants["org-a"]: ("org-a", Role.PARTICIPANT),
        demo.participants["org-b"]: ("org-b", Role.PARTICIPANT),
        demo.admin: ("admin", Role.ADMIN),
    }
    for files, identity in expected.items():
        cert = pki.load_certificate(files.cert_path)
        assert pki.subject_identity(cert.subject) == identity
        assert _mode(files.key_path) == 0o600
        PolicyBuilder().store(Store([ca.cert])).build_client_verifier().verify(cert, [])
    assert demo.coordinator_cert == demo.coordinator.cert_path
    assert demo.admin_key == demo.admin.key_path


def test_make_demo_pki_rejects_ambiguous_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must all differ"):
        pki.make_demo_pki(tmp_path, ["org-a", "admin"])
    with pytest.raises(ValueError, match="unique"):
        pki.make_demo_pki(tmp_path, ["org-a", "org-a"])
    assert list(tmp_path.iterdir()) == []
