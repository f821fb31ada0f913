"""``fedsilo pki membership sign|show``: the CA signs the membership list from the shell."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from fedsilo import pki
from fedsilo.cli.pki_commands import PASSPHRASE_ENV, register, run
from fedsilo.membership import certificate_sha256, sign_membership_list, verify_membership_list

PASSPHRASE = "correct horse battery staple"


def _run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fedsilo")
    register(parser.add_subparsers(dest="command"))
    out = io.StringIO()
    code = run(parser.parse_args(["pki", *argv]), Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


@pytest.fixture
def ca_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert _run("init", "--out", str(tmp_path / "ca"))[0] == 0
    return tmp_path / "ca"


def _certificate(ca_dir: Path, tmp_path: Path, org: str) -> Path:
    assert _run("csr", "--org", org, "--role", "participant", "--out", str(tmp_path / org))[0] == 0
    cert = tmp_path / org / f"{org}.crt"
    csr = tmp_path / org / f"{org}.csr"
    assert _run("sign", "--ca", str(ca_dir), "--csr", str(csr), "--out", str(cert))[0] == 0
    return cert


def test_sign_then_show_gives_a_list_the_ca_vouches_for(ca_dir: Path, tmp_path: Path) -> None:
    acme = _certificate(ca_dir, tmp_path, "acme")
    other = "b" * 64
    out = tmp_path / "membership-1.json"
    code, text = _run(
        "membership",
        "sign",
        "--ca",
        str(ca_dir),
        "--member",
        str(acme),
        "--member",
        f"beta={other.upper()}",
        "--revoke",
        "gamma",
        "--serial",
        "4",
        "--out",
        str(out),
    )
    assert code == 0, text
    assert "publish-membership" in text
    ca_cert = pki.load_certificate(ca_dir / "ca.crt")
    listed = verify_membership_list(out.read_bytes(), ca_cert)
    assert listed.serial == 4
    assert listed.members == {
        "acme": frozenset({certificate_sha256(pki.load_certificate(acme))}),
        "beta": frozenset({other}),
    }
    assert listed.revoked == frozenset({"gamma"})
    code, text = _run("membership", "show", str(out), "--ca-cert", str(ca_dir / "ca.crt"), "--json")
    assert code == 0
    assert json.loads(text)["revoked"] == ["gamma"]


def test_a_new_list_goes_above_the_previous_one(ca_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "m1.json", tmp_path / "m2.json"
    member = ["--member", "acme=" + "a" * 64]
    assert _run("membership", "sign", "--ca", str(ca_dir), *member, "--out", str(first))[0] == 0
    code, text = _run(
        "membership",
        "sign",
        "--ca",
        str(ca_dir),
        *member,
        "--previous",
        str(first),
        "--serial",
        "1",
        "--out",
        str(second),
    )
    assert code == 2 and "is not above the --previous list" in text
    assert not second.exists()
    code, _ = _run(
        "membership",
        "sign",
        "--ca",
        str(ca_dir),
        *member,
        "--previous",
        str(first),
        "--out",
        str(second),
    )
    assert code == 0
    ca_cert = pki.load_certificate(ca_dir / "ca.crt")
    before = verify_membership_list(first.read_bytes(), ca_cert).serial
    assert verify_membership_list(second.read_bytes(), ca_cert).serial > before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--revoke", "gamma"), "needs at least one --member"),
        (("--member", "acme=abc"), "64 hex digits"),
        (("--member", "acme=" + "a" * 64, "--revoke", "acme"), "both --member and --revoke"),
    ],
)
def test_sign_refuses_bad_input_and_writes_nothing(
    ca_dir: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "m.json"
    code, text = _run("membership", "sign", "--ca", str(ca_dir), *args, "--out", str(out))
    assert code == 2 and message in text and "Traceback" not in text
    assert not out.exists()


def test_show_refuses_a_list_of_another_ca(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert (
        _run(
            "membership",
            "sign",
            "--ca",
            str(ca_dir),
            "--member",
            "acme=" + "a" * 64,
            "--out",
            str(out),
        )[0]
        == 0
    )
    other = pki.create_ca("other").save(tmp_path / "other")
    code, text = _run("membership", "show", str(out), "--ca-cert", str(other.cert_path))
    assert code == 2 and "not signed by the consortium CA" in text


def test_renew_re_issues_the_same_membership_under_a_new_serial_and_time(
    ca_dir: Path, tmp_path: Path
) -> None:
    ca = pki.load_ca(ca_dir / "ca.crt", ca_dir / "ca.key", password=PASSPHRASE.encode())
    old = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    current = tmp_path / "membership.json"
    current.write_bytes(
        sign_membership_list(
            ca.cert, ca.key, {"acme": ["a" * 64], "beta": ["b" * 64]}, ["gamma"], 41, issued_at=old
        )
    )
    renewed = tmp_path / "membership-next.json"
    code, text = _run(
        "membership", "sign", "--ca", str(ca_dir), "--renew", str(current), "--out", str(renewed)
    )
    assert code == 0, text
    ca_cert = pki.load_certificate(ca_dir / "ca.crt")
    before = verify_membership_list(current.read_bytes(), ca_cert)
    after = verify_membership_list(renewed.read_bytes(), ca_cert)
    assert (after.members, after.revoked) == (before.members, before.revoked)
    assert after.serial > before.serial
    assert after.issued_at > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    # An explicit serial must still go above the renewed list's.
    code, text = _run(
        "membership",
        "sign",
        "--ca",
        str(ca_dir),
        "--renew",
        str(current),
        "--serial",
        "41",
        "--out",
        str(tmp_path / "m.json"),
    )
    assert code == 2 and "is not above the --renew list's 41" in text
    code, text = _run("membership", "show", str(renewed), "--ca-cert", str(ca_dir / "ca.crt"))
    assert code == 0 and "s ago)" in text  # a list issued seconds ago


@pytest.mark.parametrize(
    "extra", [("--member", "acme=" + "a" * 64), ("--revoke", "acme"), ("--previous", "x.json")]
)
def test_renew_takes_the_list_as_it_is(
    ca_dir: Path, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    out = tmp_path / "m.json"
    code, text = _run(
        "membership", "sign", "--ca", str(ca_dir), "--renew", "x.json", *extra, "--out", str(out)
    )
    assert code == 2 and "--renew re-issues a list as it is" in text
    assert not out.exists()
