"""Prometheus metrics of one participant daemon: its work by kind and outcome, and its coordinator.

Served over plaintext HTTP at ``metrics_listen`` (docs/metrics.md, "Participant metrics"); off
by default. Labels are work kinds, outcomes and gRPC status codes, never job data.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["PARTICIPANT_METRIC_NAMES", "ParticipantMetrics", "serve_participant_metrics"]

PARTICIPANT_METRIC_NAMES = (
    "fedsilo_participant_work_total",
    "fedsilo_participant_work_duration_seconds",
    "fedsilo_participant_coordinator_errors_total",
    "fedsilo_participant_last_contact_timestamp_seconds",
)

# A small secure-aggregation step takes milliseconds, local training minutes.
WORK_SECONDS_BUCKETS = (0.01, 0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))


class ParticipantMetrics:
    """One daemon's metrics in their own registry; the daemon's loop reports to it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._work = Counter(
            "fedsilo_participant_work",
            "Work items handled, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "fedsilo_participant_work_duration_seconds",
            "Time spent on work items (waits excluded), by kind",
            ["kind"],
            buckets=WORK_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self._errors = Counter(
            "fedsilo_participant_coordinator_errors",
            "Calls to the coordinator that failed, by gRPC status code",
            ["code"],
            registry=self.registry,
        )
        self._contact = Gauge(
            "fedsilo_participant_last_contact_timestamp_seconds",
            "Unix time of the last answer from the coordinator (0: none yet)",
            registry=self.registry,
        )

    def contact(self) -> None:
        """The coordinator answered a request for work."""
        self._contact.set(time.time())

    def work(self, kind: str, outcome: str, seconds: float) -> None:
        """A work item of ``kind`` ended with ``outcome`` after ``seconds``."""
        self._work.labels(kind, outcome).inc()
        if kind != "wait":
            self._seconds.labels(kind).observe(seconds)

    def coordinator_error(self, code: str) -> None:
        self._errors.labels(code).inc()


def serve_participant_metrics(metrics: ParticipantMetrics, listen: str) -> tuple[Any, int]:
    """Serve plaintext /metrics on ``listen`` (host:port, port 0 picks one); return server, port."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host, registry=metrics.registry)
    return server, int(server.server_address[1])
