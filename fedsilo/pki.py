"""Consortium PKI: the CA, org/admin/coordinator certificates, and safe key files on disk."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsilo.errors import FedsiloError
from secagg import InvalidInput, VerifyingKey, verifying_key

__all__ = [
    "CLOCK_SKEW_ALLOWANCE",
    "DEFAULT_CA_VALID_DAYS",
    "DEFAULT_CERT_VALID_DAYS",
    "CertificateAuthority",
    "DemoPki",
    "IssuedFiles",
    "PeerCertificateError",
    "PkiError",
    "Role",
    "create_ca",
    "issue",
    "load_ca",
    "load_certificate",
    "load_private_key",
    "make_csr",
    "make_demo_pki",
    "make_key",
    "sign_csr",
    "subject_identity",
    "validate_org_id",
    "verify_peer_certificate",
    "write_certificate",
    "write_private_key",
]

DEFAULT_CA_VALID_DAYS = 3650
DEFAULT_CERT_VALID_DAYS = 365

# Certificates start a little in the past so that an organization whose clock is slightly behind
# the CA's does not reject a freshly issued certificate as "not yet valid"; a membership list is
# stale only this long after its age limit, for the same reason (fedsilo/membership.py).
CLOCK_SKEW_ALLOWANCE = dt.timedelta(minutes=5)

# \Z rather than $: "$" also matches before a trailing newline, which would let "acme\n" through.
_ORG_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")

CA_CERT_FILENAME = "ca.crt"
CA_KEY_FILENAME = "ca.key"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
IpAddressLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address

# Curves that BoringSSL (inside gRPC) accepts for TLS certificates.
_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_MIN_RSA_BITS = 2048


class Role(StrEnum):
    """What a certificate holder may do; carried in the subject OU and read by the coordinator."""

    PARTICIPANT = "participant"
    ADMIN = "admin"
    COORDINATOR = "coordinator"


@dataclass(frozen=True)
class CertificateAuthority:
    """The consortium CA: signs every certificate the coordinator and participants trust."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    def save(self, directory: Path | str, *, password: bytes | None = None) -> IssuedFiles:
        """Write ``ca.crt`` and ``ca.key`` (0600, encrypted when ``password`` is given)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = IssuedFiles(directory / CA_CERT_FILENAME, directory / CA_KEY_FILENAME)
        write_private_key(files.key_path, self.key, password=password)
        write_certificate(files.cert_path, self.cert)
        return files


@dataclass(frozen=True)
class IssuedFiles:
    """Where one certificate and its private key were written."""

    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class DemoPki:
    """Every file of a ready-made demo consortium (one directory per party)."""

    ca_cert: Path
    ca_key: Path
    coordinator: IssuedFiles
    participants: Mapping[str, IssuedFiles]
    admin: IssuedFiles
    membership_list: Path
    """Serial 1 of the consortium's membership list: every participant, signed by the CA."""

    @property
    def coordinator_cert(self) -> Path:
        return self.coordinator.cert_path

    @property
    def coordinator_key(self) -> Path:
        return self.coordinator.key_path

    @property
    def admin_cert(self) -> Path:
        return self.admin.cert_path

    @property
    def admin_key(self) -> Path:
        return self.admin.key_path


class PkiError(FedsiloError, ValueError):
    """An organization id, subject, CSR, key or CA that fedsilo's PKI does not accept."""


class PeerCertificateError(PkiError):
    """A certificate another party presented is not one this organization accepts."""


def validate_org_id(org_id: str) -> str:
    """Return ``org_id`` unchanged if it is a valid organization id, else raise PkiError."""
    if not isinstance(org_id, str) or _ORG_ID_PATTERN.match(org_id) is None:
        raise PkiError(
            f"invalid organization id {org_id!r}: use 1-63 characters of lowercase letters, "
            "digits and '-', starting with a letter or digit"
        )
    return org_id


def make_key() -> ec.EllipticCurvePrivateKey:
    """Make a new EC P-256 private key (fast, and supported by every gRPC TLS stack)."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(org_id: str, role: Role, key: PrivateKey) -> x509.CertificateSigningRequest:
    """Make a CSR with CN = org id and OU = role; the key stays with the organization."""
    role = Role(role)
    validate_org_id(org_id)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, org_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        ]
    )
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def subject_identity(name: x509.Name) -> tuple[str, Role]:
    """Return the (org id, role) a subject names, or raise PkiError if it names none exactly."""
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = name.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    # Exactly one of each: with two CNs or OUs, different readers could pick different identities.
    if len(common_names) != 1 or len(units) != 1:
        raise PkiError("subject must have exactly one CN (organization id) and one OU (role)")
    org_id = common_names[0].value
    unit = units[0].value
    if not isinstance(org_id, str) or not isinstance(unit, str):
        raise PkiError("subject CN and OU must be text")
    validate_org_id(org_id)
    try:
        role = Role(unit)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise PkiError(f"unknown role {unit!r} in subject OU (known: {known})") from None
    return org_id, role


def verify_peer_certificate(
    pem: bytes, ca: x509.Certificate, org_id: str, role: Role, now: dt.datetime
) -> VerifyingKey:
    """Check a peer's PEM certificate and return its signature-verification key.

    The certificate must be issued directly by the consortium CA ``ca`` (signature checked with
    the CA's key), be valid at ``now``, not be a CA itself, name exactly ``org_id`` and ``role``
    in its subject, and carry an EC P-256 or Ed25519 key. Secure aggregation checks every peer's
    signed round keys against this key, so a certificate from any other source would let whoever
    forwards the keys substitute them (docs/secagg.md). Raises PeerCertificateError.
    """
    if now.tzinfo is None:
        raise PkiError("now must be timezone-aware")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise PeerCertificateError(
            f"the certificate of {org_id!r} is not a PEM certificate"
        ) from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PeerCertificateError(
            f"the certificate of {org_id!r} is not issued by the consortium CA"
        ) from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PeerCertificateError(
            f"the certificate of {org_id!r} is not valid at {now:%Y-%m-%d %H:%M:%S} UTC (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S})"
        )
    try:
        extensions = cert.extensions
    except ValueError:
        raise PeerCertificateError(
            f"the certificate of {org_id!r} has malformed extensions"
        ) from None
    # fedsilo's CA always sets both; a certificate that says it is a CA or may not sign is not an
    # organization's signing certificate, whoever issued it.
    for extension in extensions:
        value = extension.value
        if (isinstance(value, x509.BasicConstraints) and value.ca) or (
            isinstance(value, x509.KeyUsage) and not value.digital_signature
        ):
            raise PeerCertificateError(
                f"the certificate of {org_id!r} is not a signing certificate of an organization"
            )
    try:
        subject, subject_role = subject_identity(cert.subject)
    except ValueError as exc:
        raise PeerCertificateError(f"the certificate of {org_id!r}: {exc}") from None
    if subject != org_id:
        raise PeerCertificateError(f"the certificate for {org_id!r} names {subject!r}")
    if subject_role is not Role(role):
        raise PeerCertificateError(
            f"the certificate of {org_id!r} has role {subject_role.value}, not {Role(role).value}"
        )
    try:
        return verifying_key(cert.public_key())
    except InvalidInput:
        raise PeerCertificateError(
            f"the certificate of {org_id!r} carries a key that is not EC P-256 or Ed25519"
        ) from None


def create_ca(
    common_name: str = "fedsilo consortium CA",
    valid_days: int = DEFAULT_CA_VALID_DAYS,
    *,
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Create a self-signed consortium CA that can sign leaf certificates only (path length 0)."""
    if valid_days <= 0:
        raise PkiError(f"valid_days must be positive, got {valid_days}")
    key = make_key()
    not_before, not_after = _validity(now, valid_days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def load_ca(
    cert_path: Path | str, key_path: Path | str, *, password: bytes | None = None
) -> CertificateAuthority:
    """Load a CA written by :meth:`CertificateAuthority.save`; checks the key matches the cert."""
    cert = load_certificate(cert_path)
    key = load_private_key(key_path, password=password)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise PkiError(f"{cert_path} is not a CA certificate (basicConstraints CA is not set)")
    if not _same_public_key(cert, key):
        raise PkiError(f"private key {key_path} does not belong to CA certificate {cert_path}")
    return CertificateAuthority(cert=cert, key=key)


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    valid_days: int = DEFAULT_CERT_VALID_DAYS,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[IpAddressLike] = (),
    *,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a CSR after validating it; only CN and OU are copied, the CA chooses everything else.

    Extensions requested in the CSR are ignored on purpose: a requester must not be able to ask
    for CA rights, extra names or extra key usages.
    """
    if not csr.is_signature_valid:
        raise PkiError("CSR signature is invalid (the requester does not hold the key)")
    org_id, role = subject_identity(csr.subject)
    public_key = csr.public_key()
    _check_leaf_public_key(public_key)
    if valid_days <= 0:
        raise PkiError(f"valid_days must be positive, got {valid_days}")
    not_before, not_after = _validity(now, valid_days)
    if not_after > ca.cert.not_valid_after_utc:
        ca_expiry = ca.cert.not_valid_after_utc
        raise PkiError(
            f"certificate would outlive its CA (CA expires {ca_expiry:%Y-%m-%d}); "
            "lower valid_days or renew the CA"
        )

    names = _subject_alternative_names(org_id, role, dns_names, ip_addresses)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is Role.COORDINATOR:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)

    ca_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, org_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(ca_key_id, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def issue(
    ca: CertificateAuthority,
    org_id: str,
    role: Role,
    out_dir: Path | str,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[IpAddressLike] = (),
    valid_days: int = DEFAULT_CERT_VALID_DAYS,
    *,
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Make a key and CSR locally, sign it, and write ``<org_id>.crt``/``<org_id>.key``.

    For demos and tests only: in a real consortium each organization runs :func:`make_csr` itself
    so that its private key never leaves it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = make_key()
    cert = sign_csr(ca, make_csr(org_id, role, key), valid_days, dns_names, ip_addresses, now=now)
    files = IssuedFiles(out_dir / f"{org_id}.crt", out_dir / f"{org_id}.key")
    write_private_key(files.key_path, key)
    write_certificate(files.cert_path, cert)
    return files


def make_demo_pki(
    out_dir: Path | str,
    org_ids: Sequence[str],
    admin_id: str = "admin",
    coordinator_hosts: Sequence[str] = ("localhost",),
    coordinator_ips: Sequence[IpAddressLike] = ("127.0.0.1",),
    *,
    coordinator_name: str = "coordinator",
) -> DemoPki:
    """Create a CA, a coordinator server cert, one participant cert per org and an admin cert.

    Layout: ``ca/``, ``coordinator/``, ``orgs/<org_id>/``, ``admin/`` under ``out_dir``, and
    ``membership.json``: the membership list (serial 1) admitting every participant, to publish
    at the coordinator (fedsilo/membership.py).
    """
    # Imported here: fedsilo.membership builds on this module.
    from fedsilo.membership import certificate_sha256, sign_membership_list

    for org_id in (*org_ids, admin_id, coordinator_name):
        validate_org_id(org_id)
    if len(set(org_ids)) != len(org_ids):
        raise PkiError("organization ids must be unique")
    # One subject name, one party: otherwise an authorization rule keyed on the org id could
    # confuse the admin with a participant.
    if admin_id in org_ids or coordinator_name in org_ids or admin_id == coordinator_name:
        raise PkiError("admin id, coordinator name and organization ids must all differ")

    out_dir = Path(out_dir)
    ca = create_ca()
    ca_files = ca.save(out_dir / "ca")
    coordinator = issue(
        ca,
        coordinator_name,
        Role.COORDINATOR,
        out_dir / "coordinator",
        dns_names=coordinator_hosts,
        ip_addresses=coordinator_ips,
    )
    participants = {
        org_id: issue(ca, org_id, Role.PARTICIPANT, out_dir / "orgs" / org_id) for org_id in org_ids
    }
    admin = issue(ca, admin_id, Role.ADMIN, out_dir / "admin")
    members = {
        org_id: [certificate_sha256(load_certificate(files.cert_path))]
        for org_id, files in participants.items()
    }
    membership_list = out_dir / "membership.json"
    _write_file(
        membership_list,
        sign_membership_list(ca.cert, ca.key, members, (), 1),
        mode=0o644,
        overwrite=False,
    )
    return DemoPki(
        ca_cert=ca_files.cert_path,
        ca_key=ca_files.key_path,
        coordinator=coordinator,
        participants=participants,
        admin=admin,
        membership_list=membership_list,
    )


def write_private_key(
    path: Path | str,
    key: PrivateKey,
    *,
    password: bytes | None = None,
    overwrite: bool = False,
) -> None:
    """Write a PKCS#8 PEM private key that is mode 0600 from the moment the file exists."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _write_file(Path(path), pem, mode=0o600, overwrite=overwrite)


def write_certificate(path: Path | str, cert: x509.Certificate, *, overwrite: bool = False) -> None:
    """Write a PEM certificate, mode 0644 (certificates are public)."""
    _write_file(
        Path(path), cert.public_bytes(serialization.Encoding.PEM), mode=0o644, overwrite=overwrite
    )


def load_certificate(path: Path | str) -> x509.Certificate:
    """Read one PEM certificate."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def load_private_key(path: Path | str, *, password: bytes | None = None) -> PrivateKey:
    """Read a PEM private key; only EC and RSA keys (what gRPC TLS accepts) are allowed."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=password)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{path}: unsupported key type {type(key).__name__} (use EC or RSA)")
    return key


def _write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    if overwrite:
        # Write a fresh file and rename it over the old one: the old file may have looser
        # permissions, and a crash must not leave a half-written key or certificate behind.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _create_exclusive(tmp, data, mode)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    else:
        # O_EXCL: never silently replace an existing key (it may be the only copy).
        _create_exclusive(path, data, mode)


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    # The mode is given to open() itself so that a private key is never readable by others, not
    # even between creating the file and a later chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        # umask may have removed bits (e.g. group read of a certificate); set exactly what we mean.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            fd = -1
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise


def _validity(now: dt.datetime | None, valid_days: int) -> tuple[dt.datetime, dt.datetime]:
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise PkiError("now must be timezone-aware")
    # X.509 times have one-second resolution; dropping microseconds keeps what we ask for equal
    # to what ends up in the certificate.
    now = now.astimezone(dt.UTC).replace(microsecond=0)
    return now - CLOCK_SKEW_ALLOWANCE, now + dt.timedelta(days=valid_days)


def _subject_alternative_names(
    org_id: str,
    role: Role,
    dns_names: Iterable[str],
    ip_addresses: Iterable[IpAddressLike],
) -> list[x509.GeneralName]:
    dns = list(dict.fromkeys(dns_names))
    ips = list(dict.fromkeys(ipaddress.ip_address(ip) for ip in ip_addresses))
    for name in dns:
        if not name or name != name.strip() or any(c.isspace() for c in name):
            raise PkiError(f"invalid DNS name {name!r}")
    if role is Role.COORDINATOR:
        # A server certificate is only useful for the names participants actually dial.
        if not dns and not ips:
            raise PkiError("a coordinator certificate needs at least one DNS name or IP address")
    elif org_id not in dns:
        # gRPC's TLS stack may reject a certificate without any SAN, so client certificates
        # always carry their org id as a DNS name.
        dns.insert(0, org_id)
    return [
        *(x509.DNSName(name) for name in dns),
        *(x509.IPAddress(ip) for ip in ips),
    ]


def _check_leaf_public_key(public_key: object) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, _ALLOWED_CURVES):
            raise PkiError(f"unsupported EC curve {public_key.curve.name} (use P-256 or P-384)")
    elif isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < _MIN_RSA_BITS:
            raise PkiError(f"RSA key too small ({public_key.key_size} bits, need 2048+)")
    else:
        raise PkiError(f"unsupported key type {type(public_key).__name__} (use EC or RSA)")


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()
