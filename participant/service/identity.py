"""Who this organization is in secure aggregation and key ceremonies: its org key and CA."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedsilo.pki import Role, load_certificate, load_private_key, subject_identity
from fedsilo.tls import TlsFiles, files_stamp
from participant.errors import SecAggUnavailable
from secagg import SigningKey

__all__ = ["IdentityFiles", "OrgIdentity", "load_org_identity", "utc_now"]


def utc_now() -> dt.datetime:
    """The clock peer certificates are checked against (injected in tests)."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class OrgIdentity:
    """Who this participant is in secure aggregation: its org id, org key and consortium CA."""

    participant_id: str
    signing_key: SigningKey = field(repr=False)
    ca: x509.Certificate = field(repr=False)


def load_org_identity(files: TlsFiles) -> OrgIdentity:
    """The organization's identity from its TLS files: the org id is the certificate's CN, the
    TLS private key (EC P-256) signs the round keys, ``ca_cert`` checks the peers' certificates.
    """
    try:
        cert = load_certificate(files.cert)
        org_id, role = subject_identity(cert.subject)
        ca = load_certificate(files.ca_cert)
    except (OSError, ValueError) as exc:
        raise SecAggUnavailable(f"cannot load this organization's certificates: {exc}") from None
    try:
        key = load_private_key(files.key)
    except (OSError, ValueError, TypeError):
        # The message of a failed key parse is not repeated: it is about secret material.
        raise SecAggUnavailable(f"cannot load the organization key {files.key}") from None
    if role is not Role.PARTICIPANT:
        raise SecAggUnavailable(
            f"the certificate {files.cert} has role {role.value}, not participant"
        )
    if cert.public_key() != key.public_key():
        raise SecAggUnavailable(f"the key {files.key} does not belong to the certificate")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SecAggUnavailable(
            f"secure aggregation signs with an EC P-256 organization key; {files.key} is not one"
        )
    return OrgIdentity(org_id, key, ca)


class IdentityFiles:
    """The organization identity from its TLS files, read again when the files are renewed."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._identity: OrgIdentity | None = None

    def __call__(self) -> OrgIdentity:
        stamp = files_stamp(self._files)
        if self._identity is None or stamp != self._stamp:
            self._identity = load_org_identity(self._files)
            self._stamp = stamp
        return self._identity
