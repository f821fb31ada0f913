"""A revocation during a paillier job rotates the job's key over real gRPC, and the job goes on.

Three daemons run round 1 of a paillier job; the consortium CA then revokes org-c and the
admin publishes the new membership list. Before round 2 opens, the coordinator deals key
generation 1 among org-a and org-b, who take it because the signed list shows the old key
held by a revoked organization. Round 2 commits without org-c under the new key; each daemon
decrypts version 1 with the retired key and version 2 with the new one, and reports the model
the two rounds make.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inproc_consortium import ORGS, ConsortiumPki, DaemonThread, initial_weights, wait_for_job
from integration_shift_task import ORG_SETTINGS
from test_membership_grpc import signed_list
from test_paillier_grpc import BOUND, SHIFT, paillier_spec

from coordinator.domain.jobs import Job
from coordinator.persistence.store import Transaction
from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.codec import decode_tensors
from fedsilo.config import AcceptSection
from fedsilo.paillier_versions import PaillierVersion
from fedsilo.protection import Protection
from fedsilo.v1 import fedsilo_pb2 as pb


def _shift(orgs: tuple[str, ...]) -> float:
    """The weighted mean offset a round of ``orgs`` moves every weight by."""
    examples = sum(float(ORG_SETTINGS[o]["examples"]) for o in orgs)
    moved = sum(float(ORG_SETTINGS[o]["offset"]) * float(ORG_SETTINGS[o]["examples"]) for o in orgs)
    return moved / examples


@pytest.mark.slow  # two key ceremonies and two paillier rounds: about 7 s
def test_a_revocation_rotates_the_key_and_the_next_round_commits_without_the_revoked_org(
    pki: ConsortiumPki,
    admin: AdminClient,
    target: str,
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Round 2 waits until the test has revoked org-c: the revocation falls between the rounds.
    engine: Any = coordinator.service.driver._engines[Protection.PAILLIER]
    honest_select = engine.select_cohort
    revoked = threading.Event()

    def after_revocation(
        tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        if tx.list_rounds(job.job_id) and not revoked.is_set():
            return None
        result: tuple[str, ...] | None = honest_select(tx, job, live, now)
        return result

    monkeypatch.setattr(engine, "select_cohort", after_revocation)
    # Two organizations are enough for a round once org-c is gone.
    accept = AcceptSection(min_cohort=2)
    daemons = {org: run_daemon(org, target, poll_seconds=0.5, accept=accept) for org in ORGS}
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = paillier_spec()
    spec.min_participants = 2
    initial = initial_weights()
    job_id = admin.create_job(spec, initial).job_id
    admin.start_job(job_id)
    first = wait_for_job(
        admin, job_id, lambda s: s.model_version == 1, "round 1 to commit under key 0", 120
    )
    assert sorted(first.rounds[0].contributors) == list(ORGS)

    assert admin.publish_membership_list(signed_list(pki, 2, ORGS[:2], ORGS[2:])) == (2, False)
    revoked.set()

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == 2]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports == 2

    status = wait_for_job(admin, job_id, done, "round 2 to commit without org-c", 120)
    assert [r.phase for r in status.rounds] == [pb.ROUND_PHASE_COMMITTED] * 2
    assert (
        sorted(status.rounds[1].cohort)
        == sorted(status.rounds[1].contributors)
        == ["org-a", "org-b"]
    )

    # Each version says its key generation, and the participants rebuilt both: version 1 moved
    # every weight by the three organizations' mean offset, version 2 by org-a and org-b's.
    generations = []
    for version in (1, 2):
        _, header, payload = coordinator.service.read_model(job_id, version, encrypted=True)
        record, _ = decode_tensors(header, payload)
        generations.append(PaillierVersion.from_bytes(record.tobytes()).generation)
    assert generations == [0, 1]
    expected = [w + np.float32(SHIFT + _shift(("org-a", "org-b"))) for w in initial]
    loss = float(np.mean([np.abs(w).mean() for w in expected]))
    metrics = next(m for m in status.metrics if m.version == 2)
    assert abs(metrics.loss - loss) <= 2 * BOUND

    # org-c's daemon ended when the coordinator refused it for good (it was revoked).
    revoked_daemon = daemons["org-c"]
    assert revoked_daemon.stop()
    assert [type(e).__name__ for e in revoked_daemon.errors] == ["Revoked"]
    revoked_daemon.errors.clear()
    for daemon in daemons.values():
        assert daemon.stop()
    # The honest daemons moved to generation 1 and kept generation 0's key to read version 1;
    # org-c, revoked, never got the new key.
    for org in ORGS:
        state = json.loads(
            (tmp_path / "participants" / org / "paillier" / job_id / "job.json").read_text()
        )
        if org == "org-c":
            assert state["generation"] == 0 and state["retired"] == []
        else:
            assert state["generation"] == 1 and state["private_key"]
            assert [item["generation"] for item in state["retired"]] == [0]
            assert state["retired"][0]["private_key"] != state["private_key"]
