"""Network probes of the doctor: gRPC connectivity, a Python ``ssl`` handshake, address parsing."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from enum import StrEnum

import grpc
from cryptography import x509

from fedsilo.tls import TlsFiles

__all__ = [
    "NOT_TLS_REASONS",
    "X509_EXPIRED",
    "X509_INVALID_PURPOSE",
    "X509_NAME_MISMATCH",
    "X509_NOT_YET_VALID",
    "X509_UNKNOWN_ISSUER",
    "Reply",
    "TlsProbe",
    "fetch_server_certificate",
    "host_port",
    "is_ip",
    "probe_tls",
    "split_target",
    "subject_alt_names",
    "wait_until_connected",
]

# OpenSSL X509_V_ERR_* codes that ssl.SSLCertVerificationError.verify_code reports.
X509_NOT_YET_VALID = 9
X509_EXPIRED = 10
X509_INVALID_PURPOSE = 26
X509_NAME_MISMATCH = frozenset({62, 64})  # host name, IP address
X509_UNKNOWN_ISSUER = frozenset({2, 7, 18, 19, 20, 21})

# -- TLS -----------------------------------------------------------------------------------


def wait_until_connected(channel: grpc.Channel, timeout: float) -> grpc.ChannelConnectivity | None:
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
NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"}
)


class Reply(StrEnum):
    DATA = "data"  # the server spoke first (gRPC sends its HTTP/2 SETTINGS): all is well
    CLOSED = "closed"  # the server hung up right after the handshake: it refused our certificate
    SILENT = "silent"


@dataclass(frozen=True)
class TlsProbe:
    """One handshake done by Python's ``ssl``, whose errors name the cause precisely."""

    error: Exception | None = None
    version: str = ""
    server_cert: x509.Certificate | None = None
    reply: Reply = Reply.SILENT


def probe_tls(host: str, port: int, files: TlsFiles, timeout: float) -> TlsProbe:
    try:
        context = ssl.create_default_context(cafile=str(files.ca_cert))
        context.load_cert_chain(str(files.cert), str(files.key))
        context.set_alpn_protocols(["h2"])
    except (OSError, ValueError) as exc:
        return TlsProbe(error=exc)
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
                reply = Reply.DATA if tls.recv(1) else Reply.CLOSED
            except TimeoutError:
                reply = Reply.SILENT
            except (ssl.SSLError, ConnectionError):
                reply = Reply.CLOSED
            return TlsProbe(version=tls.version() or "", server_cert=server, reply=reply)
    except (OSError, ValueError) as exc:
        # ssl.SSLError and TimeoutError are OSErrors: the caller tells them apart.
        return TlsProbe(error=exc)


def fetch_server_certificate(
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


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *(f"DNS:{name}" for name in sans.get_values_for_type(x509.DNSName)),
        *(f"IP:{ip}" for ip in sans.get_values_for_type(x509.IPAddress)),
    ]


# -- addresses ---------------------------------------------------------------------------------


def split_target(target: str) -> tuple[str, int]:
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


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
