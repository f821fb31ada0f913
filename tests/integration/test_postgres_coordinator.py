"""A whole job with the coordinator's state in a real PostgreSQL server, then resumed from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
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
from sqlalchemy import create_engine, text

from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.postgres


def test_job_runs_on_postgresql_and_survives_a_coordinator_restart(
    start_test_coordinator: Callable[..., RunningCoordinator],
    run_daemon: Callable[..., DaemonThread],
    pki: ConsortiumPki,
    fresh_postgres_url: str,
    tmp_path: Path,
) -> None:
    port, data_dir = free_port(), tmp_path / "pg-coordinator"
    first = start_test_coordinator(port, database_url=fresh_postgres_url, data_dir=data_dir)
    target = target_of(first.port)
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5)
    with AdminClient(target, pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
        wait_for(lambda: len(admin.list_participants()) == 3, RPC_TIMEOUT_S, "three members")
        job_id = admin.create_job(shift_job_spec(num_rounds=4), initial_weights()).job_id
        admin.start_job(job_id)
        wait_for_job(admin, job_id, lambda s: s.model_version >= 2, "two committed rounds")
    first.stop(grace=1)

    # The same command again: same port, same database, same blob store.
    second = start_test_coordinator(port, database_url=fresh_postgres_url, data_dir=data_dir)
    with AdminClient(target_of(second.port), pki.admin_tls(), timeout=RPC_TIMEOUT_S) as admin:
        status = wait_for_job(
            admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "completion", 60
        )
    committed = [r for r in status.rounds if r.phase == pb.ROUND_PHASE_COMMITTED]
    assert [r.base_version for r in committed] == [0, 1, 2, 3]
    assert all(sorted(r.contributors) == list(ORGS) for r in committed)

    engine = create_engine(fresh_postgres_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(
                text("SELECT version FROM model_versions WHERE job_id = :j ORDER BY 1"),
                {"j": job_id},
            ).scalars()
            assert list(versions) == [0, 1, 2, 3, 4]
            duplicates = conn.execute(
                text(
                    "SELECT COUNT(*) FROM (SELECT round_id, org_id, phase FROM submissions "
                    "GROUP BY 1, 2, 3 HAVING COUNT(*) > 1) d"
                )
            ).scalar_one()
            assert duplicates == 0
    finally:
        engine.dispose()
