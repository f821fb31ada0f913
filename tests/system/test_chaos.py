"""Chaos: a secure job on PostgreSQL while a driver kills and partitions at random (R5, R13).

Four organizations and the coordinator run in network namespaces the test creates, with the
coordinator's PostgreSQL beside it. While the job runs, a seeded driver SIGKILLs the coordinator
or an organization at random times (and starts it again), and now and then cuts an
organization's link for a few seconds. At the end:

- the job completed, and every committed version is FedAvg over exactly the recorded
  contributors of its round, trained from the version before it (the oracle of the dropout
  tests, within the quantization bound);
- nothing acknowledged is lost: every masked input an organization saw acknowledged in a round
  that committed is among that round's contributors;
- no process we started is left running and no temporary file is left behind.

``make test`` runs a short form; ``make chaos`` a long one (``FEDSILO_CHAOS_ROUNDS``,
``FEDSILO_CHAOS_SEED`` to replay a run). The faults injected and survived are printed in the
test session's summary (tests/system/conftest.py).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from netns import CHAOS_REPORT_KEY, NetConsortium
from secure_jobs import BASE, BOUND, CLIP, LINEAR_TASK, SEED, TASK, TRAINING, secure_spec

from fedsilo.tasks import TrainingSettings
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.postgres]

ORGS = ["org-1", "org-2", "org-3", "org-4"]
ROUNDS = int(os.environ.get("FEDSILO_CHAOS_ROUNDS", "8"))
SEED_OF_RUN = int(
    os.environ.get("FEDSILO_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 30)))
)
# The driver waits this long (uniformly drawn) between faults, and injects one as each round
# opens; a partition lasts this long.
FAULT_GAP_S = (1.0, 4.0)
PARTITION_S = (1.0, 6.0)
DEADLINE_S = 60.0 + 45.0 * ROUNDS


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[NetConsortium]:
    configs = {org: {"partition": i, "num_partitions": len(ORGS)} for i, org in enumerate(ORGS)}
    group = NetConsortium(tmp_path, ORGS, LINEAR_TASK, configs, {"rpc_timeout_seconds": 3})
    group.create_network()
    try:
        yield group
    finally:
        try:
            group.stop_all()
            group.stop_postgres()
        finally:
            group.delete_network()


def expected_version(
    base: list[np.ndarray], round_number: int, contributors: list[str]
) -> list[np.ndarray]:
    """FedAvg of exactly ``contributors``, each training ``base`` as its daemon does."""
    settings = TrainingSettings(
        local_epochs=TRAINING.local_epochs,
        batch_size=TRAINING.batch_size,
        learning_rate=TRAINING.learning_rate,
        seed=SEED * 1_000_003 + round_number,
    )
    total = 0
    summed = [np.zeros(w.shape, dtype=np.float64) for w in base]
    for org in contributors:
        data = TASK.load_data({"partition": ORGS.index(org), "num_partitions": len(ORGS)})
        result = TASK.train(base, data, settings)
        for acc, new, old in zip(summed, result.weights, base, strict=True):
            acc += np.clip(np.asarray(new, np.float64) - old, -CLIP, CLIP) * result.num_examples
        total += result.num_examples
    return [(old + acc / total).astype(np.float32) for old, acc in zip(base, summed, strict=True)]


def acknowledged_inputs(group: NetConsortium, job_id: str, org: str) -> set[int]:
    """The rounds in which ``org``'s daemons saw their masked input acknowledged."""
    pattern = re.compile(
        rf"job={re.escape(job_id)} round=(\d+) phase=inputs org={re.escape(org)} "
        r"answer acknowledged"
    )
    return {int(number) for number in pattern.findall(group.logs(org))}


def test_a_secure_job_survives_random_kills_and_partitions(
    chaos: NetConsortium, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(SEED_OF_RUN)
    # Printed in the session's summary (conftest.py), also from an xdist worker.
    report: list[str] = []
    request.node.user_properties.append((CHAOS_REPORT_KEY, report))
    report.append(f"chaos: seed {SEED_OF_RUN}, {ROUNDS} rounds, {len(ORGS)} organizations")
    coordinator_settings = {
        "database": {"url": chaos.start_postgres()},
        "limits": {"liveness_seconds": 20},
    }
    chaos.start_coordinator(coordinator_settings)
    for org in ORGS:
        chaos.start_participant(org)
    spec = secure_spec(
        pb.PROTECTION_SECAGG, min_participants=3, phase_timeout=5.0, round_timeout=30.0
    )
    spec.num_rounds = ROUNDS
    spec.max_failed_rounds = 1000
    job_id = chaos.create_job(spec, BASE)

    faults: Counter[str] = Counter()
    cut: dict[str, float] = {}  # organization -> when its link comes back
    deadline = time.monotonic() + DEADLINE_S
    next_fault = time.monotonic() + rng.uniform(*FAULT_GAP_S)
    status = chaos.status(job_id)
    rounds_seen = 0
    while status.state == pb.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline, f"the job did not end in {DEADLINE_S:.0f} s"
        now = time.monotonic()
        for org, until in list(cut.items()):
            if now >= until:
                chaos.heal(org)
                del cut[org]
        # A fault every few seconds, and one as each new round shows up: however fast the job
        # runs, every round meets at least one.
        new_round = len(status.rounds) > rounds_seen
        rounds_seen = len(status.rounds)
        if now >= next_fault or new_round:
            kind = rng.choice(
                ["kill coordinator", "kill organization", "partition", "kill database"]
            )
            if kind == "kill database":
                chaos.kill_postgres()  # and start it again: the coordinator keeps running
            elif kind == "kill coordinator":
                chaos.processes["coordinator"].popen.kill()
                chaos.start_coordinator(coordinator_settings)  # waits until it serves again
            elif kind == "kill organization":
                org = rng.choice(ORGS)
                chaos.processes[org].popen.kill()
                chaos.start_participant(org)
            else:
                org = rng.choice([o for o in ORGS if o not in cut])
                chaos.partition(org)
                cut[org] = now + rng.uniform(*PARTITION_S)
            faults[kind] += 1
            next_fault = time.monotonic() + rng.uniform(*FAULT_GAP_S)
        status = chaos.status(job_id)  # an admin call: about a second, the loop's pace
    for org in list(cut):
        chaos.heal(org)

    committed = [r for r in status.rounds if r.phase == pb.ROUND_PHASE_COMMITTED]
    aborted = [r for r in status.rounds if r.phase == pb.ROUND_PHASE_ABORTED]
    report.append(
        f"chaos: faults injected: {dict(faults) or 'none'}; "
        f"{len(committed)} rounds committed, {len(aborted)} aborted"
    )
    assert status.state == pb.JOB_STATE_COMPLETED, status.failure_reason
    assert len(committed) == ROUNDS

    # The oracle: each committed version from the one before it and exactly its contributors.
    versions = chaos.models(job_id)
    worst = 0.0
    for round_status in committed:
        base = versions[round_status.base_version]
        got = versions[round_status.base_version + 1]
        contributors = sorted(round_status.contributors)
        assert len(contributors) >= round_status.threshold
        want = expected_version(base, round_status.number, contributors)
        for tensor, expected in zip(got, want, strict=True):
            error = float(np.max(np.abs(tensor.astype(np.float64) - expected)))
            worst = max(worst, error)
            assert error <= BOUND, (round_status.number, contributors)

    # Nothing acknowledged is lost.
    committed_numbers = {r.number: set(r.contributors) for r in committed}
    for org in ORGS:
        for number in acknowledged_inputs(chaos, job_id, org) & committed_numbers.keys():
            assert org in committed_numbers[number], (org, number)
    report.append(f"chaos: oracle holds for every committed round (largest error {worst:.2e})")

    chaos.stop_all()
    assert all(p.popen.poll() is not None for p in chaos.processes.values())
    # A database outage is two log lines (gone, back), not a traceback every tick.
    assert "Traceback" not in chaos.logs("coordinator")
    leftovers = [
        p for p in chaos.root.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")
    ]
    assert not leftovers, leftovers
