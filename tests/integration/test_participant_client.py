"""The participant daemon against a coordinator that is not there yet, and its prompt stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from inproc_consortium import (
    ORGS,
    RPC_TIMEOUT_S,
    ConsortiumPki,
    DaemonThread,
    free_port,
    initial_weights,
    shift_job_spec,
    target_of,
    wait_for_job,
)

from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.config import BackoffSection
from fedsilo.v1 import fedsilo_pb2 as pb

STOP_WITHIN_S = 2.0


def wait_for_failed_connection(channel: grpc.Channel) -> None:
    """Block until the channel reports TRANSIENT_FAILURE: its owner dialled and nobody answered."""
    failed = threading.Event()

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            failed.set()

    channel.subscribe(on_state, try_to_connect=False)
    try:
        assert failed.wait(RPC_TIMEOUT_S), "the daemon never tried to reach the coordinator"
    finally:
        channel.unsubscribe(on_state)


def test_daemons_reconnect_with_backoff_once_the_coordinator_starts(
    start_test_coordinator: Callable[..., RunningCoordinator],
    run_daemon: Callable[..., DaemonThread],
    pki: ConsortiumPki,
) -> None:
    port = free_port()
    target = target_of(port)
    daemons = [run_daemon(org, target) for org in ORGS]
    for daemon in daemons:
        wait_for_failed_connection(daemon.channel)
    # Refused connections are transient: every daemon is still running and retrying.
    assert all(d.thread.is_alive() and not d.errors for d in daemons)

    start_test_coordinator(port)
    with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
        wait_for(
            lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
            30,
            "the daemons to reconnect and register",
            interval=0.02,
        )
        job_id = admin.create_job(shift_job_spec(num_rounds=2), initial_weights()).job_id
        admin.start_job(job_id)
        status = wait_for_job(
            admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the job to complete"
        )

    assert status.model_version == 2
    assert all(sorted(r.contributors) == list(ORGS) for r in status.rounds)
    assert [r.phase for r in status.rounds] == [pb.ROUND_PHASE_COMMITTED] * 2


def test_stop_ends_a_daemon_waiting_in_a_long_poll_promptly(
    target: str,
    admin: AdminClient,
    run_daemon: Callable[..., DaemonThread],
) -> None:
    # The coordinator may hold GetTask open for up to 30 s; stop must not wait for it.
    daemon = run_daemon(ORGS[0], target, poll_seconds=30.0)
    wait_for(
        lambda: [p.org_id for p in admin.list_participants()] == [ORGS[0]],
        10,
        "the daemon to register",
        interval=0.02,
    )

    started = time.monotonic()
    stopped = daemon.stop(timeout=STOP_WITHIN_S)

    assert stopped, "the daemon thread is still alive after its stop event was set"
    assert time.monotonic() - started < STOP_WITHIN_S
    assert daemon.errors == []


def test_stop_ends_a_daemon_waiting_in_backoff_promptly(
    run_daemon: Callable[..., DaemonThread],
) -> None:
    # Nothing listens on the port; after the first refusal the daemon backs off for 15-30 s.
    daemon = run_daemon(
        ORGS[0], target_of(free_port()), backoff=BackoffSection(initial_seconds=30, max_seconds=30)
    )
    wait_for_failed_connection(daemon.channel)
    assert daemon.thread.is_alive()

    started = time.monotonic()
    stopped = daemon.stop(timeout=STOP_WITHIN_S)

    assert stopped, "the daemon thread is still alive after its stop event was set"
    assert time.monotonic() - started < STOP_WITHIN_S
    assert daemon.errors == []
