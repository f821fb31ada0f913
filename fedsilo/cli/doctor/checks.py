"""The doctor's ten checks, run in order, each reading what the checks before it established."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable, Sequence

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

import fedsilo
from fedsilo.cli.doctor.probes import (
    NOT_TLS_REASONS,
    X509_EXPIRED,
    X509_INVALID_PURPOSE,
    X509_NAME_MISMATCH,
    X509_NOT_YET_VALID,
    X509_UNKNOWN_ISSUER,
    Reply,
    TlsProbe,
    fetch_server_certificate,
    host_port,
    is_ip,
    probe_tls,
    split_target,
    subject_alt_names,
    wait_until_connected,
)
from fedsilo.cli.doctor.results import (
    CERTIFICATE,
    CLOCK,
    CONFIGURATION,
    COORDINATOR_HEALTH,
    DEFAULT_TIMEOUT_S,
    EXPIRY_WARNING_DAYS,
    IDENTITY,
    MAX_CLOCK_SKEW_S,
    MEMBERSHIP,
    NAME_RESOLUTION,
    RENEW_FIX,
    TASK_DATA,
    TCP_CONNECTION,
    TLS_HANDSHAKE,
    CheckResult,
    Verdict,
    failed,
    format_days,
    format_when,
    passed,
    skipped_result,
    unreadable,
    warned,
)
from fedsilo.config import ParticipantConfig
from fedsilo.health import SERVING, serving_status
from fedsilo.pki import Role, load_certificate, load_private_key, subject_identity
from fedsilo.tasks import TaskNotFoundError, load_task
from fedsilo.tls import TlsConfigError, TlsFiles, channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

__all__ = ["diagnose", "startup_refusal"]


class _Diagnosis:
    """What one run has found so far; each check reads what the checks before it established."""

    def __init__(
        self,
        config: ParticipantConfig,
        clock: Callable[[], float],
        timeout: float,
        tasks: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.tasks = tuple(tasks)
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

    def configuration(self) -> Verdict:
        tls = self.config.tls
        if tls.insecure:
            return failed(
                "tls.insecure is true: plaintext is only for tests on loopback, and a "
                "coordinator never accepts it from an organization",
                "remove tls.insecure and set tls.ca_cert, tls.cert and tls.key",
            )
        try:
            self.host, self.port = split_target(self.config.coordinator)
        except ValueError as exc:
            return failed(
                f"coordinator: {exc}",
                "set `coordinator:` to host:port, e.g. coordinator.example.org:50051",
            )
        paths = {"tls.ca_cert": tls.ca_cert, "tls.cert": tls.cert, "tls.key": tls.key}
        for setting, path in paths.items():
            if path is None:
                return failed(f"{setting} is not set", f"set {setting} to the PEM file's path")
        assert tls.ca_cert is not None and tls.cert is not None and tls.key is not None
        try:
            ca = load_certificate(tls.ca_cert)
        except (OSError, ValueError) as exc:
            return unreadable("tls.ca_cert", tls.ca_cert, "certificate", exc)
        try:
            cert = load_certificate(tls.cert)
        except (OSError, ValueError) as exc:
            return unreadable("tls.cert", tls.cert, "certificate", exc)
        try:
            key = load_private_key(tls.key)
        except TypeError:
            return failed(
                f"tls.key: {tls.key} is encrypted, and gRPC can only use an unencrypted key",
                f"decrypt it into a file only this user can read, e.g. `openssl pkey -in "
                f"{tls.key} -out KEYFILE` then `chmod 600 KEYFILE`",
            )
        except (OSError, ValueError, UnsupportedAlgorithm) as exc:
            return unreadable("tls.key", tls.key, "private key", exc)
        if cert.public_key() != key.public_key():
            return failed(
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
            return warned(
                f"{summary}; but the private key file can be read by other users",
                f"`chmod 600 {tls.key}`",
            )
        return passed(summary)

    # 2 ------------------------------------------------------------------------------------------

    def certificate(self) -> Verdict:
        assert self.cert is not None and self.ca is not None
        cert, ca = self.cert, self.ca
        try:
            org_id, role = subject_identity(cert.subject)
        except ValueError as exc:
            return failed(
                f"the certificate does not name an organization and role: {exc}",
                RENEW_FIX.format(org="YOUR-ORG-ID"),
            )
        self.org_id = org_id
        issuer = cert.issuer.rfc4514_string()
        ca_name = ca.subject.rfc4514_string()
        if cert.issuer != ca.subject:
            return failed(
                f"the certificate of {org_id} was issued by '{issuer}', not by the configured "
                f"consortium CA '{ca_name}'; the coordinator will refuse it",
                "use the certificate the consortium CA signed for your CSR, and set tls.ca_cert "
                "to the consortium's ca.crt",
            )
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return failed(
                f"the certificate of {org_id} names '{issuer}' as issuer, but its signature does "
                "not verify with the configured CA's key (a different CA with the same name?)",
                "get tls.ca_cert from the consortium again and check it is the CA that signed "
                "your certificate; otherwise request a new certificate",
            )
        now = self.now()
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if now < not_before:
            return failed(
                f"the certificate of {org_id} is not valid before {format_when(not_before)} "
                f"(it is {format_when(now)} here): the certificate is new or this clock is behind",
                "synchronize this machine's clock (NTP), or wait until the certificate is valid",
            )
        if now > not_after:
            return failed(
                f"the certificate of {org_id} expired on {format_when(not_after)} "
                f"({format_days(now - not_after)} ago)",
                RENEW_FIX.format(org=org_id),
            )
        if now > ca.not_valid_after_utc:
            return failed(
                f"the consortium CA certificate expired on {format_when(ca.not_valid_after_utc)}",
                "the consortium must renew its CA; get the new ca.crt and a new certificate",
            )
        if role is not Role.PARTICIPANT:
            return failed(
                f"this is a certificate with role '{role.value}' for {org_id}; the participant "
                "daemon needs role 'participant' and the coordinator refuses other roles",
                RENEW_FIX.format(org=org_id),
            )
        left = not_after - now
        summary = (
            f"org {org_id}, role participant, issued by '{issuer}', valid until "
            f"{format_when(not_after)} ({format_days(left)} left)"
        )
        if left < dt.timedelta(days=EXPIRY_WARNING_DAYS):
            return warned(summary, "renew it soon: " + RENEW_FIX.format(org=org_id))
        return passed(summary)

    # 3 ------------------------------------------------------------------------------------------

    def name_resolution(self) -> Verdict:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
            return failed(
                f"cannot resolve '{self.host}': {reason}",
                "check the host name in `coordinator:` and this machine's DNS (or /etc/hosts); "
                "the coordinator operator can tell you the exact name",
            )
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        return passed(f"{self.host} is {', '.join(addresses)}")

    # 4 ------------------------------------------------------------------------------------------

    def tcp_connection(self) -> Verdict:
        where = host_port(self.host, self.port)
        started = time.monotonic()
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                peer = sock.getpeername()
        except ConnectionRefusedError:
            return failed(
                f"connection refused by {where}: the host answers, but nothing listens on port "
                f"{self.port} (coordinator not running, wrong port, or a firewall rejecting)",
                "check the port in `coordinator:` and ask the coordinator operator whether the "
                "coordinator is running and listening on this address (a coordinator that "
                "listens on 127.0.0.1 only cannot be reached from another machine)",
            )
        except TimeoutError:
            return failed(
                f"no answer from {where} within {self.timeout:g} s: connection attempts are "
                "dropped (firewall, security group, wrong address, or the host is down)",
                f"ask your network administrators to allow outgoing TCP to {where}, and check "
                "the address with the coordinator operator",
            )
        except OSError as exc:
            return failed(
                f"cannot connect to {where}: {exc.strerror or exc}",
                "check this machine's network route (VPN, proxy, routing) to the coordinator",
            )
        elapsed_ms = (time.monotonic() - started) * 1000
        return passed(f"connected to {host_port(str(peer[0]), self.port)} in {elapsed_ms:.1f} ms")

    # 5 ------------------------------------------------------------------------------------------

    def tls_handshake(self) -> Verdict:
        assert self.files is not None
        target = host_port(self.host, self.port)
        try:
            credentials = channel_credentials(self.files)
        except TlsConfigError as exc:
            return failed(str(exc), "fix the TLS files named above")
        self.channel = grpc.secure_channel(target, credentials)
        state = wait_until_connected(self.channel, self.timeout)
        probe = probe_tls(self.host, self.port, self.files, self.timeout)
        if state is grpc.ChannelConnectivity.READY:
            return self._handshake_passed(probe)
        self.channel.close()
        self.channel = None
        return self._explain_handshake(probe, state)

    def _handshake_passed(self, probe: TlsProbe) -> Verdict:
        server = probe.server_cert
        if server is None:
            return passed(f"mutual TLS with {self.host} works")
        summary = (
            f"mutual TLS ({probe.version}) with '{server.subject.rfc4514_string()}', whose "
            f"certificate is valid until {format_when(server.not_valid_after_utc)}"
        )
        left = server.not_valid_after_utc - self.now()
        if left < dt.timedelta(days=EXPIRY_WARNING_DAYS):
            return warned(
                f"{summary}: it expires in {format_days(left)}",
                "tell the coordinator operator to renew the coordinator certificate",
            )
        return passed(summary)

    def _explain_handshake(
        self, probe: TlsProbe, state: grpc.ChannelConnectivity | None
    ) -> Verdict:
        where = host_port(self.host, self.port)
        ca_name = self.ca.subject.rfc4514_string() if self.ca is not None else "the CA"
        error = probe.error
        if isinstance(error, ssl.SSLCertVerificationError):
            text = f"{error.verify_message} (ssl: {error.reason})"
            server = fetch_server_certificate(self.host, self.port, self.files, self.timeout)
            code = error.verify_code
            if code in X509_NAME_MISMATCH:
                names = subject_alt_names(server) if server is not None else []
                listed = ", ".join(names) if names else "names this check could not read"
                return failed(
                    f"the coordinator's certificate is not valid for '{self.host}': it names "
                    f"{listed}. {text}",
                    "set `coordinator:` to a name the coordinator's certificate carries, or ask "
                    f"the consortium CA to reissue the coordinator certificate with "
                    f"`--{'ip' if is_ip(self.host) else 'dns'} {self.host}`",
                )
            if code in X509_UNKNOWN_ISSUER:
                if server is None:
                    issuer = "another CA"
                elif self.ca is not None and server.issuer == self.ca.subject:
                    issuer = f"a CA with the same name as ours ('{ca_name}') but another key"
                else:
                    issuer = f"'{server.issuer.rfc4514_string()}'"
                return failed(
                    f"the coordinator's certificate was issued by {issuer}, not by the configured "
                    f"CA '{ca_name}': a different consortium, a wrong tls.ca_cert, or something "
                    f"intercepting TLS in between. {text}",
                    "check that tls.ca_cert is the consortium's ca.crt and that nothing between "
                    f"you and {where} (proxy, load balancer) terminates TLS",
                )
            if code in (X509_EXPIRED, X509_NOT_YET_VALID):
                return failed(
                    f"the coordinator's certificate is outside its validity period "
                    f"(it is {format_when(self.now())} here). {text}",
                    "check this machine's clock (NTP); if it is right, tell the coordinator "
                    "operator to renew the coordinator certificate",
                )
            if code == X509_INVALID_PURPOSE:
                return failed(
                    f"the certificate at {where} is not a server certificate. {text}",
                    "the coordinator must serve a certificate issued with role coordinator",
                )
            return failed(
                f"the coordinator's certificate was rejected: {text}",
                "send this message to the coordinator operator",
            )
        if isinstance(error, ssl.SSLError) and error.reason in NOT_TLS_REASONS:
            return failed(
                f"{where} does not answer in TLS (ssl: {error.reason}): a plaintext server, or "
                "not a fedsilo coordinator",
                "check the port with the coordinator operator; a coordinator must run with TLS",
            )
        if isinstance(error, ssl.SSLError):
            return failed(
                f"the coordinator ended the TLS handshake: {error.reason or error}; it refused "
                "our certificate (it trusts another CA, or the certificate was revoked or is "
                "not a participant certificate)",
                f"ask the coordinator operator whether it trusts the CA '{ca_name}' and your "
                f"certificate (serial {self._serial()})",
            )
        if isinstance(error, TimeoutError):
            return failed(
                f"{where} accepted TCP but did not complete a TLS handshake within "
                f"{self.timeout:g} s (not a fedsilo coordinator, or a proxy that holds the "
                "connection)",
                "check the address and port with the coordinator operator",
            )
        if error is not None:
            return failed(
                f"TLS connection to {where} failed: {error}",
                "check the network path to the coordinator and retry",
            )
        if probe.reply == Reply.CLOSED:
            return failed(
                "the TLS handshake completes, but the coordinator closes the connection right "
                "after seeing our certificate: it refused it (the coordinator trusts a "
                "different CA, or your certificate is not acceptable to it)",
                f"ask the coordinator operator whether it trusts the CA '{ca_name}' that "
                f"signed your certificate (serial {self._serial()})",
            )
        state_name = state.name if state is not None else "no connection"
        return failed(
            f"TLS with {where} works from Python, but gRPC could not open a channel "
            f"(last state: {state_name}) within {self.timeout:g} s",
            "retry with a longer --timeout; if it persists, check that nothing between you and "
            "the coordinator downgrades HTTP/2 (a proxy), and tell the coordinator operator",
        )

    def _serial(self) -> str:
        return format(self.cert.serial_number, "x") if self.cert is not None else "?"

    # 6 ------------------------------------------------------------------------------------------

    def coordinator_health(self) -> Verdict:
        assert self.channel is not None
        try:
            code, status = serving_status(self.channel, self.timeout)
        except grpc.RpcError as exc:
            return self._explain_rpc_error("the health check", exc)
        if code != SERVING:
            return failed(
                f"the coordinator reports {status} (starting up or shutting down)",
                "retry in a minute; if it persists, tell the coordinator operator",
            )
        return passed("the coordinator reports SERVING")

    # 7 ------------------------------------------------------------------------------------------

    def identity(self) -> Verdict:
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
            return failed(
                f"the coordinator sees organization '{info.org_id}' with role '{info.role}', "
                f"but your certificate says '{self.org_id}' with role participant",
                "something between you and the coordinator presents another certificate; "
                "connect directly and tell the coordinator operator",
            )
        mine = "" if version == fedsilo.__version__ else f"; this is fedsilo {fedsilo.__version__}"
        return passed(
            f"the coordinator (fedsilo {version}) sees organization '{info.org_id}' with role "
            f"participant{mine}"
        )

    def _explain_rpc_error(self, what: str, exc: grpc.RpcError) -> Verdict:
        code: grpc.StatusCode = exc.code()
        details = exc.details() or ""
        said = f"{code.name}: {details}" if details else code.name
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return failed(
                f"the coordinator refused {what} ({said}): your certificate (serial "
                f"{self._serial()}) has been revoked, or it could not read it",
                RENEW_FIX.format(org=self.org_id or "YOUR-ORG-ID")
                + "; ask the consortium admin why it was revoked",
            )
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return failed(
                f"the coordinator refused {what} ({said}): a certificate without role "
                f"participant, or organization '{self.org_id}' has been expelled",
                "if your membership was revoked, only the consortium admins can settle it; "
                "otherwise request a certificate with role participant",
            )
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return failed(
                f"the coordinator does not offer {what} ({said}): an older fedsilo version",
                f"ask the coordinator operator to upgrade to fedsilo {fedsilo.__version__} "
                "or later",
            )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return failed(
                f"no answer to {what} within {self.timeout:g} s",
                "retry with a longer --timeout; tell the coordinator operator if it persists",
            )
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return failed(
                f"the coordinator turned {what} away ({said})",
                "another process with this certificate is busy (the daemon?); retry shortly",
            )
        return failed(
            f"{what} failed ({said})", "retry; if it persists, tell the coordinator operator"
        )

    # 8 ------------------------------------------------------------------------------------------

    def clock_skew(self) -> Verdict:
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
            return failed(
                f"{summary}; more than {MAX_CLOCK_SKEW_S:g} s: the coordinator's clock decides "
                "round deadlines, so this organization would misjudge them",
                "synchronize this machine's clock with NTP (e.g. `timedatectl set-ntp true`, "
                "or chrony) and run the doctor again",
            )
        return passed(summary)

    # 9 ------------------------------------------------------------------------------------------

    def membership(self) -> Verdict:
        assert self.info is not None
        status = self.info.membership
        org = self.org_id
        if status == "active":
            return passed(f"{org} is an active member: it will be given rounds")
        if status == "pending":
            return warned(
                f"{org} is registered but pending: the daemon will only wait until an admin "
                "approves it",
                f"ask the consortium admin to run `fedsilo participants approve {org}`",
            )
        if status == "revoked":
            return failed(
                f"{org}'s membership has been revoked: the coordinator refuses its work",
                "only the consortium admins can settle this; contact them",
            )
        return failed(
            f"the coordinator reports an unknown membership status {status!r}",
            "tell the coordinator operator; versions may not match",
        )

    # 10 -----------------------------------------------------------------------------------------

    def task_data(self) -> Verdict:
        names = self.tasks or tuple(sorted(self.config.tasks))
        if not names:
            return warned(
                "no task named, so this organization's data was not loaded",
                "run `fedsilo participant doctor --task NAME` with the task your jobs use, or "
                "list it under `tasks:` in the configuration",
            )
        loaded = []
        for name in names:
            try:
                task = load_task(name, self.config.tasks or None)
            except TaskNotFoundError as exc:
                return failed(
                    str(exc), "install the task's package, or list it under `tasks:` as module:attr"
                )
            try:
                data = task.load_data(self.config.task_config)
            except Exception as exc:  # noqa: BLE001 -- the task's own code: its message is the finding
                return failed(
                    f"task {name}: loading this organization's data with `task_config` failed: "
                    f"{type(exc).__name__}: {exc}",
                    "fix `task_config` in the configuration (a job may add keys of its own)",
                )
            if data.num_train == 0:
                return failed(
                    f"task {name}: the training split of this organization's data is empty",
                    "point `task_config` at this organization's data",
                )
            loaded.append(
                f"{name}: {data.num_train} training and {data.num_test} test examples of shape "
                f"{tuple(data.x_train.shape[1:])}"
            )
        return passed("; ".join(loaded))


_Check = Callable[[_Diagnosis], Verdict]

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
    (TASK_DATA, (CONFIGURATION,), _Diagnosis.task_data),
)


def diagnose(
    config: ParticipantConfig,
    *,
    clock: Callable[[], float] = time.time,
    timeout: float = DEFAULT_TIMEOUT_S,
    tasks: Sequence[str] = (),
) -> list[CheckResult]:
    """Run every check in order; one result per name in :data:`CHECKS`.

    ``tasks`` are the tasks whose data the last check loads with the configured ``task_config``
    (default: those listed under ``tasks:`` in the configuration).

    ``clock`` is this machine's wall clock (seconds since the epoch): certificate validity and
    clock skew are judged on it. ``timeout`` bounds each network step.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    diagnosis = _Diagnosis(config, clock, timeout, tasks)
    results: dict[str, CheckResult] = {}
    try:
        for name, needs, check in _PLAN:
            blocked = [need for need in needs if not results[need].ok]
            if blocked:
                results[name] = skipped_result(name, blocked[0])
                continue
            verdict = check(diagnosis)
            results[name] = CheckResult(name, *verdict)
    finally:
        diagnosis.close()
    return list(results.values())


def startup_refusal(
    config: ParticipantConfig, *, clock: Callable[[], float] = time.time
) -> str | None:
    """Why ``participant run`` must not start with this configuration, or None.

    The doctor's two local checks (configuration and certificate) run before the daemon starts,
    so an expired, not-yet-valid or foreign-CA certificate stops it at once with the doctor's
    message instead of a daemon that retries forever. A plaintext configuration (tests on
    loopback only) has no certificate to check.
    """
    if config.tls.insecure:
        return None
    diagnosis = _Diagnosis(config, clock, DEFAULT_TIMEOUT_S)
    try:
        for name, check in (
            (CONFIGURATION, _Diagnosis.configuration),
            (CERTIFICATE, _Diagnosis.certificate),
        ):
            verdict = check(diagnosis)
            if not verdict.ok:
                return f"{name} check failed: {verdict.detail}. Fix: {verdict.fix}"
    finally:
        diagnosis.close()
    return None
