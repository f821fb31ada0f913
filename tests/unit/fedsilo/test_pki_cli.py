"""Tests for ``fedsilo pki``: the CA workflow from the shell, refusals, and one-line errors.

Longer than 600 lines on purpose: one module per command group, and each ``pki`` subcommand
needs its workflow, its refusals and its error lines checked against the same CA fixture.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from rich.console import Console

from fedsilo import pki
from fedsilo.cli import pki_commands as pki_cli
from fedsilo.cli.pki_commands import (
    PASSPHRASE_ENV,
    normalize_serial_hex,
    register,
    run,
    serial_hex,
)
from fedsilo.pki import Role
from fedsilo.tls import TlsFiles

TLS_ENV = (
    "FEDSILO_ADMIN_COORDINATOR",
    "FEDSILO_ADMIN_CA_CERT",
    "FEDSILO_ADMIN_CERT",
    "FEDSILO_ADMIN_KEY",
)


@pytest.fixture(autouse=True)
def _no_ambient_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The revoke flags take defaults from the environment; a developer's shell must not leak in.
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)
    # Every CA in these tests is encrypted, as a real one is; the tests of the passphrase
    # sources change or remove this.
    monkeypatch.setenv(PASSPHRASE_ENV, TEST_PASSPHRASE)


TEST_PASSPHRASE = "correct horse battery staple"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedsilo")
    commands = parser.add_subparsers(dest="command")
    register(commands)
    return parser.parse_args(["pki", *argv])


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    # Narrow on purpose: long messages must still come out as one line.
    console = Console(file=out, width=60, color_system=None)
    code = run(_parse(*argv), console)
    return code, out.getvalue()


def _sign(ca_dir: Path, csr: Path | str, out: Path, *extra: str) -> tuple[int, str]:
    return _run("sign", "--ca", str(ca_dir), "--csr", str(csr), "--out", str(out), *extra)


def _assert_one_line_error(output: str, *fragments: str) -> None:
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pem_csr(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


@dataclass(frozen=True)
class Consortium:
    """A CA made with ``pki init`` and one organization's CSR made with ``pki csr``."""

    ca_dir: Path
    org_dir: Path

    @property
    def ca_cert(self) -> x509.Certificate:
        return pki.load_certificate(self.ca_dir / "ca.crt")

    def csr_path(self, org_id: str = "acme") -> Path:
        return self.org_dir / f"{org_id}.csr"

    def key_path(self, org_id: str = "acme") -> Path:
        return self.org_dir / f"{org_id}.key"


@pytest.fixture
def consortium(tmp_path: Path) -> Consortium:
    ca_dir, org_dir = tmp_path / "ca", tmp_path / "acme"
    assert _run("init", "--out", str(ca_dir))[0] == 0
    assert _run("csr", "--org", "acme", "--role", "participant", "--out", str(org_dir))[0] == 0
    return Consortium(ca_dir, org_dir)


# ------------------------------------------------------------------------------- full workflow


def test_init_csr_sign_show_gives_a_certificate_the_ca_vouches_for(tmp_path: Path) -> None:
    ca_dir, org_dir, cert_path = tmp_path / "ca", tmp_path / "acme", tmp_path / "out" / "acme.crt"

    code, output = _run("init", "--out", str(ca_dir), "--name", "test consortium CA")
    assert code == 0, output
    assert _mode(ca_dir / "ca.key") == 0o600
    ca_cert = pki.load_certificate(ca_dir / "ca.crt")
    assert ca_cert.subject.rfc4514_string() == "CN=test consortium CA"
    assert ca_cert.fingerprint(hashes.SHA256()).hex() in output

    code, output = _run("csr", "--org", "acme", "--role", "participant", "--out", str(org_dir))
    assert code == 0, output
    assert _mode(org_dir / "acme.key") == 0o600
    assert "fedsilo pki sign" in output  # the next step is spelled out
    key = pki.load_private_key(org_dir / "acme.key")
    csr = x509.load_pem_x509_csr((org_dir / "acme.csr").read_bytes())
    assert csr.public_key() == key.public_key()
    assert pki.subject_identity(csr.subject) == ("acme", Role.PARTICIPANT)

    code, output = _sign(ca_dir, org_dir / "acme.csr", cert_path)
    assert code == 0, output
    cert = pki.load_certificate(cert_path)
    assert cert.public_key() == key.public_key()
    assert pki.subject_identity(cert.subject) == ("acme", Role.PARTICIPANT)
    verifier = PolicyBuilder().store(Store([ca_cert])).build_client_verifier()
    verifier.verify(cert, [])
    assert serial_hex(cert) in output
    assert "participant" in output
    assert "OU=participant,CN=acme" in output
    assert cert.not_valid_after_utc.isoformat() in output
    # The CA never needed, and never got, the organization's private key.
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]

    code, output = _run("show", str(cert_path), "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["org_id"] == "acme"
    assert shown["role"] == "participant"
    assert shown["serial_hex"] == format(cert.serial_number, "x")
    assert shown["dns_names"] == ["acme"]
    assert shown["ip_addresses"] == []
    assert shown["issuer"] == "CN=test consortium CA"
    assert shown["not_before"] == cert.not_valid_before_utc.isoformat()
    assert shown["not_after"] == cert.not_valid_after_utc.isoformat()
    assert shown["sha256_fingerprint"] == cert.fingerprint(hashes.SHA256()).hex()
    assert shown["is_ca"] is False

    code, output = _run("show", str(cert_path))
    assert code == 0, output
    assert serial_hex(cert) in output
    assert cert.fingerprint(hashes.SHA256()).hex() in output


def test_csr_fingerprint_printed_by_the_org_matches_the_one_the_ca_sees(
    consortium: Consortium, tmp_path: Path
) -> None:
    org_dir = tmp_path / "beta"
    code, output = _run("csr", "--org", "beta", "--role", "admin", "--out", str(org_dir), "--json")
    assert code == 0, output
    made = json.loads(output)
    assert made["key"] == str(org_dir / "beta.key")
    assert made["role"] == "admin"

    code, output = _sign(consortium.ca_dir, made["csr"], tmp_path / "beta.crt", "--json")
    assert code == 0, output
    signed = json.loads(output)
    assert signed["csr_sha256"] == made["csr_sha256"]
    assert (signed["org_id"], signed["role"]) == ("beta", "admin")


def test_coordinator_certificate_serves_the_names_it_was_signed_for(
    consortium: Consortium, tmp_path: Path
) -> None:
    org_dir, cert_path = tmp_path / "coordinator", tmp_path / "coordinator.crt"
    code, output = _run(
        "csr", "--org", "coordinator", "--role", "coordinator", "--out", str(org_dir)
    )
    assert code == 0, output
    assert "--dns" in output  # the next step reminds the CA of the names
    csr_path = org_dir / "coordinator.csr"

    code, output = _sign(consortium.ca_dir, csr_path, cert_path)
    assert code == 2
    _assert_one_line_error(output, "--dns", "--ip")
    assert not cert_path.exists()

    code, output = _sign(
        consortium.ca_dir, csr_path, cert_path, "--dns", "coordinator.example", "--ip", "10.0.0.5"
    )
    assert code == 0, output
    cert = pki.load_certificate(cert_path)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["coordinator.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
    verifier = (
        PolicyBuilder()
        .store(Store([consortium.ca_cert]))
        .build_server_verifier(x509.DNSName("coordinator.example"))
    )
    verifier.verify(cert, [])


def test_show_describes_the_ca_certificate_too(consortium: Consortium) -> None:
    code, output = _run("show", str(consortium.ca_dir / "ca.crt"), "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["is_ca"] is True
    assert shown["org_id"] is None
    assert shown["role"] is None


# ---------------------------------------------------------------------------------- refusals


def test_init_refuses_to_overwrite_an_existing_ca(consortium: Consortium) -> None:
    key_before = (consortium.ca_dir / "ca.key").read_bytes()
    cert_before = (consortium.ca_dir / "ca.crt").read_bytes()

    code, output = _run("init", "--out", str(consortium.ca_dir))

    assert code == 2
    _assert_one_line_error(output, "refusing to overwrite")
    assert (consortium.ca_dir / "ca.key").read_bytes() == key_before
    assert (consortium.ca_dir / "ca.crt").read_bytes() == cert_before


def test_init_refuses_when_only_the_ca_key_is_left(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_bytes(b"the only copy")

    code, output = _run("init", "--out", str(tmp_path))

    assert code == 2
    _assert_one_line_error(output, "ca.key")
    assert (tmp_path / "ca.key").read_bytes() == b"the only copy"
    assert not (tmp_path / "ca.crt").exists()


@pytest.mark.parametrize("existing", ["acme.key", "acme.csr"])
def test_csr_refuses_to_overwrite_an_existing_key_or_request(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"in use")

    code, output = _run("csr", "--org", "acme", "--role", "participant", "--out", str(tmp_path))

    assert code == 2
    _assert_one_line_error(output, "refusing to overwrite", existing)
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_bytes() == b"in use"


def test_sign_refuses_to_overwrite_an_existing_certificate(
    consortium: Consortium, tmp_path: Path
) -> None:
    out = tmp_path / "acme.crt"
    out.write_bytes(b"old")

    code, output = _sign(consortium.ca_dir, consortium.csr_path(), out)

    assert code == 2
    _assert_one_line_error(output, "refusing to overwrite")
    assert out.read_bytes() == b"old"


# ---------------------------------------------------------------------- CSR validation at the CA


@pytest.mark.parametrize(
    ("original", "forged"),
    [
        (b"acme", b"evil"),  # another organization's identity
        (b"participant", b"coordinator"),  # a role the organization did not ask for
    ],
)
def test_sign_rejects_a_tampered_csr(
    consortium: Consortium, tmp_path: Path, original: bytes, forged: bytes
) -> None:
    csr = x509.load_pem_x509_csr(consortium.csr_path().read_bytes())
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(original) == 1
    tampered = tmp_path / "tampered.csr"
    tampered.write_bytes(_pem_csr(der.replace(original, forged)))
    out = tmp_path / "tampered.crt"

    code, output = _sign(consortium.ca_dir, tampered, out, "--dns", "coordinator.example")

    assert code == 2
    _assert_one_line_error(output, "signature is invalid")
    assert not out.exists()


def test_sign_rejects_a_csr_signed_by_a_different_key(
    consortium: Consortium, tmp_path: Path
) -> None:
    claimed, signer = pki.make_key(), pki.make_key()
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    claimed_spki = claimed.public_key().public_bytes(*spki)
    signer_spki = signer.public_key().public_bytes(*spki)
    der = pki.make_csr("acme", Role.PARTICIPANT, signer).public_bytes(serialization.Encoding.DER)
    # Same subject, the claimed key's public key, the signer's signature.
    forged_der = der.replace(signer_spki, claimed_spki)
    forged = x509.load_der_x509_csr(forged_der)
    assert forged.public_key() == claimed.public_key()
    forged_path = tmp_path / "forged.csr"
    forged_path.write_bytes(_pem_csr(forged_der))
    out = tmp_path / "forged.crt"

    code, output = _sign(consortium.ca_dir, forged_path, out)

    assert code == 2
    _assert_one_line_error(output, "signature is invalid")
    assert not out.exists()


def test_sign_rejects_a_csr_with_an_unknown_role(consortium: Consortium, tmp_path: Path) -> None:
    key = pki.make_key()
    subject = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, "acme"),
            x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, "superuser"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    path = tmp_path / "superuser.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "superuser.crt"

    code, output = _sign(consortium.ca_dir, path, out)

    assert code == 2
    _assert_one_line_error(output, "unknown role", "superuser")
    assert not out.exists()


def test_sign_refuses_with_an_expired_ca(consortium: Consortium, tmp_path: Path) -> None:
    expired = pki.create_ca(valid_days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    expired.save(tmp_path / "old-ca")
    out = tmp_path / "acme.crt"

    code, output = _sign(tmp_path / "old-ca", consortium.csr_path(), out)

    assert code == 2
    _assert_one_line_error(output, "expired")
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--days", "0"], "--days"),
        (["--days", "100000"], "outlive the CA"),
        (["--ip", "banana"], "banana"),
        (["--dns", "has space"], "invalid DNS name"),
    ],
)
def test_sign_rejects_bad_options(
    consortium: Consortium, tmp_path: Path, extra: list[str], fragment: str
) -> None:
    out = tmp_path / "acme.crt"

    code, output = _sign(consortium.ca_dir, consortium.csr_path(), out, *extra)

    assert code == 2
    _assert_one_line_error(output, fragment)
    assert not out.exists()


def test_sign_reports_unusable_input_files_in_one_line(
    consortium: Consortium, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.csr"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n")
    out = str(tmp_path / "x.crt")
    ca, csr = str(consortium.ca_dir), str(consortium.csr_path())
    cases = [
        (["--ca", str(tmp_path / "nowhere"), "--csr", csr], "no CA in"),
        (["--ca", ca, "--csr", str(tmp_path / "missing.csr")], "no such file"),
        (["--ca", ca, "--csr", str(garbage)], "not a PEM certificate signing request"),
        (["--ca", ca, "--csr", str(consortium.ca_dir / "ca.crt")], "not a PEM certificate signing"),
        (["--ca", str(consortium.org_dir), "--csr", csr], "ca.crt is missing"),
    ]
    for args, fragment in cases:
        code, output = _run("sign", *args, "--out", out)
        assert code == 2, args
        _assert_one_line_error(output, fragment)


def test_sign_reports_a_ca_key_that_does_not_match(consortium: Consortium, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.create_ca().save(other)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.crt").write_bytes((consortium.ca_dir / "ca.crt").read_bytes())
    (mixed / "ca.key").write_bytes((other / "ca.key").read_bytes())

    code, output = _sign(mixed, consortium.csr_path(), tmp_path / "x.crt")

    assert code == 2
    _assert_one_line_error(output, "does not belong")


@pytest.mark.parametrize("org_id", ["Acme", "acme corp", "-acme", "acme\n", "a" * 64, ""])
def test_csr_rejects_a_bad_org_id_without_creating_anything(tmp_path: Path, org_id: str) -> None:
    out = tmp_path / "org"

    # "--org=..." so that "-acme" reaches the command instead of looking like an option.
    code, output = _run("csr", f"--org={org_id}", "--role", "participant", "--out", str(out))

    assert code == 2
    _assert_one_line_error(output, "invalid organization id")
    assert not out.exists()


def test_show_reports_a_file_that_is_not_a_certificate(consortium: Consortium) -> None:
    code, output = _run("show", str(consortium.csr_path()))
    assert code == 2
    _assert_one_line_error(output, "not a PEM certificate")

    code, output = _run("show", str(consortium.org_dir / "missing.crt"))
    assert code == 2
    _assert_one_line_error(output, "no such file")


def test_errors_do_not_treat_brackets_as_markup(tmp_path: Path) -> None:
    missing = tmp_path / "[red]x[/red].crt"

    code, output = _run("show", str(missing))

    assert code == 2
    _assert_one_line_error(output, "[red]x[/red].crt")


# -------------------------------------------------------------------------------------- serials


def test_serial_hex_is_lower_case_hex_without_separators(consortium: Consortium) -> None:
    cert = consortium.ca_cert
    assert serial_hex(cert) == format(cert.serial_number, "x")
    assert int(serial_hex(cert), 16) == cert.serial_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a1b2", "a1b2"),
        ("A1B2", "a1b2"),
        ("0x00a1b2", "a1b2"),
        ("00:A1:B2", "a1b2"),
        (" a1 b2\n", "a1b2"),
    ],
)
def test_normalize_serial_hex_accepts_common_spellings(text: str, expected: str) -> None:
    assert normalize_serial_hex(text) == expected


@pytest.mark.parametrize("text", ["", "0x", "0", "00:00", "xyz", "-1a", "a_b", "1" * 41])
def test_normalize_serial_hex_rejects_non_serials(text: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        normalize_serial_hex(text)


# --------------------------------------------------------------------------------------- revoke


@dataclass
class RevocationRecorder:
    """Stands in for the RPC: records what would be sent; the RPC itself is tested elsewhere."""

    already_revoked: bool = False
    error: Exception | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(
        self, target: str, tls: TlsFiles, timeout: float, serial: str, reason: str
    ) -> bool:
        self.calls.append(
            {"target": target, "tls": tls, "timeout": timeout, "serial": serial, "reason": reason}
        )
        if self.error is not None:
            raise self.error
        return self.already_revoked


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> RevocationRecorder:
    fake = RevocationRecorder()
    monkeypatch.setattr(pki_cli, "_send_revocation", fake)
    return fake


def _admin_flags(tmp_path: Path) -> list[str]:
    return [
        "--coordinator", "coordinator.example:50051",
        "--ca-cert", str(tmp_path / "ca.crt"),
        "--cert", str(tmp_path / "admin.crt"),
        "--key", str(tmp_path / "admin.key"),
    ]  # fmt: skip


def test_revoke_by_certificate_file_sends_its_serial(
    consortium: Consortium, tmp_path: Path, recorder: RevocationRecorder
) -> None:
    cert_path = tmp_path / "acme.crt"
    assert _sign(consortium.ca_dir, consortium.csr_path(), cert_path)[0] == 0
    cert = pki.load_certificate(cert_path)

    flags = _admin_flags(tmp_path)
    code, output = _run("revoke", str(cert_path), "--reason", "stolen", "--timeout", "5", *flags)

    assert code == 0, output
    assert recorder.calls == [
        {
            "target": "coordinator.example:50051",
            "tls": TlsFiles(tmp_path / "ca.crt", tmp_path / "admin.crt", tmp_path / "admin.key"),
            "timeout": 5.0,
            "serial": format(cert.serial_number, "x"),
            "reason": "stolen",
        }
    ]
    assert serial_hex(cert) in output
    assert "now revoked" in output


def test_revoke_by_serial_normalizes_it(tmp_path: Path, recorder: RevocationRecorder) -> None:
    recorder.already_revoked = True

    code, output = _run("revoke", "--serial", "00:0A:1B", "--json", *_admin_flags(tmp_path))

    assert code == 0, output
    assert [call["serial"] for call in recorder.calls] == ["a1b"]
    assert recorder.calls[0]["reason"] == ""
    assert json.loads(output) == {
        "serial_hex": "a1b",
        "subject": None,
        "already_revoked": True,
        "coordinator": "coordinator.example:50051",
    }


def test_revoke_takes_the_connection_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: RevocationRecorder
) -> None:
    monkeypatch.setenv("FEDSILO_ADMIN_COORDINATOR", "10.1.2.3:7000")
    monkeypatch.setenv("FEDSILO_ADMIN_CA_CERT", str(tmp_path / "env-ca.crt"))
    monkeypatch.setenv("FEDSILO_ADMIN_CERT", str(tmp_path / "env-admin.crt"))
    monkeypatch.setenv("FEDSILO_ADMIN_KEY", str(tmp_path / "env-admin.key"))

    code, output = _run("revoke", "--serial", "ff")

    assert code == 0, output
    assert recorder.calls[0]["target"] == "10.1.2.3:7000"
    assert recorder.calls[0]["tls"] == TlsFiles(
        tmp_path / "env-ca.crt", tmp_path / "env-admin.crt", tmp_path / "env-admin.key"
    )


def test_revoke_without_admin_certificate_stops_before_calling(
    tmp_path: Path, recorder: RevocationRecorder
) -> None:
    code, output = _run("revoke", "--serial", "ff", "--ca-cert", str(tmp_path / "ca.crt"))

    assert code == 2
    _assert_one_line_error(output, "--cert", "--key", "FEDSILO_ADMIN_CERT")
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        (["--serial", "not-hex"], "not a hexadecimal number"),
        (["--serial", "0"], "not a valid certificate serial"),
        (["CA_CERT"], "is a CA certificate"),
        (["MISSING"], "no such file"),
    ],
)
def test_revoke_rejects_targets_that_name_no_certificate(
    consortium: Consortium,
    tmp_path: Path,
    recorder: RevocationRecorder,
    target: list[str],
    fragment: str,
) -> None:
    paths = {"CA_CERT": str(consortium.ca_dir / "ca.crt"), "MISSING": str(tmp_path / "no.crt")}
    target = [paths.get(arg, arg) for arg in target]

    code, output = _run("revoke", *target, *_admin_flags(tmp_path))

    assert code == 2
    _assert_one_line_error(output, fragment)
    assert recorder.calls == []


@pytest.mark.parametrize("target", [[], ["some.crt", "--serial", "ff"]])
def test_revoke_needs_exactly_one_of_certificate_and_serial(
    tmp_path: Path, target: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse("revoke", *target, *_admin_flags(tmp_path))
    assert exited.value.code == 2
    assert "CERTIFICATE" in capsys.readouterr().err


class _FakeRpcError(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return "admin role required"


def test_revoke_reports_a_coordinator_refusal_in_one_line(
    tmp_path: Path, recorder: RevocationRecorder
) -> None:
    recorder.error = _FakeRpcError()

    code, output = _run("revoke", "--serial", "ff", *_admin_flags(tmp_path))

    assert code == 1
    _assert_one_line_error(output, "PERMISSION_DENIED", "admin role required")


# ------------------------------------------------------------------------------------ interface


def test_public_api() -> None:
    assert sorted(pki_cli.__all__) == [
        "PASSPHRASE_ENV",
        "normalize_serial_hex",
        "register",
        "run",
        "serial_hex",
    ]


def test_pki_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse()
    assert exited.value.code == 2
    assert "ACTION" in capsys.readouterr().err


# ------------------------------------------------------------------------- CA key passphrase


def _ca_key_is_encrypted(ca_dir: Path) -> bool:
    return b"BEGIN ENCRYPTED PRIVATE KEY" in (ca_dir / "ca.key").read_bytes()


def test_init_encrypts_the_ca_key_and_sign_needs_its_passphrase(
    consortium: Consortium, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _ca_key_is_encrypted(consortium.ca_dir)
    with pytest.raises(TypeError):  # unreadable without the passphrase
        pki.load_private_key(consortium.ca_dir / "ca.key")

    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    code, output = _sign(consortium.ca_dir, consortium.csr_path(), tmp_path / "wrong.crt")
    assert code == 2
    _assert_one_line_error(output, "wrong passphrase")
    assert not (tmp_path / "wrong.crt").exists()

    monkeypatch.delenv(PASSPHRASE_ENV)
    code, output = _sign(consortium.ca_dir, consortium.csr_path(), tmp_path / "no-tty.crt")
    assert code == 2  # pytest's stdin is no terminal: no prompt, a clear error instead
    _assert_one_line_error(output, "--passphrase-file", PASSPHRASE_ENV)
    assert not (tmp_path / "no-tty.crt").exists()

    secret = tmp_path / "passphrase.txt"
    secret.write_text(TEST_PASSPHRASE + "\n")
    code, output = _sign(
        consortium.ca_dir,
        consortium.csr_path(),
        tmp_path / "acme.crt",
        "--passphrase-file",
        str(secret),
    )
    assert code == 0, output
    assert pki.load_certificate(tmp_path / "acme.crt").issuer == consortium.ca_cert.subject


def test_init_takes_the_passphrase_from_a_file_before_the_environment(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "passphrase.txt"
    secret.write_text("from the file\nsecond line is ignored\n")
    code, output = _run("init", "--out", str(tmp_path / "ca"), "--passphrase-file", str(secret))
    assert code == 0, output
    key = pki.load_private_key(tmp_path / "ca" / "ca.key", password=b"from the file")
    assert key.public_key() == pki.load_certificate(tmp_path / "ca" / "ca.crt").public_key()


@pytest.mark.parametrize("empty", ["", "\n", "   \n"])
def test_init_refuses_an_empty_passphrase_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty: str
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, empty)
    code, output = _run("init", "--out", str(tmp_path / "ca"))
    assert code == 2
    _assert_one_line_error(output, "empty", "--no-passphrase")
    assert not (tmp_path / "ca").exists()

    secret = tmp_path / "empty.txt"
    secret.write_text(empty)
    code, output = _run("init", "--out", str(tmp_path / "ca"), "--passphrase-file", str(secret))
    assert code == 2
    _assert_one_line_error(output, "empty")
    assert not (tmp_path / "ca").exists()


def test_init_without_any_passphrase_source_and_no_terminal_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    code, output = _run("init", "--out", str(tmp_path / "ca"))
    assert code == 2
    _assert_one_line_error(output, "--passphrase-file", PASSPHRASE_ENV)
    assert not (tmp_path / "ca").exists()


def test_no_passphrase_writes_an_unencrypted_key_that_sign_uses_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    ca_dir, org_dir = tmp_path / "ca", tmp_path / "acme"
    code, output = _run("init", "--out", str(ca_dir), "--no-passphrase")
    assert code == 0, output
    assert "NOT encrypted" in output
    assert not _ca_key_is_encrypted(ca_dir)
    assert _run("csr", "--org", "acme", "--role", "participant", "--out", str(org_dir))[0] == 0
    code, output = _sign(ca_dir, org_dir / "acme.csr", tmp_path / "acme.crt")
    assert code == 0, output

    secret = tmp_path / "passphrase.txt"  # a passphrase file for a plain key: say so
    secret.write_text(TEST_PASSPHRASE)
    code, output = _sign(
        ca_dir, org_dir / "acme.csr", tmp_path / "again.crt", "--passphrase-file", str(secret)
    )
    assert code == 2
    _assert_one_line_error(output, "not encrypted")


def test_no_passphrase_and_a_passphrase_file_contradict(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase.txt"
    secret.write_text(TEST_PASSPHRASE)
    code, output = _run(
        "init", "--out", str(tmp_path / "ca"), "--no-passphrase", "--passphrase-file", str(secret)
    )
    assert code == 2
    _assert_one_line_error(output, "contradict")
    assert not (tmp_path / "ca").exists()
