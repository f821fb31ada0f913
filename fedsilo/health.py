"""gRPC health checking (grpc.health.v1) of a coordinator, as the demo, the doctor and tests ask."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedsilo.tls import TlsFiles, channel_credentials

__all__ = ["SERVING", "health_serving", "serving_status"]

SERVING = health_pb2.HealthCheckResponse.SERVING


def serving_status(channel: grpc.Channel, timeout: float) -> tuple[int, str]:
    """Ask Check("") on ``channel``: the status and its name; a failed call raises grpc.RpcError."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    status = int(response.status)
    return status, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health_serving(target: str, tls: TlsFiles, timeout: float = 2.0) -> bool:
    """True if the server at ``target`` answers SERVING over mutual TLS, False otherwise."""
    with grpc.secure_channel(target, channel_credentials(tls)) as channel:
        try:
            status, _ = serving_status(channel, timeout)
        except grpc.RpcError:
            return False
    return bool(status == SERVING)
