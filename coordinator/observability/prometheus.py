"""Prometheus metrics of one coordinator: a per-instance registry, read from the store on scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from coordinator.domain.jobs import JobState, ParticipantStatus
from coordinator.domain.privacy import epsilon_after, released_rounds
from coordinator.domain.rounds import Phase
from coordinator.persistence.store import Store

__all__ = [
    "DP_JOB_METRIC_NAMES",
    "METRIC_NAMES",
    "CoordinatorMetrics",
    "RpcMetricsInterceptor",
    "serve_metrics",
]

ROUND_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))
# Small secure-aggregation phases take milliseconds, INPUTS (local training) minutes.
PHASE_SECONDS_BUCKETS = (0.01, 0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))

METRIC_NAMES = (
    "fedsilo_rounds_total",
    "fedsilo_round_duration_seconds",
    "fedsilo_phase_duration_seconds",
    "fedsilo_submissions_total",
    "fedsilo_received_bytes_total",
    "fedsilo_active_organizations",
    "fedsilo_jobs",
    "fedsilo_rpc_duration_seconds",
    "fedsilo_rpc_refusals_total",
    "fedsilo_job_privacy_epsilon",
    "fedsilo_job_privacy_epsilon_budget",
)

# Exported only while a job with differential privacy exists (one series per such job).
DP_JOB_METRIC_NAMES = ("fedsilo_job_privacy_epsilon", "fedsilo_job_privacy_epsilon_budget")


class StoreCollector(Collector):
    """Counts read from the database at scrape time, so they survive restarts and agree with it."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Any]:
        rounds = CounterMetricFamily(
            "fedsilo_rounds", "Finished rounds by outcome", labels=["outcome"]
        )
        submissions = CounterMetricFamily("fedsilo_submissions", "Accepted submissions")
        received = CounterMetricFamily(
            "fedsilo_received_bytes", "Bytes of accepted submission payloads"
        )
        orgs = GaugeMetricFamily(
            "fedsilo_active_organizations", "Organizations with active membership"
        )
        jobs = GaugeMetricFamily("fedsilo_jobs", "Jobs by state", labels=["state"])
        epsilon = GaugeMetricFamily(
            "fedsilo_job_privacy_epsilon",
            "Epsilon spent by a job with differential privacy, at its delta",
            labels=["job"],
        )
        budget = GaugeMetricFamily(
            "fedsilo_job_privacy_epsilon_budget",
            "Epsilon budget of a job with differential privacy (0: none)",
            labels=["job"],
        )
        outcomes = {Phase.COMMITTED.value: 0, Phase.ABORTED.value: 0}
        durations: list[float] = []
        n_submissions = 0
        n_bytes = 0
        with self._store.transaction() as tx:
            all_jobs = tx.list_jobs()
            participants = tx.list_participants()
            for job in all_jobs:
                job_rounds = tx.list_rounds(job.job_id)
                if job.spec.dp.enabled:
                    released = released_rounds(job_rounds)
                    epsilon.add_metric([job.job_id], epsilon_after(job.spec.dp, released))
                    budget.add_metric([job.job_id], job.spec.dp.epsilon_budget)
                for round_ in job_rounds:
                    if round_.phase.value in outcomes:
                        outcomes[round_.phase.value] += 1
                        if round_.finished_at is not None:
                            durations.append(round_.finished_at - round_.created_at)
                    for sub in tx.list_submissions(round_.round_id):
                        n_submissions += 1
                        n_bytes += sub.size_bytes
        for outcome, count in outcomes.items():
            rounds.add_metric([outcome], count)
        submissions.add_metric([], n_submissions)
        received.add_metric([], n_bytes)
        orgs.add_metric([], sum(p.status is ParticipantStatus.ACTIVE for p in participants))
        for state in JobState:
            jobs.add_metric([state.value], sum(j.state is state for j in all_jobs))
        buckets = [
            (_le(bound), sum(d <= bound for d in durations)) for bound in ROUND_SECONDS_BUCKETS
        ]
        histogram = HistogramMetricFamily(
            "fedsilo_round_duration_seconds",
            "Wall time of finished rounds, creation to commit or abort",
            buckets=buckets,
            sum_value=sum(durations),
        )
        yield from (rounds, histogram, submissions, received, orgs, jobs, epsilon, budget)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class CoordinatorMetrics:
    """One coordinator's metrics, in its own registry (several coordinators may share a process)."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StoreCollector(store))
        self.rpc_seconds = Histogram(
            "fedsilo_rpc_duration_seconds",
            "Server-side latency of gRPC calls by method",
            ["method"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "fedsilo_rpc_refusals",
            "gRPC calls that ended with a non-OK status, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.phase_seconds = Histogram(
            "fedsilo_phase_duration_seconds",
            "Time rounds spent in each phase, by protection and phase (this process's rounds)",
            ["protection", "phase"],
            buckets=PHASE_SECONDS_BUCKETS,
            registry=self.registry,
        )

    def observe_phase(self, protection: str, phase: str, seconds: float) -> None:
        """A round left ``phase`` after ``seconds`` (a ``PhaseListener`` of the service)."""
        self.phase_seconds.labels(protection, phase).observe(seconds)


class RpcMetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Times unary calls by method and counts non-OK outcomes by status code."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return handler
        method = str(details.method).rsplit("/", 1)[-1]
        metrics = self._metrics

        def finish(start: float, context: grpc.ServicerContext) -> None:
            metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)
            code = context.code()
            if code is not None and code != grpc.StatusCode.OK:
                metrics.refusals.labels(method, code.name).inc()

        def timed(inner: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                start = time.perf_counter()
                try:
                    return inner(request, context)
                finally:
                    finish(start, context)

            return call

        def timed_stream(inner: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                start = time.perf_counter()
                try:
                    yield from inner(request, context)
                finally:
                    finish(start, context)

            return call

        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(timed(handler.unary_unary), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(timed(handler.stream_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                timed_stream(handler.unary_stream), **kwargs
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                timed_stream(handler.stream_stream), **kwargs
            )
        return handler


def serve_metrics(metrics: CoordinatorMetrics, listen: str) -> tuple[Any, int]:
    """Serve plaintext /metrics on ``listen`` (host:port, port 0 picks one); return server, port."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host, registry=metrics.registry)
    return server, int(server.server_address[1])
