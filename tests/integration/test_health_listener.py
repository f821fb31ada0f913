"""The plaintext probe listener (``health_listen``) serves the health service and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from coordinator.transport.server import RunningCoordinator
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

TIMEOUT_S = 20.0


def test_the_probe_listener_answers_health_in_plaintext_and_nothing_else(
    start_test_coordinator: Callable[..., RunningCoordinator],
) -> None:
    running = start_test_coordinator(health_listen="127.0.0.1:0")
    assert running.health_port not in (0, running.port)
    with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listed = health.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S)
        assert "fedsilo.v1.AdminService" in listed.statuses

        with pytest.raises(grpc.RpcError) as participant_api:
            pb_grpc.ParticipantServiceStub(channel).GetServerInfo(
                pb.GetServerInfoRequest(), timeout=TIMEOUT_S
            )
        assert participant_api.value.code() is grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as admin_api:
            pb_grpc.AdminServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT_S)
        assert admin_api.value.code() is grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as reflection:
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            list(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([request]), timeout=TIMEOUT_S
                )
            )
        assert reflection.value.code() is grpc.StatusCode.UNIMPLEMENTED

    # The same statuses as the main listener: a stopping coordinator is NOT_SERVING there too.
    running.health.enter_graceful_shutdown()
    with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S
        )
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_without_health_listen_there_is_no_second_listener(
    start_test_coordinator: Callable[..., RunningCoordinator],
) -> None:
    running = start_test_coordinator()
    assert running.health_server is None and running.health_port == 0
