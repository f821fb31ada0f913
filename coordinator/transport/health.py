"""The gRPC health service of the coordinator: grpc's servicer, with ``List`` implemented.

Reflection advertises every method of ``grpc.health.v1.Health``; the bundled servicer answers
``List`` by raising ``NotImplementedError``, which gRPC logs with a traceback on every call. This
one answers it with the status of every service it knows.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

__all__ = ["ListingHealthServicer"]


class ListingHealthServicer(health.HealthServicer):  # type: ignore[misc]
    """``Check`` and ``Watch`` as grpc implements them, and ``List`` from the same statuses."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[str, Any] = {}
        self._known_lock = threading.Lock()

    def set(self, service: str, status: Any) -> None:
        with self._known_lock:
            self._known[service] = status
        super().set(service, status)

    def List(  # noqa: N802 - the gRPC method's name
        self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthListResponse:
        with self._known_lock:
            known = dict(self._known)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in sorted(known.items())
            }
        )
