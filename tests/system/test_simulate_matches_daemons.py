"""``fedsilo simulate`` gives the same final model bits as real coordinator and participant
processes running the same job with the same seeds, plain and under secure aggregation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from secure_jobs import SEED, TRAINING, secure_spec, start_job, wait_for_end

from fedsilo.cli.simulate import SimulationOptions, simulate
from fedsilo.protection import Protection
from fedsilo.v1 import fedsilo_pb2 as pb

pytestmark = pytest.mark.system

ROUNDS = 2


@pytest.mark.parametrize(
    ("protection", "strategy", "seeded"),
    [
        (Protection.NONE, "fedavg", False),
        (Protection.NONE, "fedadam", False),
        (Protection.SECAGG, "fedavg", True),
        (Protection.SECAGG, "fedadam", False),
    ],
)
def test_job_matches_simulation(
    consortium: Any, protection: Protection, strategy: str, seeded: bool
) -> None:
    """``seeded``: version 0 is built by the daemons from the job's seed (as ``job create``
    makes jobs), not sent with the job; the simulation builds it from the same seed."""
    consortium.start_coordinator()
    for org in consortium.orgs:
        consortium.start_participant(org)
    spec = secure_spec(
        pb.PROTECTION_SECAGG if protection is Protection.SECAGG else pb.PROTECTION_NONE
    )
    spec.num_rounds = ROUNDS
    spec.algorithm = strategy
    job_id = start_job(consortium, spec, seeded=seeded)
    status = wait_for_end(consortium, job_id)
    assert status.state == pb.JOB_STATE_COMPLETED
    with consortium.admin() as admin:
        version, real = admin.download_model(job_id, -1)
    assert version == ROUNDS

    # The consortium's task_config is {partition, num_partitions}: label skew, alpha 0.5, seed 0.
    simulated = simulate(
        SimulationOptions(
            task="digits-linear",
            participants=len(consortium.orgs),
            rounds=ROUNDS,
            strategy=strategy,
            split="dirichlet:0.5",
            seed=SEED,
            data_seed=0,
            training=TRAINING,
            protection=protection,
        )
    ).weights
    for a, b in zip(real, simulated, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), np.max(np.abs(a.astype(np.float64) - b))
