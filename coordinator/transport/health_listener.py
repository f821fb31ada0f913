"""An optional plaintext listener that serves only the gRPC health service, for kubelet probes."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc

__all__ = ["start_health_listener"]

log = logging.getLogger("coordinator")


def start_health_listener(address: str, servicer: health.HealthServicer) -> grpc.Server | None:
    """Serve ``servicer`` alone, without TLS, on ``address``; None when ``address`` is empty.

    The kubelet's native gRPC probe cannot present a client certificate, so it cannot reach the
    mutual-TLS listener. This second server shares the main server's HealthServicer (it reports
    NOT_SERVING during a graceful stop too) and registers nothing else: every other method on
    this port answers UNIMPLEMENTED, and no identity-bearing call can arrive without TLS.
    """
    if not address:
        return None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), maximum_concurrent_rpcs=16)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address} (health_listen)")
    server.start()
    log.info("plaintext health listener on port %d", port)
    return server
