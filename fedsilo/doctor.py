"""``fedsilo participant doctor``: a connectivity preflight an organization runs before joining.

The checks run in order and each one says PASS, or what is wrong and how to fix it:

1. configuration       the TLS files exist and parse, the key belongs to the certificate
2. certificate         signed by the configured CA, within its validity, role participant
3. name resolution     the coordinator host resolves
4. tcp connection      host:port accepts a TCP connection (refused and timeout told apart)
5. tls handshake       mutual TLS with the coordinator works; on failure Python's ``ssl`` module
                       repeats the handshake to name the cause (untrusted server certificate,
                       host name not in its SANs, our certificate refused, no TLS at all)
6. coordinator health  grpc.health.v1 Check("") answers SERVING
7. identity            GetServerInfo: who the coordinator thinks we are
8. clock               our clock against the coordinator's (it decides round deadlines)
9. membership          active, pending an admin's approval, or revoked

A check whose prerequisite failed is reported as skipped. Like the daemon's first call,
GetServerInfo registers an organization the coordinator has not seen yet (as pending, or active
when the coordinator runs with ``auto_approve``), so an admin can approve it right after.

Wiring: :func:`register` adds ``doctor`` to the ``participant`` subcommands and :func:`run`
executes it. Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 the
configuration could not be loaded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table
from rich.text import Text

import fedsilo
from fedsilo.config import ConfigError, ParticipantConfig, load_config
from fedsilo.pki import Role, load_certificate, load_private_key, subject_identity
from fedsilo.tls import TlsConfigError, TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

__all__ = [
    "CHECKS",
    "DEFAULT_TIMEOUT_S",
    "EXPIRY_WARNING_DAYS",
    "MAX_CLOCK_SKEW_S",
    "CheckResult",
    "Outcome",
    "diagnose",
    "register",
    "run",
]

DEFAULT_TIMEOUT_S = 5.0
EXPIRY_WARNING_DAYS = 14
# Round deadlines are set and enforced on the coordinator's clock; a participant whose clock is
# far off misjudges how long it has, and certificate validity is checked on both clocks.
MAX_CLOCK_SKEW_S = 30.0

CONFIGURATION = "configuration"
CERTIFICATE = "certificate"
NAME_RESOLUTION = "name resolution"
TCP_CONNECTION = "tcp connection"
TLS_HANDSHAKE = "tls handshake"
COORDINATOR_HEALTH = "coordinator health"
IDENTITY = "identity"
CLOCK = "clock"
MEMBERSHIP = "membership"

CHECKS = (
    CONFIGURATION,
    CERTIFICATE,
    NAME_RESOLUTION,
    TCP_CONNECTION,
    TLS_HANDSHAKE,
    COORDINATOR_HEALTH,
    IDENTITY,
    CLOCK,
    MEMBERSHIP,
)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_CONFIG = 2

_RENEW_FIX = (
    "make a new key and CSR (`fedsilo pki csr --org {org} --role participant --out DIR`), have "
    "the consortium CA sign it (`fedsilo pki sign`), and point tls.cert and tls.key at the new "
    "files"
)

# OpenSSL X509_V_ERR_* codes that ssl.SSLCertVerificationError.verify_code reports.
_X509_NOT_YET_VALID = 9
_X509_EXPIRED = 10
_X509_INVALID_PURPOSE = 26
_X509_NAME_MISMATCH = frozenset({62, 64})  # host name, IP address
_X509_UNKNOWN_ISSUER = frozenset({2, 7, 18, 19, 20, 21})


class Outcome(StrEnum):
    """How one check ended."""

    PASS = "pass"  # noqa: S105 - an outcome, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One line of the diagnosis. ``ok`` is true for passes and warnings."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False
    skipped: bool = False

    def __post_init__(self) -> None:
        if self.warning and not self.ok:
            raise ValueError("a warning is a passing check (ok=True)")
        if self.skipped and self.ok:
            raise ValueError("a skipped check did not pass (ok=False)")

    @property
    def outcome(self) -> Outcome:
        if self.skipped:
            return Outcome.SKIPPED
        if not self.ok:
            return Outcome.FAIL
        return Outcome.WARN if self.warning else Outcome.PASS

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.outcome.value,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
        }


class _Verdict(NamedTuple):
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False


def _passed(detail: str) -> _Verdict:
    return _Verdict(True, detail)


def _warned(detail: str, fix: str) -> _Verdict:
    return _Verdict(True, detail, fix, warning=True)


def _failed(detail: str, fix: str) -> _Verdict:
    return _Verdict(False, detail, fix)


# -- the checks ------------------------------------------------------------------------------------


class _Diagnosis:
    """What one run has found so far; each check reads what the checks before it established."""

    def __init__(
        self, config: ParticipantConfig, clock: Callable[[], float], timeout: float
    ) -> None:
        self.config = config
        self.clock = clock
        self.timeout = timeout
        self.files: TlsFiles | None = None
        self.cert: x509.Certificate | None = None
        self.ca: x509.Certificate | None = None
        self.org_id = ""
        self.host = ""
        self.port = 0
        self.channel: grpc.Channel | None = None
        self.info: pb.ServerInfo | None = None
        self.sent_at = 0.0
        self.received_at = 0.0

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # 1 ------------------------------------------------------------------------------------------

    def configuration(self) -> _Verdict:
        tls = self.config.tls
        if tls.insecure:
            return _failed(
                "tls.insecure is true: plaintext is only for tests on loopback, and a "
                "coordinator never accepts it from an organization",
                "remove tls.insecure and set tls.ca_cert, tls.cert and tls.key",
            )
        try:
            self.host, self.port = _split_target(self.config.coordinator)
        except ValueError as exc:
            return _failed(
                f"coordinator: {exc}",
                "set `coordinator:` to host:port, e.g. coordinator.example.org:50051",
            )
        paths = {"tls.ca_cert": tls.ca_cert, "tls.cert": tls.cert, "tls.key": tls.key}
        for setting, path in paths.items():
            if path is None:
                return _failed(f"{setting} is not set", f"set {setting} to the PEM file's path")
        assert tls.ca_cert is not None and tls.cert is not None and tls.key is not None
        try:
            ca = load_certificate(tls.ca_cert)
        except (OSError, ValueError) as exc:
            return _unreadable("tls.ca_cert", tls.ca_cert, "certificate", exc)
        try:
            cert = load_certificate(tls.cert)
        except (OSError, ValueError) as exc:
            return _unreadable("tls.cert", tls.cert, "certificate", exc)
        try:
            key = load_private_key(tls.key)
        except TypeError:
            return _failed(
                f"tls.key: {tls.key} is encrypted, and gRPC can only use an unencrypted key",
                f"decrypt it into a file only this user can read, e.g. `openssl pkey -in "
                f"{tls.key} -out KEYFILE` then `chmod 600 KEYFILE`",
            )
        except (OSError, ValueError, UnsupportedAlgorithm) as exc:
            return _unreadable("tls.key", tls.key, "private key", exc)
        if cert.public_key() != key.public_key():
            return _failed(
                f"tls.key {tls.key} does not belong to tls.cert {tls.cert}",
                "point tls.key at the key the CSR for this certificate was made with "
                "(`fedsilo pki csr` writes them side by side)",
            )
        self.ca, self.cert = ca, cert
        self.files = TlsFiles(tls.ca_cert, tls.cert, tls.key)
        summary = (
            f"coordinator {self.config.coordinator}; CA {tls.ca_cert}; certificate {tls.cert} "
            f"with its key {tls.key}"
        )
        if tls.key.stat().st_mode & 0o077:
            return _warned(
                f"{summary}; but the private key file can be read by other users",
                f"`chmod 600 {tls.key}`",
            )
        return _passed(summary)

    # 2 ------------------------------------------------------------------------------------------

    def certificate(self) -> _Verdict:
        assert self.cert is not None and self.ca is not None
        cert, ca = self.cert, self.ca
        try:
            org_id, role = subject_identity(cert.subject)
        except ValueError as exc:
            return _failed(
                f"the certificate does not name an organization and role: {exc}",
                _RENEW_FIX.format(org="YOUR-ORG-ID"),
            )
        self.org_id = org_id
        issuer = cert.issuer.rfc4514_string()
        ca_name = ca.subject.rfc4514_string()
        if cert.issuer != ca.subject:
            return _failed(
                f"the certificate of {org_id} was issued by '{issuer}', not by the configured "
                f"consortium CA '{ca_name}'; the coordinator will refuse it",
                "use the certificate the consortium CA signed for your CSR, and set tls.ca_cert "
                "to the consortium's ca.crt",
            )
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return _failed(
                f"the certificate of {org_id} names '{issuer}' as issuer, but its signature does "
                "not verify with the configured CA's key (a different CA with the same name?)",
                "get tls.ca_cert from the consortium again and check it is the CA that signed "
                "your certificate; otherwise request a new certificate",
            )
        now = self.now()
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now < not_before:
            return _failed(
                f"the certificate of {org_id} is not valid before {_when(not_before)} "
                f"(it is {_when(now)} here): the certificate is new or this clock is behind",
                "synchronize this machine's clock (NTP), or wait until the certificate is valid",
            )
        if now > not_after:
            return _failed(
                f"the certificate of {org_id} expired on {_when(not_after)} "
                f"({_days(now - not_after)} ago)",
                _RENEW_FIX.format(org=org_id),
            )
        if now > ca.not_valid_after_utc:
            return _failed(
                f"the consortium CA certificate expired on {_when(ca.not_valid_after_utc)}",
                "the consortium must renew its CA; get the new ca.crt and a new certificate",
            )
        if role is not Role.PARTICIPANT:
            return _failed(
                f"this is a certificate with role '{role.value}' for {org_id}; the participant "
                "daemon needs role 'participant' and the coordinator refuses other roles",
                _RENEW_FIX.format(org=org_id),
            )
        left = not_after - now
        summary = (
            f"org {org_id}, role participant, issued by '{issuer}', valid until "
            f"{_when(not_after)} ({_days(left)} left)"
        )
        if left < dt.timedelta(days=EXPIRY_WARNING_DAYS):
            return _warned(summary, "renew it soon: " + _RENEW_FIX.format(org=org_id))
        return _passed(summary)

    # 3 ------------------------------------------------------------------------------------------

    def name_resolution(self) -> _Verdict:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            return _failed(
                f"cannot resolve '{self.host}': {reason}",
                "check the host name in `coordinator:` and this machine's DNS (or /etc/hosts); "
                "the coordinator operator can tell you the exact name",
            )
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return _passed(f"{self.host} is {', '.join(addresses)}")

    # 4 ------------------------------------------------------------------------------------------

    def tcp_connection(self) -> _Verdict:
        where = _host_port(self.host, self.port)
        started = time.monotonic()
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                peer = sock.getpeername()
        except ConnectionRefusedError:
            return _failed(
                f"connection refused by {where}: the host answers, but nothing listens on port "
                f"{self.port} (coordinator not running, wrong port, or a firewall rejecting)",
                "check the port in `coordinator:` and ask the coordinator operator whether the "
                "coordinator is running and listening on this address (a coordinator that "
                "listens on 127.0.0.1 only cannot be reached from another machine)",
            )
        except TimeoutError:
            return _failed(
                f"no answer from {where} within {self.timeout:g} s: connection attempts are "
                "dropped (firewall, security group, wrong address, or the host is down)",
                f"ask your network administrators to allow outgoing TCP to {where}, and check "
                "the address with the coordinator operator",
            )
        except OSError as exc:
            return _failed(
                f"cannot connect to {where}: {exc.strerror or exc}",
                "check this machine's network route (VPN, proxy, routing) to the coordinator",
            )
        elapsed_ms = (time.monotonic() - started) * 1000
        return _passed(f"connected to {_host_port(str(peer[0]), self.port)} in {elapsed_ms:.1f} ms")

    # 5 ------------------------------------------------------------------------------------------

    def tls_handshake(self) -> _Verdict:
        assert self.files is not None
        target = _host_port(self.host, self.port)
        try:
            credentials = channel_credentials(self.files)
        except TlsConfigError as exc:
            return _failed(str(exc), "fix the TLS files named above")
        self.channel = grpc.secure_channel(target, credentials)
        state = _wait_until_connected(self.channel, self.timeout)
        probe = _probe_tls(self.host, self.port, self.files, self.timeout)
        if state is grpc.ChannelConnectivity.READY:
            return self._handshake_passed(probe)
        self.channel.close()
        self.channel = None
        return self._explain_handshake(probe, state)

    def _handshake_passed(self, probe: _TlsProbe) -> _Verdict:
        server = probe.server_cert
        if server is None:
            return _passed(f"mutual TLS with {self.host} works")
        summary = (
            f"mutual TLS ({probe.version}) with '{server.subject.rfc4514_string()}', whose "
            f"certificate is valid until {_when(server.not_valid_after_utc)}"
        )
        left = server.not_valid_after_utc - self.now()
        if left < dt.timedelta(days=EXPIRY_WARNING_DAYS):
            return _warned(
                f"{summary}: it expires in {_days(left)}",
                "tell the coordinator operator to renew the coordinator certificate",
            )
        return _passed(summary)

    def _explain_handshake(
        self, probe: _TlsProbe, state: grpc.ChannelConnectivity | None
    ) -> _Verdict:
        where = _host_port(self.host, self.port)
        ca_name = self.ca.subject.rfc4514_string() if self.ca is not None else "the CA"
        error = probe.error
        if isinstance(error, ssl.SSLCertVerificationError):
            text = f"{error.verify_message} (ssl: {error.reason})"
            server = _fetch_server_certificate(self.host, self.port, self.files, self.timeout)
            code = error.verify_code
            if code in _X509_NAME_MISMATCH:
                names = _subject_alt_names(server) if server is not None else []
                listed = ", ".join(names) if names else "names this check could not read"
                return _failed(
                    f"the coordinator's certificate is not valid for '{self.host}': it names "
                    f"{listed}. {text}",
                    "set `coordinator:` to a name the coordinator's certificate carries, or ask "
                    f"the consortium CA to reissue the coordinator certificate with "
                    f"`--{'ip' if _is_ip(self.host) else 'dns'} {self.host}`",
                )
            if code in _X509_UNKNOWN_ISSUER:
                if server is None:
                    issuer = "another CA"
                elif self.ca is not None and server.issuer == self.ca.subject:
                    issuer = f"a CA with the same name as ours ('{ca_name}') but another key"
                else:
                    issuer = f"'{server.issuer.rfc4514_string()}'"
                return _failed(
                    f"the coordinator's certificate was issued by {issuer}, not by the configured "
                    f"CA '{ca_name}': a different consortium, a wrong tls.ca_cert, or something "
                    f"intercepting TLS in between. {text}",
                    "check that tls.ca_cert is the consortium's ca.crt and that nothing between "
                    f"you and {where} (proxy, load balancer) terminates TLS",
                )
            if code in (_X509_EXPIRED, _X509_NOT_YET_VALID):
                return _failed(
                    f"the coordinator's certificate is outside its validity period "
                    f"(it is {_when(self.now())} here). {text}",
                    "check this machine's clock (NTP); if it is right, tell the coordinator "
                    "operator to renew the coordinator certificate",
                )
            if code == _X509_INVALID_PURPOSE:
                return _failed(
                    f"the certificate at {where} is not a server certificate. {text}",
                    "the coordinator must serve a certificate issued with role coordinator",
                )
            return _failed(
                f"the coordinator's certificate was rejected: {text}",
                "send this message to the coordinator operator",
            )
        if isinstance(error, ssl.SSLError) and error.reason in _NOT_TLS_REASONS:
            return _failed(
                f"{where} does not answer in TLS (ssl: {error.reason}): a plaintext server, or "
                "not a fedsilo coordinator",
                "check the port with the coordinator operator; a coordinator must run with TLS",
            )
        if isinstance(error, ssl.SSLError):
            return _failed(
                f"the coordinator ended the TLS handshake: {error.reason or error}; it refused "
                "our certificate (it trusts another CA, or the certificate was revoked or is "
                "not a participant certificate)",
                f"ask the coordinator operator whether it trusts the CA '{ca_name}' and your "
                f"certificate (serial {self._serial()})",
            )
        if isinstance(error, TimeoutError):
            return _failed(
                f"{where} accepted TCP but did not complete a TLS handshake within "
                f"{self.timeout:g} s (not a fedsilo coordinator, or a proxy that holds the "
                "connection)",
                "check the address and port with the coordinator operator",
            )
        if error is not None:
            return _failed(
                f"TLS connection to {where} failed: {error}",
                "check the network path to the coordinator and retry",
            )
        if probe.reply == _Reply.CLOSED:
            return _failed(
                "the TLS handshake completes, but the coordinator closes the connection right "
                "after seeing our certificate: it refused it (the coordinator trusts a "
                "different CA, or your certificate is not acceptable to it)",
                f"ask the coordinator operator whether it trusts the CA '{ca_name}' that "
                f"signed your certificate (serial {self._serial()})",
            )
        state_name = state.name if state is not None else "no connection"
        return _failed(
            f"TLS with {where} works from Python, but gRPC could not open a channel "
            f"(last state: {state_name}) within {self.timeout:g} s",
            "retry with a longer --timeout; if it persists, check that nothing between you and "
            "the coordinator downgrades HTTP/2 (a proxy), and tell the coordinator operator",
        )

    def _serial(self) -> str:
        return format(self.cert.serial_number, "x") if self.cert is not None else "?"

    # 6 ------------------------------------------------------------------------------------------

    def coordinator_health(self) -> _Verdict:
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        except grpc.RpcError as exc:
            return self._explain_rpc_error("the health check", exc)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            return _failed(
                f"the coordinator reports {status} (starting up or shutting down)",
                "retry in a minute; if it persists, tell the coordinator operator",
            )
        return _passed("the coordinator reports SERVING")

    # 7 ------------------------------------------------------------------------------------------

    def identity(self) -> _Verdict:
        assert self.channel is not None
        stub = pb_grpc.ParticipantServiceStub(self.channel)
        self.sent_at = self.clock()
        try:
            info: pb.ServerInfo = stub.GetServerInfo(
                pb.GetServerInfoRequest(), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            return self._explain_rpc_error("GetServerInfo", exc)
        self.received_at = self.clock()
        self.info = info
        version = info.version or "unknown"
        if info.org_id != self.org_id or info.role != Role.PARTICIPANT.value:
            return _failed(
                f"the coordinator sees organization '{info.org_id}' with role '{info.role}', "
                f"but your certificate says '{self.org_id}' with role participant",
                "something between you and the coordinator presents another certificate; "
                "connect directly and tell the coordinator operator",
            )
        mine = "" if version == fedsilo.__version__ else f"; this is fedsilo {fedsilo.__version__}"
        return _passed(
            f"the coordinator (fedsilo {version}) sees organization '{info.org_id}' with role "
            f"participant{mine}"
        )

    def _explain_rpc_error(self, what: str, exc: grpc.RpcError) -> _Verdict:
        code: grpc.StatusCode = exc.code()
        details = exc.details() or ""
        said = f"{code.name}: {details}" if details else code.name
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return _failed(
                f"the coordinator refused {what} ({said}): your certificate (serial "
                f"{self._serial()}) has been revoked, or it could not read it",
                _RENEW_FIX.format(org=self.org_id or "YOUR-ORG-ID")
                + "; ask the consortium admin why it was revoked",
            )
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return _failed(
                f"the coordinator refused {what} ({said}): a certificate without role "
                f"participant, or organization '{self.org_id}' has been expelled",
                "if your membership was revoked, only the consortium admins can settle it; "
                "otherwise request a certificate with role participant",
            )
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return _failed(
                f"the coordinator does not offer {what} ({said}): an older fedsilo version",
                f"ask the coordinator operator to upgrade to fedsilo {fedsilo.__version__} "
                "or later",
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return _failed(
                f"no answer to {what} within {self.timeout:g} s",
                "retry with a longer --timeout; tell the coordinator operator if it persists",
            )
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _failed(
                f"the coordinator turned {what} away ({said})",
                "another process with this certificate is busy (the daemon?); retry shortly",
            )
        return _failed(
            f"{what} failed ({said})", "retry; if it persists, tell the coordinator operator"
        )

    # 8 ------------------------------------------------------------------------------------------

    def clock_skew(self) -> _Verdict:
        assert self.info is not None
        # Assume the server read its clock halfway through the round trip (as NTP does).
        skew = self.info.server_time - (self.sent_at + self.received_at) / 2
        uncertainty = max(self.received_at - self.sent_at, 0.0) / 2
        direction = "behind" if skew > 0 else "ahead of"
        summary = (
            f"this clock is {abs(skew):.3f} s {direction} the coordinator's "
            f"(± {uncertainty:.3f} s, the round trip's half)"
        )
        if abs(skew) > MAX_CLOCK_SKEW_S:
            return _failed(
                f"{summary}; more than {MAX_CLOCK_SKEW_S:g} s: the coordinator's clock decides "
                "round deadlines, so this organization would misjudge them",
                "synchronize this machine's clock with NTP (e.g. `timedatectl set-ntp true`, "
                "or chrony) and run the doctor again",
            )
        return _passed(summary)

    # 9 ------------------------------------------------------------------------------------------

    def membership(self) -> _Verdict:
        assert self.info is not None
        status = self.info.membership
        org = self.org_id
        if status == "active":
            return _passed(f"{org} is an active member: it will be given rounds")
        if status == "pending":
            return _warned(
                f"{org} is registered but pending: the daemon will only wait until an admin "
                "approves it",
                f"ask the consortium admin to run `fedsilo participants approve {org}`",
            )
        if status == "revoked":
            return _failed(
                f"{org}'s membership has been revoked: the coordinator refuses its work",
                "only the consortium admins can settle this; contact them",
            )
        return _failed(
            f"the coordinator reports an unknown membership status {status!r}",
            "tell the coordinator operator; versions may not match",
        )


_Check = Callable[[_Diagnosis], _Verdict]

# (name, the checks it needs to have passed, the check)
_PLAN: tuple[tuple[str, tuple[str, ...], _Check], ...] = (
    (CONFIGURATION, (), _Diagnosis.configuration),
    (CERTIFICATE, (CONFIGURATION,), _Diagnosis.certificate),
    (NAME_RESOLUTION, (CONFIGURATION,), _Diagnosis.name_resolution),
    (TCP_CONNECTION, (NAME_RESOLUTION,), _Diagnosis.tcp_connection),
    (TLS_HANDSHAKE, (CERTIFICATE, TCP_CONNECTION), _Diagnosis.tls_handshake),
    (COORDINATOR_HEALTH, (TLS_HANDSHAKE,), _Diagnosis.coordinator_health),
    (IDENTITY, (TLS_HANDSHAKE,), _Diagnosis.identity),
    (CLOCK, (IDENTITY,), _Diagnosis.clock_skew),
    (MEMBERSHIP, (IDENTITY,), _Diagnosis.membership),
)


def diagnose(
    config: ParticipantConfig,
    *,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[CheckResult]:
    """Run every check in order; one result per name in :data:`CHECKS`.

    ``clock`` is this machine's wall clock (seconds since the epoch): certificate validity and
    clock skew are judged on it. ``timeout`` bounds each network step.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    diagnosis = _Diagnosis(config, clock, timeout)
    results: dict[str, CheckResult] = {}
    try:
        for name, needs, check in _PLAN:
            blocked = [need for need in needs if not results[need].ok]
            if blocked:
                results[name] = _skipped(name, blocked[0])
                continue
            verdict = check(diagnosis)
            results[name] = CheckResult(name, *verdict)
    finally:
        diagnosis.close()
    return list(results.values())


def _skipped(name: str, because: str) -> CheckResult:
    return CheckResult(name, False, f"not run: the {because} check did not pass", skipped=True)


# -- TLS helpers -----------------------------------------------------------------------------------


def _wait_until_connected(channel: grpc.Channel, timeout: float) -> grpc.ChannelConnectivity | None:
    """Connect and return READY, or the state the channel settled in (None: no state at all).

    Unlike ``grpc.channel_ready_future``, this returns as soon as gRPC gives up on every address
    (TRANSIENT_FAILURE) instead of waiting out the whole timeout on a handshake that cannot work.
    """
    settled = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def on_change(state: grpc.ChannelConnectivity) -> None:
        seen.append(state)
        if state in _SETTLED_STATES:
            settled.set()

    channel.subscribe(on_change, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(on_change)
    return seen[-1] if seen else None


_SETTLED_STATES = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)

# What OpenSSL says when the peer's first bytes are not a TLS record (e.g. plaintext HTTP/2).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}
)


class _Reply(StrEnum):
    DATA = "data"  # the server spoke first (gRPC sends its HTTP/2 SETTINGS): all is well
    CLOSED = "closed"  # the server hung up right after the handshake: it refused our certificate
    SILENT = "silent"


@dataclass(frozen=True)
class _TlsProbe:
    """One handshake done by Python's ``ssl``, whose errors name the cause precisely."""

    error: Exception | None = None
    version: str = ""
    server_cert: x509.Certificate | None = None
    reply: _Reply = _Reply.SILENT


def _probe_tls(host: str, port: int, files: TlsFiles, timeout: float) -> _TlsProbe:
    try:
        context = ssl.create_default_context(cafile=str(files.ca_cert))
        context.load_cert_chain(str(files.cert), str(files.key))
        context.set_alpn_protocols(["h2"])
    except (OSError, ValueError) as exc:
        return _TlsProbe(error=exc)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            server = x509.load_der_x509_certificate(der) if der else None
            # With TLS 1.3 the client finishes its handshake before the server has checked the
            # client certificate; a refusal only shows as the server's next move.
            try:
                reply = _Reply.DATA if tls.recv(1) else _Reply.CLOSED
            except TimeoutError:
                reply = _Reply.SILENT
            except (ssl.SSLError, ConnectionError):
                reply = _Reply.CLOSED
            return _TlsProbe(version=tls.version() or "", server_cert=server, reply=reply)
    except (OSError, ValueError) as exc:
        # ssl.SSLError and TimeoutError are OSErrors: the caller tells them apart.
        return _TlsProbe(error=exc)


def _fetch_server_certificate(
    host: str, port: int, files: TlsFiles | None, timeout: float
) -> x509.Certificate | None:
    """The certificate the server presents, unverified: only read to describe what is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    # No verification on purpose: nothing is sent over this connection, and the point is to
    # show the names and issuer of a certificate that failed verification.
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        if files is not None:
            context.load_cert_chain(str(files.cert), str(files.key))
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _subject_alt_names(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *(f"DNS:{name}" for name in sans.get_values_for_type(x509.DNSName)),
        *(f"IP:{ip}" for ip in sans.get_values_for_type(x509.IPAddress)),
    ]


# -- small helpers ---------------------------------------------------------------------------------


def _split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (optionally ``dns:`` prefixed) -> (host, port)."""
    text = target.strip().removeprefix("dns:").removeprefix("///")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if bracket and rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or (":" in host and not text.startswith("[")):
        raise ValueError(f"{target!r} is not host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{target!r} has no valid port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{target!r}: port must be between 1 and 65535")
    return host, port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _unreadable(key: str, path: Path, what: str, exc: Exception) -> _Verdict:
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    else:
        reason = f"not a PEM {what}"
    return _failed(
        f"{key}: cannot use {path}: {reason}",
        f"point {key} at the PEM {what} file (`fedsilo pki show` reads certificates)",
    )


def _when(moment: dt.datetime) -> str:
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def _days(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    if abs(days) >= 1:
        return f"{int(days)} day{'' if int(days) == 1 else 's'}"
    return f"{int(delta.total_seconds() // 3600)} hours"


# -- command line ----------------------------------------------------------------------------------


def register(participant_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``doctor`` to the ``participant`` subcommands (dispatch: ``args.action == "doctor"``)."""
    parser = participant_subparsers.add_parser(
        "doctor",
        help="check that this organization can reach and join the coordinator",
        description=(
            "Preflight before joining: TLS files, certificate, DNS, TCP, mutual TLS, the "
            "coordinator's health, how it sees this organization, clock skew and membership. "
            "Each problem is printed with its fix. Exit 0: all passed (warnings allowed); "
            "1: a check failed; 2: the configuration cannot be loaded."
        ),
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the participant's YAML configuration"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="seconds allowed for each network step (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def run(args: argparse.Namespace, console: Console) -> int:
    """Execute ``participant doctor``: print the diagnosis, return the exit code."""
    try:
        config = load_config(ParticipantConfig, args.config)
    except ConfigError as exc:
        results = [
            CheckResult(
                CONFIGURATION,
                False,
                str(exc),
                "fix the key named above in the configuration file (or its FEDSILO_* variable)",
            ),
            *(_skipped(name, CONFIGURATION) for name in CHECKS[1:]),
        ]
        _print(console, results, as_json=args.json)
        return EXIT_BAD_CONFIG
    results = diagnose(config, timeout=args.timeout)
    _print(console, results, as_json=args.json)
    return EXIT_OK if all(result.ok for result in results) else EXIT_CHECK_FAILED


_STYLES = {
    Outcome.PASS: "bold green",
    Outcome.WARN: "bold yellow",
    Outcome.FAIL: "bold red",
    Outcome.SKIPPED: "dim",
}


def _print(console: Console, results: list[CheckResult], *, as_json: bool) -> None:
    if as_json:
        # console.out: no markup, no wrapping, no highlighting -- the bytes a script parses.
        console.out(json.dumps([r.as_dict() for r in results], indent=2), highlight=False)
        return
    table = Table(title="fedsilo participant doctor")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail / fix")
    for result in results:
        # Text, not markup strings: details quote paths, [v6] addresses and server messages.
        detail = Text(result.detail)
        if result.fix:
            detail.append("\nfix: ", style="bold")
            detail.append(result.fix)
        outcome = result.outcome
        table.add_row(result.name, Text(outcome.value.upper(), style=_STYLES[outcome]), detail)
    console.print(table)
    failed = [r.name for r in results if not r.ok and not r.skipped]
    warned = [r.name for r in results if r.warning]
    if failed:
        console.print(Text(f"failed: {', '.join(failed)}", style="bold red"))
    elif warned:
        console.print(Text(f"all checks passed, with warnings: {', '.join(warned)}"))
    else:
        console.print(Text("all checks passed", style="bold green"))
