"""Tests for fedsilo.tls over real mutual-TLS gRPC connections on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedsilo import pki
from fedsilo.pki import Role
from fedsilo.tls import (
    InsecureTransportError,
    PeerIdentity,
    TlsConfigError,
    TlsFiles,
    channel_credentials,
    check_insecure_allowed,
    identity_from_auth_context,
    is_loopback_address,
    server_credentials,
)

WHOAMI = "/fedsilo.test.Identity/WhoAmI"
TIMEOUT_S = 10.0


@dataclass
class IdentityServicer:
    """Answers with the identity the server derived from the peer certificate."""

    seen: list[PeerIdentity | None] = field(default_factory=list)

    def who_am_i(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        identity = identity_from_auth_context(context.auth_context())
        self.seen.append(identity)
        if identity is None:
            return b"anonymous"
        return f"{identity.org_id}/{identity.role.value}".encode()


@dataclass
class RunningServer:
    port: int
    servicer: IdentityServicer

    @property
    def target(self) -> str:
        # The coordinator certificate names "localhost", so dial that name.
        return f"localhost:{self.port}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> pki.DemoPki:
    return pki.make_demo_pki(tmp_path_factory.mktemp("pki"), ["org-a", "org-b"])


@pytest.fixture
def server(demo: pki.DemoPki) -> Iterator[RunningServer]:
    servicer = IdentityServicer()
    executor = futures.ThreadPoolExecutor(max_workers=4)
    grpc_server = grpc.server(executor)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    handler = grpc.method_handlers_generic_handler(
        "fedsilo.test.Identity",
        {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(
                servicer.who_am_i,
                request_deserializer=_identity_bytes,
                response_serializer=_identity_bytes,
            )
        },
    )
    grpc_server.add_generic_rpc_handlers((handler,))
    files = TlsFiles(demo.ca_cert, demo.coordinator_cert, demo.coordinator_key)
    port = grpc_server.add_secure_port("127.0.0.1:0", server_credentials(files))
    assert port > 0
    grpc_server.start()
    try:
        yield RunningServer(port=port, servicer=servicer)
    finally:
        grpc_server.stop(grace=None).wait()
        executor.shutdown(wait=True)


def _identity_bytes(data: bytes) -> bytes:
    return data


@pytest.fixture
def open_channel() -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def _open(target: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        channel = grpc.secure_channel(target, credentials)
        channels.append(channel)
        return channel

    yield _open
    for channel in channels:
        channel.close()


def _who_am_i(channel: grpc.Channel) -> bytes:
    call = channel.unary_unary(
        WHOAMI, request_serializer=_identity_bytes, response_deserializer=_identity_bytes
    )
    response: bytes = call(b"", timeout=TIMEOUT_S)
    return response


def _participant_files(demo: pki.DemoPki, org_id: str) -> TlsFiles:
    issued = demo.participants[org_id]
    return TlsFiles(demo.ca_cert, issued.cert_path, issued.key_path)


def test_participant_of_the_consortium_connects_and_is_identified(
    demo: pki.DemoPki, server: RunningServer, open_channel: Any
) -> None:
    channel = open_channel(server.target, channel_credentials(_participant_files(demo, "org-b")))
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
    health_stub = health_pb2_grpc.HealthStub(channel)
    reply = health_stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert _who_am_i(channel) == b"org-b/participant"
    serial = format(pki.load_certificate(demo.participants["org-b"].cert_path).serial_number, "x")
    assert server.servicer.seen == [PeerIdentity("org-b", Role.PARTICIPANT, serial)]


def test_admin_role_comes_from_the_certificate(
    demo: pki.DemoPki, server: RunningServer, open_channel: Any
) -> None:
    files = TlsFiles(demo.ca_cert, demo.admin_cert, demo.admin_key)
    channel = open_channel(server.target, channel_credentials(files))
    assert _who_am_i(channel) == b"admin/admin"
    serial = format(pki.load_certificate(demo.admin_cert).serial_number, "x")
    assert server.servicer.seen == [PeerIdentity("admin", Role.ADMIN, serial)]


def test_cert_from_a_foreign_ca_fails_the_handshake(
    demo: pki.DemoPki, server: RunningServer, open_channel: Any, tmp_path: Path
) -> None:
    # Same org id and role as a real participant, but signed by a CA the server does not trust.
    foreign_ca = pki.create_ca("impostor CA")
    forged = pki.issue(foreign_ca, "org-a", Role.PARTICIPANT, tmp_path)
    files = TlsFiles(demo.ca_cert, forged.cert_path, forged.key_path)
    channel = open_channel(server.target, channel_credentials(files))
    with pytest.raises(grpc.RpcError) as error:
        _who_am_i(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as error:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
        )
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.seen == []


def test_client_without_a_certificate_fails_the_handshake(
    demo: pki.DemoPki, server: RunningServer, open_channel: Any
) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=demo.ca_cert.read_bytes())
    channel = open_channel(server.target, credentials)
    with pytest.raises(grpc.RpcError) as error:
        _who_am_i(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.seen == []


def test_client_refuses_a_server_from_a_foreign_ca(
    demo: pki.DemoPki, server: RunningServer, open_channel: Any, tmp_path: Path
) -> None:
    # The participant trusts only its consortium CA, so a server with another CA's cert is out.
    other = pki.make_demo_pki(tmp_path, ["org-a"])
    files = TlsFiles(
        other.ca_cert, other.participants["org-a"].cert_path, other.participants["org-a"].key_path
    )
    channel = open_channel(server.target, channel_credentials(files))
    with pytest.raises(grpc.RpcError) as error:
        _who_am_i(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.seen == []


def test_credentials_reject_a_key_that_does_not_match_the_cert(demo: pki.DemoPki) -> None:
    files = TlsFiles(demo.ca_cert, demo.admin_cert, demo.participants["org-a"].key_path)
    with pytest.raises(TlsConfigError, match="does not belong"):
        server_credentials(files)
    with pytest.raises(TlsConfigError, match="does not belong"):
        channel_credentials(files)


def test_credentials_report_a_missing_file(demo: pki.DemoPki, tmp_path: Path) -> None:
    files = TlsFiles(demo.ca_cert, demo.admin_cert, tmp_path / "missing.key")
    with pytest.raises(TlsConfigError, match="missing.key"):
        channel_credentials(files)


def _auth_context_for(cert: x509.Certificate) -> dict[str, list[bytes]]:
    return {"x509_pem_cert": [cert.public_bytes(serialization.Encoding.PEM)]}


def test_identity_is_none_without_a_peer_certificate() -> None:
    assert identity_from_auth_context({}) is None
    assert identity_from_auth_context({"transport_security_type": [b"insecure"]}) is None
    assert identity_from_auth_context({"x509_pem_cert": [b"not a certificate"]}) is None


def test_identity_is_none_for_an_unknown_role(demo: pki.DemoPki) -> None:
    # Built by hand: pki.sign_csr would refuse to issue this subject at all.
    ca = pki.load_ca(demo.ca_cert, demo.ca_key)
    key = pki.make_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "org-a"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "superuser"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca.cert.not_valid_before_utc)
        .not_valid_after(ca.cert.not_valid_after_utc)
        .sign(ca.key, hashes.SHA256())
    )
    assert identity_from_auth_context(_auth_context_for(cert)) is None


def test_identity_reads_cn_and_ou(demo: pki.DemoPki) -> None:
    cert = pki.load_certificate(demo.coordinator_cert)
    assert identity_from_auth_context(_auth_context_for(cert)) == PeerIdentity(
        "coordinator", Role.COORDINATOR, format(cert.serial_number, "x")
    )


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "127.8.9.10:1",
        "[::1]:0",
        "[::1]",
        "::1",
        "localhost:123",
        "LOCALHOST:123",
        "localhost",
        "[::ffff:127.0.0.1]:5",
        "ipv4:127.0.0.1:5,127.0.0.2:6",
        "ipv6:[::1]:5",
        "dns:///localhost:5",
        "dns:localhost:5",
        "unix:/tmp/fedsilo.sock",
    ],
)
def test_loopback_addresses(address: str) -> None:
    assert is_loopback_address(address)
    check_insecure_allowed(address)


@pytest.mark.parametrize(
    "address",
    [
        "0.0.0.0:1",
        "[::]:1",
        "::",
        "10.1.2.3:5",
        ":50051",
        "",
        "coordinator.example.org:443",
        "localhost.evil.example:1",
        "127.0.0.1.nip.io:1",
        "[::1:5",
        "[::1]x:5",
        "ipv4:127.0.0.1:5,10.0.0.1:6",
        "dns:///10.0.0.1:5",
        "[::ffff:10.0.0.1]:5",
    ],
)
def test_non_loopback_addresses(address: str) -> None:
    assert not is_loopback_address(address)
    with pytest.raises(InsecureTransportError, match="only allowed on loopback"):
        check_insecure_allowed(address)
