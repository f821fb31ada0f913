"""The coordinator's gRPC server: services, health, reflection, the round driver, graceful stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.errors import StorageUnavailable
from coordinator.observability.prometheus import (
    CoordinatorMetrics,
    RpcMetricsInterceptor,
    serve_metrics,
)
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Store
from coordinator.service.context import CoordinatorSettings
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.transport.health import ListingHealthServicer
from coordinator.transport.health_listener import start_health_listener
from coordinator.transport.interceptors import AuthInterceptor, CallLimiter
from coordinator.transport.servicers import AdminServicer, ParticipantServicer
from fedsilo.chunking import MAX_MESSAGE_BYTES
from fedsilo.config import CoordinatorConfig
from fedsilo.pki import load_certificate
from fedsilo.tls import TlsFiles, check_insecure_allowed, reloading_server_credentials
from fedsilo.tls_policy import tls13_only_in_effect
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

__all__ = ["SERVER_OPTIONS", "RunningCoordinator", "start_coordinator"]

log = logging.getLogger("coordinator")

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Participants long-poll and may idle between rounds; these agree with the client's 20 s
    # keepalive so neither side sends GOAWAY for "too many pings".
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
]

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["ParticipantService"].full_name,
    pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


@dataclass
class RunningCoordinator:
    """A started coordinator: its server, bound port, service and driver thread."""

    server: grpc.Server
    port: int
    service: CoordinatorService
    membership: MembershipService
    store: Store
    health: health.HealthServicer
    stop_driver: threading.Event
    driver: threading.Thread
    health_server: grpc.Server | None = None
    """The plaintext health-only listener for kubelet probes, when ``health_listen`` is set."""
    health_port: int = 0
    metrics: CoordinatorMetrics | None = None
    metrics_server: Any = None
    metrics_port: int = 0
    tensorboard: threading.Thread | None = None
    """The thread writing TensorBoard event files, when ``tensorboard_dir`` is set."""

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within ``grace``, stop the driver."""
        self.health.enter_graceful_shutdown()
        self.stop_driver.set()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(None).wait()
        self.driver.join(timeout=5)
        if self.tensorboard is not None:
            self.tensorboard.join(timeout=5)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.store.close()


ParticipantServicerFactory = Callable[[CoordinatorService, MembershipService], ParticipantServicer]


def start_coordinator(
    config: CoordinatorConfig,
    participant_servicer: ParticipantServicerFactory = ParticipantServicer,
) -> RunningCoordinator:
    """Open the database and blob store, bind the listener and start serving.

    ``participant_servicer`` builds the participant API; tests pass a subclass that deviates
    from the protocol to play a malicious coordinator.
    """
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.database_url())
    blobs = BlobStore(config.data_dir / "blobs")
    settings = CoordinatorSettings(
        liveness_seconds=config.limits.liveness_seconds,
        max_payload_bytes=config.limits.max_payload_bytes,
        spool_bytes_per_org=config.limits.spool_org_budget(),
        spool_bytes_total=config.limits.spool_total_budget(),
    )
    service = CoordinatorService(store, blobs, settings)
    membership = MembershipService(
        store,
        auto_approve=config.auto_approve,
        # The CA that signs membership lists is the one that signs every certificate here.
        ca=None
        if config.tls.insecure or config.tls.ca_cert is None
        else load_certificate(config.tls.ca_cert),
    )

    def audit(actor: str, method: str, outcome: str) -> None:
        try:
            membership.record(actor, method, outcome)
        except Exception:  # noqa: BLE001 - auditing must never turn a refusal into a crash
            log.exception("could not write the audit record")

    limits = config.limits
    interceptor = AuthInterceptor(
        audit,
        membership.is_certificate_revoked,
        CallLimiter(limits.max_calls_per_org, limits.max_workers - limits.reserved()),
        stream_idle_seconds=limits.stream_idle_seconds,
    )
    metrics = CoordinatorMetrics(store) if config.metrics_listen else None
    if metrics is not None:
        service.on_phase_end(metrics.observe_phase)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.limits.max_workers),
        interceptors=([RpcMetricsInterceptor(metrics)] if metrics else []) + [interceptor],
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=config.limits.max_concurrent_rpcs,
    )
    pb_grpc.add_ParticipantServiceServicer_to_server(
        participant_servicer(service, membership), server
    )
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(service, membership), server)
    health_servicer = ListingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)

    if not config.tls.insecure and not tls13_only_in_effect():
        log.warning(
            "grpc was imported before fedsilo: TLS 1.2 clients may be accepted "
            "(see fedsilo/tls_policy.py)"
        )
    if config.tls.insecure:
        check_insecure_allowed(config.listen)
        log.warning("serving WITHOUT TLS on %s (loopback only; for tests)", config.listen)
        port = server.add_insecure_port(config.listen)
    else:
        assert config.tls.ca_cert and config.tls.cert and config.tls.key  # checked by config
        files = TlsFiles(config.tls.ca_cert, config.tls.cert, config.tls.key)
        port = server.add_secure_port(config.listen, reloading_server_credentials(files))
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    server.start()

    stop = threading.Event()

    def drive() -> None:
        # Deadlines live in the database and are checked on this clock only.
        unavailable = False
        while not stop.wait(config.tick_seconds):
            try:
                service.tick()
            except StorageUnavailable as exc:
                # One line when the database goes away, one when it is back: a tick every
                # fraction of a second must not repeat a traceback for the whole outage.
                if not unavailable:
                    log.warning("database unavailable, rounds wait until it is back: %s", exc)
                unavailable = True
                continue
            except Exception:  # noqa: BLE001 - any other failing tick is a defect, retried
                log.exception("round driver tick failed; retrying")
                continue
            if unavailable:
                log.info("database reachable again; rounds go on")
                unavailable = False

    driver = threading.Thread(target=drive, name="round-driver", daemon=True)
    driver.start()
    for name in SERVICE_NAMES[:2] + ("",):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("coordinator listening on port %d (database %s)", port, _redacted(store.url))
    health_server, health_port = None, 0
    if config.health_listen:
        health_server, health_port = start_health_listener(config.health_listen, health_servicer)
        log.info("health service alone, without TLS, on port %d (for probes)", health_port)
    running = RunningCoordinator(
        server,
        port,
        service,
        membership,
        store,
        health_servicer,
        stop,
        driver,
        health_server,
        health_port,
        metrics,
    )
    if metrics is not None:
        running.metrics_server, running.metrics_port = serve_metrics(metrics, config.metrics_listen)
        log.info("metrics on http://%s/metrics", config.metrics_listen)
    if config.tensorboard_dir is not None:
        running.tensorboard = _start_tensorboard(
            store, config.tensorboard_dir, config.tick_seconds, stop
        )
    return running


def _start_tensorboard(
    store: Store, directory: Path, period_seconds: float, stop: threading.Event
) -> threading.Thread:
    # Imported only when configured: the tensorboard package takes a moment to load.
    from coordinator.observability.tensorboard import (
        TensorBoardExporter,
        start_tensorboard_export,
    )

    exporter = TensorBoardExporter(store, directory, time.time)
    log.info("TensorBoard event files under %s", directory)
    return start_tensorboard_export(exporter, period_seconds, stop)


def _redacted(url: str) -> str:
    """Hide a database password before the URL reaches a log line."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
