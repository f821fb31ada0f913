"""The coordinator's Prometheus endpoint, scraped over HTTP while a real job runs over mTLS gRPC."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import grpc
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job
from prometheus_client.parser import text_string_to_metric_families

from coordinator.observability.prometheus import DP_JOB_METRIC_NAMES, METRIC_NAMES
from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb

NUM_ROUNDS = 2


@pytest.fixture
def coordinator(start_test_coordinator: Callable[..., RunningCoordinator]) -> RunningCoordinator:
    return start_test_coordinator(0, metrics_listen="127.0.0.1:0")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - fixed loopback URL
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_follow_a_job_as_its_rounds_commit(
    coordinator: RunningCoordinator,
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
) -> None:
    port = coordinator.metrics_port
    assert port > 0
    before = _scrape(port)
    assert before[("fedsilo_rounds_total", (("outcome", "committed"),))] == 0
    assert before[("fedsilo_received_bytes_total", ())] == 0

    for org in ORGS:
        run_daemon(org, target)
    wait_for(lambda: len(admin.list_participants()) == len(ORGS), 20, "registration", interval=0.02)
    job_id = admin.create_job(shift_job_spec(num_rounds=NUM_ROUNDS), initial_weights()).job_id
    admin.start_job(job_id)
    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to complete", 40
    )
    committed = sum(r.phase == pb.ROUND_PHASE_COMMITTED for r in status.rounds)
    assert committed == NUM_ROUNDS

    with pytest.raises(grpc.RpcError) as refused:
        admin.get_job("no-such-job")
    after = _scrape(port)
    key = (
        "fedsilo_rpc_refusals_total",
        (("code", refused.value.code().name), ("method", "GetJob")),
    )
    assert after[key] == 1
    assert after[("fedsilo_rounds_total", (("outcome", "committed"),))] == committed
    assert after[("fedsilo_rounds_total", (("outcome", "aborted"),))] == 0
    assert after[("fedsilo_received_bytes_total", ())] > 0
    assert after[("fedsilo_submissions_total", ())] >= NUM_ROUNDS * len(ORGS)
    assert after[("fedsilo_active_organizations", ())] == len(ORGS)
    assert after[("fedsilo_jobs", (("state", "completed"),))] == 1
    assert after[("fedsilo_round_duration_seconds_count", ())] == committed
    # Every phase a plain round passes through, once per round, by protection and phase.
    for phase in ("created", "inputs", "aggregated"):
        labels = (("phase", phase), ("protection", "none"))
        assert after[("fedsilo_phase_duration_seconds_count", labels)] == committed, phase
        assert after[("fedsilo_phase_duration_seconds_sum", labels)] >= 0
    for method in ("CreateJob", "StartJob", "GetJob", "GetTask", "SubmitUpdate"):
        latency = ("fedsilo_rpc_duration_seconds_count", (("method", method),))
        assert after.get(latency, 0) > 0, method
    names = {name for name, _ in after}
    # Only jobs with differential privacy have the privacy series (their values are checked in
    # tests/unit/coordinator/service/test_service.py).
    for metric in set(METRIC_NAMES) - set(DP_JOB_METRIC_NAMES):
        assert any(n.startswith(metric) for n in names), metric
