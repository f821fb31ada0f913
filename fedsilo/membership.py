"""The consortium's signed membership and revocation list: who may take part, under which cert.

The coordinator approves and revokes organizations, but a coordinator that deviates could let a
revoked organization (whose certificate is still valid) into a secure round or a key ceremony.
The list is the consortium CA's word on membership, so participants need not take the
coordinator's: the CA signs it offline (``fedsilo pki membership sign``), the admin publishes it
at the coordinator, the coordinator hands it on, and every participant checks its signature
against the CA certificate it already trusts (docs/threat-model.md, "Revoked organizations").
A list also ages: participants take part in nothing secure under a list issued longer ago than
their ``accept.max_membership_age``, so the CA re-issues it (``membership sign --renew``) and a
coordinator cannot keep an organization on an old list for longer than that.

The document is JSON: ``{"format": "fedsilo-membership/1", "body": BODY, "signature": SIG}``.
``BODY`` is a string holding the canonical JSON (sorted keys, no spaces, ASCII) of::

    {"ca_sha256": hex SHA-256 of the CA certificate (DER),
     "serial": a positive integer, higher in every newer list,
     "issued_at": "YYYY-MM-DDTHH:MM:SSZ",
     "members": [{"org_id": ..., "certificates": [hex SHA-256 of each certificate (DER)]}],
     "revoked": [org ids]}

with members sorted by org id, fingerprints and revoked ids sorted, and no org in both lists.
``SIG`` is the base64 signature by the CA key over ``fedsilo-membership/1``, a zero byte, then
``BODY`` as UTF-8: ECDSA with SHA-256 for an EC CA key, Ed25519 as is, RSA-PSS with SHA-256.
What is verified is exactly the text that is parsed; a body that is not in canonical form is
refused, so one list has one encoding.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from fedsilo.pki import CLOCK_SKEW_ALLOWANCE, PeerCertificateError, PkiError, validate_org_id

__all__ = [
    "FORMAT",
    "MembershipList",
    "MembershipListError",
    "NotAMember",
    "SigningKey",
    "certificate_sha256",
    "sign_membership_list",
    "verify_membership_list",
]

FORMAT = "fedsilo-membership/1"
_SIGNED_PREFIX = FORMAT.encode() + b"\x00"
_FINGERPRINT = re.compile(r"[0-9a-f]{64}\Z")
_ISSUED_AT = "%Y-%m-%dT%H:%M:%SZ"
# A document far larger than any consortium's list is refused before it is parsed.
MAX_DOCUMENT_BYTES = 1 << 20


class MembershipListError(PkiError):
    """A membership list that is malformed, not signed by the consortium CA, or not acceptable."""


class NotAMember(PeerCertificateError):
    """A peer that the membership list does not admit: unlisted, revoked, or another certificate.

    A subclass of :class:`PeerCertificateError`: whoever refuses a peer's certificate refuses an
    organization the consortium did not admit the same way.
    """

    def __init__(self, message: str, org_id: str) -> None:
        super().__init__(message)
        self.org_id = org_id


SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class MembershipList:
    """A verified membership list; ``document`` is the signed bytes it was read from."""

    ca_sha256: str
    serial: int
    issued_at: dt.datetime
    members: Mapping[str, frozenset[str]]
    revoked: frozenset[str]
    document: bytes = field(repr=False, compare=False)

    def age(self, now: dt.datetime) -> dt.timedelta:
        """How long before ``now`` the CA issued the list (negative on a clock behind the CA's)."""
        return now - self.issued_at

    def is_stale(self, now: dt.datetime, max_age: dt.timedelta) -> bool:
        """Whether the list is older than ``max_age`` at ``now``, beyond the skew allowed between
        the reader's clock and the CA's (``CLOCK_SKEW_ALLOWANCE``, as for certificates).

        What bounds a coordinator that withholds a newer list: a reader that refuses a stale list
        can be kept on this one for at most ``max_age`` (docs/threat-model.md, "Freshness").
        """
        return self.age(now) > max_age + CLOCK_SKEW_ALLOWANCE

    def check_peer(self, org_id: str, certificate_pem: bytes | None = None) -> None:
        """Raise NotAMember unless ``org_id`` is a listed, non-revoked member and, when given,
        ``certificate_pem`` is one of the certificates listed for it."""
        if org_id in self.revoked:
            raise NotAMember(
                f"organization {org_id!r} is revoked in membership list {self.serial}", org_id
            )
        listed = self.members.get(org_id)
        if listed is None:
            raise NotAMember(
                f"organization {org_id!r} is not a member in membership list {self.serial}",
                org_id,
            )
        if certificate_pem is not None and certificate_sha256(certificate_pem) not in listed:
            raise NotAMember(
                f"the certificate presented for {org_id!r} is not the one listed in membership "
                f"list {self.serial}",
                org_id,
            )


def certificate_sha256(certificate: x509.Certificate | bytes) -> str:
    """The hex SHA-256 of a certificate's DER form (from the certificate or its PEM)."""
    if isinstance(certificate, bytes):
        try:
            certificate = x509.load_pem_x509_certificate(certificate)
        except ValueError:
            raise PeerCertificateError("not a PEM certificate") from None
    return certificate.fingerprint(hashes.SHA256()).hex()


def sign_membership_list(
    ca_cert: x509.Certificate,
    ca_key: SigningKey,
    members: Mapping[str, Iterable[str]],
    revoked: Iterable[str],
    serial: int,
    *,
    issued_at: dt.datetime | None = None,
) -> bytes:
    """Sign a membership list with the CA key; ``members`` maps org id to certificate SHA-256s."""
    if issued_at is None:
        issued_at = dt.datetime.now(dt.UTC)
    elif issued_at.tzinfo is None:
        raise MembershipListError("issued_at must be timezone-aware")
    if not isinstance(ca_key, SigningKey):
        raise MembershipListError(f"cannot sign with a {type(ca_key).__name__} CA key")
    if ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != ca_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise MembershipListError("the CA key does not belong to the CA certificate")
    body_fields = {
        "ca_sha256": certificate_sha256(ca_cert),
        "serial": serial,
        "issued_at": issued_at.astimezone(dt.UTC).strftime(_ISSUED_AT),
        "members": [
            {"org_id": org, "certificates": sorted(set(prints))}
            for org, prints in sorted(members.items())
        ],
        "revoked": sorted(set(revoked)),
    }
    _decode_body(body_fields)  # the same rules a reader applies, before anything is signed
    body = _canonical(body_fields)
    signature = _sign(ca_key, _SIGNED_PREFIX + body.encode())
    document = {
        "format": FORMAT,
        "body": body,
        "signature": base64.b64encode(signature).decode(),
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def verify_membership_list(document: bytes, ca_cert: x509.Certificate) -> MembershipList:
    """Check a membership list's signature by ``ca_cert`` and its content; MembershipListError."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise MembershipListError(f"the membership list is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        outer = json.loads(document)
    except (ValueError, UnicodeDecodeError):
        raise MembershipListError("the membership list is not JSON") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise MembershipListError(f"the document is not a {FORMAT} membership list")
    body, signature_text = outer.get("body"), outer.get("signature")
    if not isinstance(body, str) or not isinstance(signature_text, str):
        raise MembershipListError("the membership list has no body or no signature")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (ValueError, binascii.Error):
        raise MembershipListError("the membership list's signature is not base64") from None
    if not _verify(ca_cert.public_key(), signature, _SIGNED_PREFIX + body.encode()):
        raise MembershipListError(
            "the membership list is not signed by the consortium CA (or was altered)"
        )
    try:
        fields = json.loads(body)
    except ValueError:
        raise MembershipListError("the membership list's body is not JSON") from None
    if not isinstance(fields, dict) or _canonical(fields) != body:
        raise MembershipListError("the membership list's body is not in canonical form")
    parsed = _decode_body(fields)
    if parsed.ca_sha256 != certificate_sha256(ca_cert):
        raise MembershipListError("the membership list names another consortium CA")
    return MembershipList(
        parsed.ca_sha256,
        parsed.serial,
        parsed.issued_at,
        parsed.members,
        parsed.revoked,
        document,
    )


def _canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _decode_body(fields: Mapping[str, Any]) -> MembershipList:
    if set(fields) != {"ca_sha256", "serial", "issued_at", "members", "revoked"}:
        raise MembershipListError("the membership list's body has missing or unknown fields")
    ca_sha256, serial = fields["ca_sha256"], fields["serial"]
    if not isinstance(ca_sha256, str) or not _FINGERPRINT.match(ca_sha256):
        raise MembershipListError("ca_sha256 must be a hex SHA-256")
    if not isinstance(serial, int) or isinstance(serial, bool) or not 1 <= serial < 2**63:
        raise MembershipListError("serial must be a positive integer below 2**63")
    try:
        issued_at = dt.datetime.strptime(str(fields["issued_at"]), _ISSUED_AT).replace(
            tzinfo=dt.UTC
        )
    except ValueError:
        raise MembershipListError("issued_at must read YYYY-MM-DDTHH:MM:SSZ") from None
    members: dict[str, frozenset[str]] = {}
    entries = fields["members"]
    if not isinstance(entries, list):
        raise MembershipListError("members must be a list")
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"org_id", "certificates"}:
            raise MembershipListError("each member has exactly an org_id and its certificates")
        org_id, prints = entry["org_id"], entry["certificates"]
        _org_id(org_id)
        if org_id in members:
            raise MembershipListError(f"organization {org_id!r} is listed twice")
        if (
            not isinstance(prints, list)
            or not prints
            or not all(isinstance(p, str) and _FINGERPRINT.match(p) for p in prints)
        ):
            raise MembershipListError(
                f"member {org_id!r} needs one or more certificate SHA-256s in hex"
            )
        members[org_id] = frozenset(prints)
    revoked = fields["revoked"]
    if not isinstance(revoked, list):
        raise MembershipListError("revoked must be a list of org ids")
    for org_id in revoked:
        _org_id(org_id)
    both = set(members) & set(revoked)
    if both:
        raise MembershipListError(f"organizations both members and revoked: {sorted(both)}")
    return MembershipList(ca_sha256, serial, issued_at, members, frozenset(revoked), b"")


def _org_id(value: object) -> str:
    if not isinstance(value, str):
        raise MembershipListError("an org id must be text")
    try:
        return validate_org_id(value)
    except PkiError as exc:
        raise MembershipListError(str(exc)) from None


def _sign(key: SigningKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, _PSS, hashes.SHA256())


_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _verify(public_key: object, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _PSS, hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True
