"""Mutual-TLS credentials for gRPC, peer identity from the certificate, and the loopback guard.

gRPC's Python API cannot pin the minimum TLS version; the bundled BoringSSL negotiates TLS 1.3
with any current peer. What we control here is that client certificates are always required and
that only the consortium CA is trusted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedsilo.errors import FedsiloError
from fedsilo.pki import Role, subject_identity

log = logging.getLogger("fedsilo.tls")

__all__ = [
    "InsecureTransportError",
    "PeerIdentity",
    "TlsConfigError",
    "TlsFiles",
    "channel_credentials",
    "check_insecure_allowed",
    "files_stamp",
    "identity_from_auth_context",
    "is_loopback_address",
    "reloading_server_credentials",
    "server_credentials",
]

# Key under which gRPC exposes the verified peer certificate in ServicerContext.auth_context().
_PEER_CERT_KEY = "x509_pem_cert"


class TlsConfigError(FedsiloError, ValueError):
    """The certificate, key or CA files cannot form working TLS credentials."""


class InsecureTransportError(FedsiloError, ValueError):
    """Insecure (plaintext) transport was requested on an address other than loopback."""


@dataclass(frozen=True)
class TlsFiles:
    """The three PEM files a party needs for mutual TLS."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a connection, as stated by its CA-signed certificate."""

    org_id: str
    role: Role
    serial_hex: str = ""
    """The certificate's serial number in lower-case hex: what revocation lists name."""
    certificate_pem: bytes = field(default=b"", repr=False, compare=False)
    """The certificate itself (PEM), as verified in the handshake."""

    @property
    def certificate_sha256(self) -> str:
        """Hex SHA-256 of the certificate (DER), as ``openssl x509 -fingerprint -sha256``; ""
        without a certificate."""
        if not self.certificate_pem:
            return ""
        der = ssl.PEM_cert_to_DER_cert(self.certificate_pem.decode("ascii"))
        return hashlib.sha256(der).hexdigest()


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate issued by the consortium CA."""
    ca_pem, cert_pem, key_pem = _read_checked(files)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        # Mutual TLS: a client without a certificate from our CA never completes the handshake,
        # so no servicer code runs for it.
        require_client_auth=True,
    )


def _stamp(files: TlsFiles) -> tuple[tuple[int, int], ...]:
    stamps = []
    for path in (files.ca_cert, files.cert, files.key):
        try:
            stat = path.stat()
        except OSError:
            return ()
        stamps.append((stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


def reloading_server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Like ``server_credentials``, but renewed files are picked up without a restart.

    gRPC asks for the configuration at each new handshake; when the files changed (and the new
    set is valid) new connections use it, while established connections and the rounds they
    serve carry on undisturbed.
    """
    ca_pem, cert_pem, key_pem = _read_checked(files)
    stamp = [_stamp(files)]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        current = _stamp(files)
        if current == stamp[0]:
            return None
        try:
            ca, cert, key = _read_checked(files)
        except TlsConfigError as exc:
            # Half-written or mismatched files: keep serving with the previous certificate.
            log.warning("renewed TLS files not usable yet: %s", exc)
            return None
        stamp[0] = current
        log.info("TLS certificate files changed: new connections use the renewed certificate")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    initial = grpc.ssl_server_certificate_configuration(
        [(key_pem, cert_pem)], root_certificates=ca_pem
    )
    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)


def files_stamp(files: TlsFiles) -> tuple[tuple[int, int], ...]:
    """A cheap fingerprint (mtime, size) of the three files, to notice renewals."""
    return _stamp(files)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials that present our certificate and trust only the consortium CA."""
    ca_pem, cert_pem, key_pem = _read_checked(files)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def identity_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> PeerIdentity | None:
    """Return the peer's org id (CN) and role (OU), or None when it has no usable certificate.

    The identity comes only from the certificate gRPC verified during the handshake, never from
    anything the peer puts in a request.
    """
    pems = auth_context.get(_PEER_CERT_KEY)
    if not pems or len(pems) != 1:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
        org_id, role = subject_identity(cert.subject)
    except ValueError:
        return None
    return PeerIdentity(
        org_id=org_id,
        role=role,
        serial_hex=format(cert.serial_number, "x"),
        certificate_pem=bytes(pems[0]),
    )


def is_loopback_address(address: str) -> bool:
    """Whether a gRPC bind or target address only reaches this host.

    Accepts ``host:port``, ``[v6]:port``, bare hosts, and the ``dns:``, ``ipv4:``, ``ipv6:`` and
    ``unix:`` URI forms. Anything unparsable counts as not loopback (fail closed).
    """
    address = address.strip()
    if address.startswith(("unix:", "unix-abstract:")):
        # Unix domain sockets never leave the host.
        return True
    for scheme in ("ipv4:", "ipv6:"):
        if address.startswith(scheme):
            targets = address[len(scheme) :].split(",")
            return all(_is_loopback_host(_host_of(target)) for target in targets)
    if address.startswith("dns:"):
        address = address[len("dns:") :]
        if address.startswith("//"):
            # dns://resolver/host:port -- the resolver authority does not change where we connect.
            _, _, address = address[2:].partition("/")
    return _is_loopback_host(_host_of(address))


def check_insecure_allowed(address: str) -> None:
    """Raise InsecureTransportError unless ``address`` is loopback (plaintext is for tests only)."""
    if not is_loopback_address(address):
        raise InsecureTransportError(
            f"insecure transport refused on {address!r}: plaintext gRPC is only allowed on "
            "loopback addresses (127.0.0.0/8, ::1, localhost); configure TLS certificates"
        )


def _host_of(host_port: str) -> str | None:
    """The host part of ``host[:port]`` / ``[v6][:port]``; None when it cannot be parsed."""
    if host_port.startswith("["):
        host, bracket, rest = host_port[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        return host
    if host_port.count(":") > 1:
        # A bare IPv6 literal without brackets and port, e.g. "::1".
        return host_port
    host, _, _ = host_port.partition(":")
    return host


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        # An empty host (":50051") means every interface.
        return False
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # Other names may resolve anywhere.
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Python < 3.13 does not treat ::ffff:127.0.0.1 as loopback.
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _read_checked(files: TlsFiles) -> tuple[bytes, bytes, bytes]:
    # gRPC reports a bad or mismatched key only as an opaque start or handshake failure, so
    # check the files up front and name the culprit.
    try:
        ca_pem = Path(files.ca_cert).read_bytes()
        cert_pem = Path(files.cert).read_bytes()
        key_pem = Path(files.key).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from exc
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise TlsConfigError(f"{files.ca_cert} is not a PEM CA certificate") from exc
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TlsConfigError(f"{files.cert} is not a PEM certificate") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted, and gRPC cannot use encrypted keys.
        raise TlsConfigError(f"{files.key} is not an unencrypted PEM private key") from exc
    if cert.public_key() != key.public_key():
        raise TlsConfigError(f"private key {files.key} does not belong to certificate {files.cert}")
    return ca_pem, cert_pem, key_pem
