"""``fedsilo pki``: run the consortium CA, make organization keys and CSRs, and revoke certificates.

The commands keep the consortium's trust split (docs/design.md, "Identity and transport"): the
CA (``init``, ``sign``) only ever sees certificate signing requests, and an organization's private
key (``csr``) never leaves the machine it was made on. ``show`` and ``revoke`` work on
certificates alone. ``membership sign`` is the CA's too: it signs the consortium's membership and
revocation list (``fedsilo.membership``) that the admin publishes and every participant checks;
``membership show`` verifies and prints one.

Wiring into the ``fedsilo`` parser takes two calls: :func:`register` adds the ``pki`` command to
the subparsers object, and :func:`run` executes a parsed ``pki`` command and returns its exit code.

Exit codes: 0 success; 2 a local problem (bad input, missing or unreadable file, refusal to
overwrite, invalid CSR, expired CA); 1 the coordinator failed or refused a revocation (the same
split as the rest of ``fedsilo``). Every failure prints one plain line, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import hashlib
import ipaddress
import json
import os
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from rich.console import Console
from rich.markup import escape

from fedsilo import membership, pki
from fedsilo.cli.admin_connection import AdminConnectionError, add_admin_connection, admin_tls
from fedsilo.config import format_duration
from fedsilo.pki import Role
from fedsilo.tls import TlsFiles

__all__ = ["PASSPHRASE_ENV", "normalize_serial_hex", "register", "run", "serial_hex"]

EXIT_OK = 0
EXIT_REMOTE_FAILURE = 1
EXIT_LOCAL_FAILURE = 2

# RFC 5280 §4.1.2.2: a serial number is a positive integer of at most 20 octets, so its DER
# encoding (which needs a leading zero bit for a positive number) holds at most 159 value bits.
_MAX_SERIAL_BITS = 159
_MAX_CA_NAME_LENGTH = 64  # upper bound of an X.520 common name

_ROLE_NAMES = [role.value for role in Role]


class _UserError(ValueError):
    """A pki command cannot do what was asked; the message is meant for the person at the shell."""


PASSPHRASE_ENV = "FEDSILO_CA_PASSPHRASE"  # noqa: S105 (the name of a variable, not a secret)
"""Environment variable holding the CA key's passphrase (for scripts; a file is safer)."""

_MAX_PASSPHRASE_BYTES = 1024


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as lower-case hex without separators or leading zeros (e.g. ``"1a2b"``).

    The coordinator keys its revocation list on this exact form, so everything that names a
    certificate by serial uses this function.
    """
    return format(cert.serial_number, "x")


def normalize_serial_hex(text: str) -> str:
    """Turn a serial as people copy it into :func:`serial_hex` form, or raise ValueError.

    Accepts upper or lower case, a ``0x`` prefix, ``:`` separators and leading zeros, as printed
    by ``openssl x509 -serial`` or ``openssl x509 -text``.
    """
    cleaned = "".join(text.split()).lower().replace(":", "").removeprefix("0x")
    # int(..., 16) alone would also accept "_" and a sign, which no serial display contains.
    if not cleaned or any(char not in string.hexdigits for char in cleaned):
        raise ValueError(f"serial {text!r} is not a hexadecimal number")
    value = int(cleaned, 16)
    if value == 0 or value.bit_length() > _MAX_SERIAL_BITS:
        raise ValueError(f"serial {text!r} is not a valid certificate serial number")
    return format(value, "x")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki`` and its subcommands (init, csr, sign, show, revoke, membership)."""
    parser = commands.add_parser(
        "pki",
        help="consortium CA: create it, make keys and CSRs, sign them, inspect and revoke certs",
        description=(
            "Offline CA: 'init' once, then each organization runs 'csr' on its own machine, sends "
            "the .csr file to the CA, and the CA runs 'sign'. Private keys never leave their owner."
        ),
    )
    actions = parser.add_subparsers(dest="pki_action", required=True, metavar="ACTION")

    init = actions.add_parser(
        "init", help="create the consortium CA (ca.crt, ca.key)", description=_HELP_INIT
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="CA directory")
    init.add_argument("--name", default="fedsilo consortium CA", help="CA common name")
    init.add_argument(
        "--days", type=int, default=pki.DEFAULT_CA_VALID_DAYS, help="validity in days"
    )
    _add_passphrase_flags(init)
    init.add_argument(
        "--no-passphrase",
        action="store_true",
        help="write ca.key unencrypted (only for throwaway test consortia)",
    )
    _add_json_flag(init)

    csr = actions.add_parser(
        "csr", help="make this organization's key and a CSR for the CA", description=_HELP_CSR
    )
    csr.add_argument("--org", required=True, metavar="ORG_ID", help="organization id")
    csr.add_argument("--role", required=True, choices=_ROLE_NAMES, help="role in the certificate")
    csr.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write")
    _add_json_flag(csr)

    sign = actions.add_parser(
        "sign", help="sign an organization's CSR with the CA", description=_HELP_SIGN
    )
    sign.add_argument("--ca", type=Path, required=True, metavar="DIR", help="CA directory")
    sign.add_argument("--csr", type=Path, required=True, metavar="FILE", help="PEM CSR to sign")
    sign.add_argument("--out", type=Path, required=True, metavar="FILE", help="certificate file")
    sign.add_argument(
        "--days", type=int, default=pki.DEFAULT_CERT_VALID_DAYS, help="validity in days"
    )
    sign.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="DNS name (repeatable)"
    )
    sign.add_argument(
        "--ip", action="append", default=[], metavar="ADDR", help="IP address (repeatable)"
    )
    _add_passphrase_flags(sign)
    _add_json_flag(sign)

    show = actions.add_parser("show", help="print what a certificate says")
    show.add_argument("certificate", type=Path, metavar="CERT", help="PEM certificate file")
    _add_json_flag(show)

    revoke = actions.add_parser(
        "revoke", help="revoke a certificate at the coordinator", description=_HELP_REVOKE
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    # The certificate to revoke is positional because --cert is the admin's own TLS certificate,
    # as in every other admin command.
    target.add_argument(
        "certificate",
        nargs="?",
        type=Path,
        metavar="CERTIFICATE",
        help="PEM certificate to revoke",
    )
    target.add_argument("--serial", metavar="HEX", help="serial number of the certificate")
    revoke.add_argument("--reason", default="", help="why (recorded in the audit log)")
    add_admin_connection(revoke, json_flag=False)
    _add_json_flag(revoke)

    members = actions.add_parser(
        "membership",
        help="sign or check the consortium's membership and revocation list",
        description=_HELP_MEMBERSHIP,
    )
    member_actions = members.add_subparsers(
        dest="membership_action", required=True, metavar="ACTION"
    )
    member_sign = member_actions.add_parser(
        "sign", help="sign a membership list with the CA key", description=_HELP_MEMBERSHIP_SIGN
    )
    member_sign.add_argument("--ca", type=Path, required=True, metavar="DIR", help="CA directory")
    member_sign.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="CERT|ORG=SHA256",
        help="a member: its certificate file, or its org id and certificate SHA-256 (repeatable)",
    )
    member_sign.add_argument(
        "--revoke", action="append", default=[], metavar="ORG", help="a revoked org (repeatable)"
    )
    member_sign.add_argument(
        "--serial", type=int, help="the list's serial (default: above --previous and the time)"
    )
    member_sign.add_argument(
        "--previous", type=Path, metavar="FILE", help="the list this one replaces (checked)"
    )
    member_sign.add_argument(
        "--renew",
        type=Path,
        metavar="FILE",
        help="re-issue FILE's members and revocations under a new serial and time of issue "
        "(instead of --member, --revoke and --previous)",
    )
    member_sign.add_argument("--out", type=Path, required=True, metavar="FILE", help="list file")
    _add_passphrase_flags(member_sign)
    _add_json_flag(member_sign)
    member_show = member_actions.add_parser("show", help="verify a membership list and print it")
    member_show.add_argument("file", type=Path, metavar="FILE", help="membership list")
    member_show.add_argument(
        "--ca-cert", type=Path, required=True, metavar="CERT", help="the consortium CA certificate"
    )
    _add_json_flag(member_show)


def run(args: argparse.Namespace, console: Console) -> int:
    """Execute a parsed ``pki`` command; print results or a one-line error; return the exit code."""
    handler = _HANDLERS.get(getattr(args, "pki_action", None) or "")
    if handler is None:
        _print_error(console, f"unknown pki action; choose one of {', '.join(_HANDLERS)}")
        return EXIT_LOCAL_FAILURE
    try:
        return handler(args, console)
    except OSError as exc:
        _print_error(console, _describe_os_error(exc))
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        # ValueError covers our own _UserError, pki's validation errors and TlsConfigError.
        _print_error(console, str(exc))
    except grpc.RpcError as exc:
        _print_error(console, f"coordinator: {exc.code().name}: {exc.details()}")
        return EXIT_REMOTE_FAILURE
    return EXIT_LOCAL_FAILURE


# ---------------------------------------------------------------------------------------- init

_HELP_INIT = (
    "Create a self-signed consortium CA in DIR: ca.crt (give it to every party) and ca.key "
    "(mode 0600, encrypted with a passphrase; keep it offline). The passphrase comes from "
    f"--passphrase-file, else ${PASSPHRASE_ENV}, else a prompt; --no-passphrase writes the key "
    "unencrypted. Refuses to touch an existing CA."
)


def _init(args: argparse.Namespace, console: Console) -> int:
    out: Path = args.out
    _check_days(args.days)
    name = args.name.strip()
    if not name or len(name) > _MAX_CA_NAME_LENGTH:
        raise _UserError(f"--name must be 1-{_MAX_CA_NAME_LENGTH} characters")
    cert_path, key_path = out / pki.CA_CERT_FILENAME, out / pki.CA_KEY_FILENAME
    for path in (cert_path, key_path):
        if path.exists():
            raise _UserError(
                f"refusing to overwrite the existing CA file {path}; "
                "choose another --out directory (a new CA invalidates every issued certificate)"
            )
    if args.no_passphrase and args.passphrase_file is not None:
        raise _UserError("--no-passphrase and --passphrase-file contradict each other")
    passphrase = None if args.no_passphrase else _new_passphrase(args.passphrase_file)
    _ensure_private_directory(out)
    ca = pki.create_ca(name, args.days)
    files = ca.save(out, password=passphrase)
    result = {
        "ca_cert": str(files.cert_path),
        "ca_key": str(files.key_path),
        "ca_key_encrypted": passphrase is not None,
    }
    result.update(_certificate_summary(ca.cert))
    _emit(
        console,
        args.json,
        result,
        [
            f"created consortium CA {result['subject']}",
            f"  certificate: {files.cert_path}  (give it to the coordinator and every org)",
            f"  private key: {files.key_path}  (mode 0600, "
            + ("encrypted" if passphrase is not None else "NOT encrypted")
            + "; keep it offline)",
            f"  valid until: {result['not_after']}",
            f"  sha-256:     {result['sha256_fingerprint']}",
        ],
    )
    return EXIT_OK


# ----------------------------------------------------------------------------------------- csr

_HELP_CSR = (
    "Run by the organization itself: makes its private key ORG_ID.key (mode 0600; it never "
    "leaves this machine) and ORG_ID.csr, the file to send to the consortium CA."
)


def _csr(args: argparse.Namespace, console: Console) -> int:
    org_id = pki.validate_org_id(args.org)
    role = Role(args.role)
    out: Path = args.out
    key_path, csr_path = out / f"{org_id}.key", out / f"{org_id}.csr"
    for path in (key_path, csr_path):
        if path.exists():
            raise _UserError(
                f"refusing to overwrite {path}: it may belong to a key in use; "
                "move it away or choose another --out directory"
            )
    _ensure_private_directory(out)
    key = pki.make_key()
    csr = pki.make_csr(org_id, role, key)
    pki.write_private_key(key_path, key)
    try:
        # "x": exclusive creation, like the key; a CSR is public, so the default mode is fine.
        with csr_path.open("xb") as stream:
            stream.write(csr.public_bytes(serialization.Encoding.PEM))
    except BaseException:
        # We just made this key; without its CSR it is of no use, and a rerun must not trip on it.
        key_path.unlink(missing_ok=True)
        raise
    fingerprint = _csr_fingerprint(csr)
    sign_hint = f"fedsilo pki sign --ca CA_DIR --csr {csr_path.name} --out {org_id}.crt"
    if role is Role.COORDINATOR:
        sign_hint += " --dns HOSTNAME"
    result = {
        "org_id": org_id,
        "role": role.value,
        "key": str(key_path),
        "csr": str(csr_path),
        "csr_sha256": fingerprint,
        "next_step": (
            f"send {csr_path.name} (never {key_path.name}) to the consortium CA, confirm the CSR "
            f"fingerprint with them over another channel; the CA runs: {sign_hint}"
        ),
    }
    _emit(
        console,
        args.json,
        result,
        [
            f"created a key and CSR for {org_id} ({role.value})",
            f"  private key: {key_path}  (mode 0600; never send it anywhere)",
            f"  request:     {csr_path}",
            f"  csr sha-256: {fingerprint}",
            f"next: send {csr_path.name} to the consortium CA and confirm the fingerprint above "
            "with them by another channel (phone, in person). The CA runs:",
            f"  {sign_hint}",
            f"then put the returned {org_id}.crt next to {key_path.name}, with the CA's "
            f"{pki.CA_CERT_FILENAME}.",
        ],
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------- sign

_HELP_SIGN = (
    "Run by the CA: checks the CSR (its signature, organization id and role) and writes a "
    "certificate. A coordinator certificate needs the --dns names / --ip addresses participants "
    "dial."
)


def _sign(args: argparse.Namespace, console: Console) -> int:
    _check_days(args.days)
    out: Path = args.out
    if out.exists():
        raise _UserError(f"refusing to overwrite {out}; choose another --out file")
    ca = _load_ca(args.ca, args.passphrase_file)
    csr = _read_csr(args.csr)
    if not csr.is_signature_valid:
        raise _UserError(
            f"{args.csr}: CSR signature is invalid: the request was altered or was not signed "
            "by the key it contains"
        )
    _, role = pki.subject_identity(csr.subject)
    ips = [_parse_ip(text) for text in args.ip]
    if role is Role.COORDINATOR and not args.dns and not ips:
        raise _UserError(
            "a coordinator certificate needs at least one --dns NAME or --ip ADDR "
            "(the names participants use to reach it)"
        )
    now = dt.datetime.now(dt.UTC)
    if now >= ca.cert.not_valid_after_utc:
        raise _UserError(
            f"the CA certificate expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}; "
            "create a new CA before signing"
        )
    if now < ca.cert.not_valid_before_utc:
        raise _UserError(
            f"the CA certificate is not valid before {ca.cert.not_valid_before_utc.isoformat()}; "
            "check this machine's clock"
        )
    if now + dt.timedelta(days=args.days) > ca.cert.not_valid_after_utc:
        days_left = (ca.cert.not_valid_after_utc - now).days
        raise _UserError(
            f"--days {args.days} would outlive the CA, which expires on "
            f"{ca.cert.not_valid_after_utc:%Y-%m-%d}; use --days {days_left} or less"
        )
    cert = pki.sign_csr(ca, csr, args.days, args.dns, ips, now=now)
    out.parent.mkdir(parents=True, exist_ok=True)
    pki.write_certificate(out, cert)
    summary = _certificate_summary(cert)
    result = {"certificate": str(out), "csr_sha256": _csr_fingerprint(csr), **summary}
    _emit(
        console,
        args.json,
        result,
        [
            f"signed {summary['subject']} -> {out}",
            *_summary_lines(summary),
            f"  csr sha-256:  {result['csr_sha256']}",
        ],
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------- show


def _show(args: argparse.Namespace, console: Console) -> int:
    summary = _certificate_summary(_read_certificate(args.certificate, "certificate"))
    _emit(console, args.json, summary, [f"{args.certificate}:", *_summary_lines(summary)])
    return EXIT_OK


# -------------------------------------------------------------------------------------- revoke

_HELP_REVOKE = (
    "Ask the coordinator to refuse a certificate from now on (needs an admin certificate). "
    "Name it by its file (CERT) or by --serial HEX as printed by 'fedsilo pki show'."
)


def _revoke(args: argparse.Namespace, console: Console) -> int:
    subject: str | None = None
    if args.certificate is not None:
        cert = _read_certificate(args.certificate, "certificate")
        if _is_ca(cert):
            raise _UserError(
                f"{args.certificate} is a CA certificate; revoke the certificates it issued"
            )
        serial = serial_hex(cert)
        subject = cert.subject.rfc4514_string()
    else:
        serial = normalize_serial_hex(args.serial)
    if args.timeout <= 0:
        raise _UserError(f"--timeout must be positive, got {args.timeout}")
    try:
        tls = admin_tls(args)
    except AdminConnectionError as exc:
        raise _UserError(str(exc)) from None
    already_revoked = _send_revocation(args.coordinator, tls, args.timeout, serial, args.reason)
    result = {
        "serial_hex": serial,
        "subject": subject,
        "already_revoked": already_revoked,
        "coordinator": args.coordinator,
    }
    named = f"{serial} ({subject})" if subject else serial
    status = "was already revoked" if already_revoked else "is now revoked"
    _emit(console, args.json, result, [f"certificate {named} {status} at {args.coordinator}"])
    return EXIT_OK


def _send_revocation(target: str, tls: TlsFiles, timeout: float, serial: str, reason: str) -> bool:
    """Call AdminService.RevokeCertificate; return whether the serial was already revoked."""
    # Imported here: the CA-side commands must not need numpy and the gRPC client stack.
    from fedsilo.admin import AdminClient

    with AdminClient(target, tls, timeout=timeout) as client:
        return client.revoke_certificate(serial, reason)


# ---------------------------------------------------------------------------------- membership

_HELP_MEMBERSHIP = (
    "The consortium's membership and revocation list, signed by the CA key: participants take "
    "part in secure rounds and key ceremonies only with the organizations it admits, under the "
    "certificates it lists. After approving or revoking an organization, sign a new list and "
    "publish it: fedsilo participants publish-membership FILE."
)

_HELP_MEMBERSHIP_SIGN = (
    "Run by the CA: writes a membership list admitting each --member (its certificate file, or "
    "ORG=SHA256 of its certificate as 'fedsilo pki show' prints it) and naming each --revoke'd "
    "organization. The serial must be above every earlier list's (participants refuse a lower "
    "one): by default it is the current Unix time, or one above --previous if that is higher. "
    "Participants answer no secure work under a list older than their "
    "accept.max_membership_age (30 days by default): --renew FILE re-issues the current list "
    "unchanged, with a new serial and time of issue, to publish before it ages out."
)


def _membership(args: argparse.Namespace, console: Console) -> int:
    if args.membership_action == "show":
        return _membership_show(args, console)
    return _membership_sign(args, console)


def _membership_sign(args: argparse.Namespace, console: Console) -> int:
    out: Path = args.out
    if out.exists():
        raise _UserError(f"refusing to overwrite {out}; choose another --out file")
    if args.renew is not None and (args.member or args.revoke or args.previous is not None):
        raise _UserError(
            "--renew re-issues a list as it is: give no --member, --revoke or --previous"
        )
    if args.renew is None and not args.member:
        raise _UserError("a membership list needs at least one --member")
    ca = _load_ca(args.ca, args.passphrase_file)
    members: dict[str, set[str]] = {}
    revoked: set[str] = set()
    lowest = 1
    if args.renew is not None:
        renewed = membership.verify_membership_list(args.renew.read_bytes(), ca.cert)
        members = {org: set(prints) for org, prints in renewed.members.items()}
        revoked = set(renewed.revoked)
        lowest = renewed.serial + 1
    for text in args.member:
        org_id, fingerprint = _member(text)
        members.setdefault(org_id, set()).add(fingerprint)
    revoked |= {pki.validate_org_id(org) for org in args.revoke}
    both = sorted(set(members) & revoked)
    if both:
        raise _UserError(f"both --member and --revoke: {', '.join(both)}")
    now = dt.datetime.now(dt.UTC)
    if args.previous is not None:
        previous = membership.verify_membership_list(args.previous.read_bytes(), ca.cert)
        lowest = previous.serial + 1
    serial = args.serial if args.serial is not None else max(int(now.timestamp()), lowest)
    if serial < lowest:
        earlier = "--renew" if args.renew is not None else "--previous"
        raise _UserError(f"--serial {serial} is not above the {earlier} list's {lowest - 1}")
    document = membership.sign_membership_list(
        ca.cert, ca.key, members, revoked, serial, issued_at=now
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("xb") as stream:
        stream.write(document)
    result = {
        "file": str(out),
        "serial": serial,
        "issued_at": now.replace(microsecond=0).isoformat(),
        "members": {org: sorted(prints) for org, prints in sorted(members.items())},
        "revoked": sorted(revoked),
    }
    _emit(
        console,
        args.json,
        result,
        [
            f"signed membership list {serial}, issued {result['issued_at']} -> {out}",
            f"  members: {', '.join(sorted(members))}",
            f"  revoked: {', '.join(sorted(revoked)) or '-'}",
            f"next: fedsilo participants publish-membership {out}",
        ],
    )
    return EXIT_OK


def _member(text: str) -> tuple[str, str]:
    """A --member value: ORG=SHA256, or the path of the member's certificate."""
    org_id, sep, fingerprint = text.partition("=")
    if sep:
        fingerprint = fingerprint.strip().lower().replace(":", "")
        if len(fingerprint) != 64 or any(c not in string.hexdigits for c in fingerprint):
            raise _UserError(f"--member {text!r}: the SHA-256 must be 64 hex digits")
        return pki.validate_org_id(org_id), fingerprint
    cert = _read_certificate(Path(text), "member certificate")
    org_id, role = pki.subject_identity(cert.subject)
    if role is not Role.PARTICIPANT:
        raise _UserError(f"{text} is a {role.value} certificate, not a participant's")
    return org_id, membership.certificate_sha256(cert)


def _membership_show(args: argparse.Namespace, console: Console) -> int:
    ca_cert = _read_certificate(args.ca_cert, "CA certificate")
    listed = membership.verify_membership_list(args.file.read_bytes(), ca_cert)
    members = {org: sorted(prints) for org, prints in sorted(listed.members.items())}
    revoked = sorted(listed.revoked)
    result = {
        "serial": listed.serial,
        "issued_at": listed.issued_at.isoformat(),
        "ca_sha256": listed.ca_sha256,
        "members": members,
        "revoked": revoked,
    }
    lines = [
        f"{args.file}: membership list {listed.serial}, signed by the CA, "
        f"issued {listed.issued_at.isoformat()} "
        f"({format_duration(listed.age(dt.datetime.now(dt.UTC)))} ago)",
        *(f"  member {org}: {', '.join(prints)}" for org, prints in members.items()),
        f"  revoked: {', '.join(revoked) or '-'}",
    ]
    _emit(console, args.json, result, lines)
    return EXIT_OK


# ------------------------------------------------------------------------------------- helpers

_Handler = Callable[[argparse.Namespace, Console], int]

_HANDLERS: dict[str, _Handler] = {
    "init": _init,
    "csr": _csr,
    "sign": _sign,
    "show": _show,
    "revoke": _revoke,
    "membership": _membership,
}


def _add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _check_days(days: int) -> None:
    if days <= 0:
        raise _UserError(f"--days must be a positive number of days, got {days}")


def _ensure_private_directory(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise _UserError(f"{directory} exists and is not a directory")
        return
    # The directory will hold a private key: nobody else needs to list or enter it.
    directory.mkdir(parents=True, mode=0o700)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _UserError(f"--ip {text!r} is not an IPv4 or IPv6 address") from None


def _read_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return pki.load_certificate(path)
    except ValueError:
        raise _UserError(f"{what} {path} is not a PEM certificate") from None


def _read_csr(path: Path) -> x509.CertificateSigningRequest:
    data = path.read_bytes()
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise _UserError(f"{path} is not a PEM certificate signing request") from None


def _load_ca(directory: Path, passphrase_file: Path | None) -> pki.CertificateAuthority:
    cert_path, key_path = directory / pki.CA_CERT_FILENAME, directory / pki.CA_KEY_FILENAME
    for path in (cert_path, key_path):
        if not path.is_file():
            raise _UserError(
                f"no CA in {directory}: {path.name} is missing (create one with 'fedsilo pki init')"
            )
    # Read each file once on its own first so that a broken one is named in plain words;
    # pki.load_ca then checks that they form a CA and belong together.
    _read_certificate(cert_path, "CA certificate")
    pem = key_path.read_bytes()
    if _is_encrypted(pem):
        passphrase: bytes | None = _existing_passphrase(passphrase_file, key_path)
    elif passphrase_file is not None:
        raise _UserError(f"CA key {key_path} is not encrypted; drop --passphrase-file")
    else:
        passphrase = None  # an unencrypted (--no-passphrase) CA: $FEDSILO_CA_PASSPHRASE unused
    try:
        pki.load_private_key(key_path, password=passphrase)
    except TypeError:
        raise _UserError(f"CA key {key_path} is encrypted in a way pki cannot read") from None
    except (ValueError, UnsupportedAlgorithm):
        if passphrase is not None:
            raise _UserError(
                f"CA key {key_path}: wrong passphrase, or not an EC or RSA PEM private key"
            ) from None
        raise _UserError(f"CA key {key_path} is not an EC or RSA PEM private key") from None
    return pki.load_ca(cert_path, key_path, password=passphrase)


def _add_passphrase_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help=f"read the CA key's passphrase from FILE (its first line); else ${PASSPHRASE_ENV}, "
        "else a prompt",
    )


def _is_encrypted(pem: bytes) -> bool:
    # PKCS#8 encrypted keys (what pki writes) and legacy OpenSSL encrypted PEM.
    return b"BEGIN ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem


def _passphrase_from(passphrase_file: Path | None) -> bytes | None:
    """The passphrase from --passphrase-file or the environment; None when neither gives one."""
    if passphrase_file is not None:
        lines = passphrase_file.read_bytes().splitlines()
        return _checked_passphrase(lines[0] if lines else b"", f"{passphrase_file}")
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return _checked_passphrase(from_env.encode(), f"${PASSPHRASE_ENV}")
    return None


def _checked_passphrase(passphrase: bytes, source: str) -> bytes:
    if not passphrase.strip():
        raise _UserError(
            f"the passphrase in {source} is empty; give one, or --no-passphrase at 'pki init' "
            "for an unencrypted CA key"
        )
    if len(passphrase) > _MAX_PASSPHRASE_BYTES:
        raise _UserError(f"the passphrase in {source} is longer than {_MAX_PASSPHRASE_BYTES} bytes")
    return passphrase


def _prompt(prompt: str) -> bytes:
    if not sys.stdin.isatty():
        raise _UserError(
            f"the CA key needs a passphrase: give --passphrase-file FILE or set ${PASSPHRASE_ENV} "
            "(no terminal to prompt on)"
        )
    return getpass.getpass(prompt).encode()


def _new_passphrase(passphrase_file: Path | None) -> bytes:
    given = _passphrase_from(passphrase_file)
    if given is not None:
        return given
    first = _checked_passphrase(_prompt("passphrase for the new CA key: "), "the prompt")
    if _prompt("the same passphrase again: ") != first:
        raise _UserError("the two passphrases differ; nothing was written")
    return first


def _existing_passphrase(passphrase_file: Path | None, key_path: Path) -> bytes:
    given = _passphrase_from(passphrase_file)
    if given is not None:
        return given
    return _checked_passphrase(_prompt(f"passphrase of {key_path}: "), "the prompt")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _csr_fingerprint(csr: x509.CertificateSigningRequest) -> str:
    # Over the DER form, so the organization and the CA get the same value from the same request.
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


def _certificate_summary(cert: x509.Certificate) -> dict[str, Any]:
    org_id: str | None = None
    role: str | None = None
    try:
        org_id, parsed_role = pki.subject_identity(cert.subject)
        role = parsed_role.value
    except ValueError:
        # A CA certificate (or a foreign one) names no organization; still worth showing.
        pass
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        dns_names = names.get_values_for_type(x509.DNSName)
        ip_addresses = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return {
        "subject": cert.subject.rfc4514_string(),
        "org_id": org_id,
        "role": role,
        "serial_hex": serial_hex(cert),
        "dns_names": dns_names,
        "ip_addresses": ip_addresses,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "issuer": cert.issuer.rfc4514_string(),
        "is_ca": _is_ca(cert),
        "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
    }


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    def listed(values: Sequence[str]) -> str:
        return ", ".join(values) if values else "-"

    return [
        f"  org id:       {summary['org_id'] or '-'}",
        f"  role:         {summary['role'] or ('CA' if summary['is_ca'] else '-')}",
        f"  serial:       {summary['serial_hex']}",
        f"  dns names:    {listed(summary['dns_names'])}",
        f"  ip addresses: {listed(summary['ip_addresses'])}",
        f"  not before:   {summary['not_before']}",
        f"  not after:    {summary['not_after']}",
        f"  issuer:       {summary['issuer']}",
        f"  sha-256:      {summary['sha256_fingerprint']}",
    ]


def _emit(console: Console, as_json: bool, result: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        # console.out: no markup, no wrapping, no highlighting -- the bytes a script parses.
        console.out(json.dumps(result, indent=2), highlight=False)
        return
    for line in lines:
        console.print(escape(line), soft_wrap=True, highlight=False)


def _print_error(console: Console, message: str) -> None:
    # One line whatever the message holds, and brackets in it (IPv6, paths) are not markup.
    one_line = " ".join(message.split())
    console.print(f"[red]error:[/red] {escape(one_line)}", soft_wrap=True, highlight=False)


def _describe_os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "file"
    if isinstance(exc, FileExistsError):
        return f"refusing to overwrite {where}: it already exists"
    if isinstance(exc, FileNotFoundError):
        return f"{where}: no such file or directory"
    if isinstance(exc, PermissionError):
        return f"{where}: permission denied"
    return f"{where}: {exc.strerror or exc}"
