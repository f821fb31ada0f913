"""An optional plaintext listener serving only the gRPC health service, for kubelet probes.

Kubernetes' native gRPC probes cannot present a client certificate, and the coordinator's
listener requires one. This second server answers ``grpc.health.v1.Health`` (Check, Watch, List)
from the same statuses as the main listener, without TLS, and nothing else: every other method
is UNIMPLEMENTED there and no reflection is offered. It reveals whether the coordinator serves,
no more. Off unless ``health_listen`` is set (docs/configuration.md).
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc

__all__ = ["start_health_listener"]

_WORKERS = 2


def start_health_listener(address: str, servicer: health.HealthServicer) -> tuple[grpc.Server, int]:
    """Serve ``servicer`` alone, in plaintext, on ``address``; the started server and its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="health-listener"),
        # A probe answer is tiny: nothing larger than a small request is read.
        options=[("grpc.max_receive_message_length", 1024)],
        maximum_concurrent_rpcs=8,
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address} (health_listen)")
    server.start()
    return server, port
