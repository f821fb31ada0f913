"""Secagg and paillier jobs with differential privacy over real gRPC: clipped, noisy, unweighted
rounds, the spent epsilon in GetJob, and the budget stopping the job
(docs/differential-privacy.md).

Three real participant daemons (threads) run the shift task: organization i moves every one of
the 15 weights by its offset (1, 2, -0.5), an update of L2 norm ``|offset| * sqrt(15)``. With
``clip = 1`` every update is clipped to ``sign(offset) / sqrt(15)`` per weight, so the noiseless
unweighted mean moves each weight by ``(1 + 1 - 1) / (3 sqrt(15))``; FedAvg would move it by 0.4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job

from coordinator.domain.privacy import epsilon_after
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.v1 import fedsilo_pb2 as pb

pytest.importorskip("dp_accounting", reason="the coordinator's accountant needs the dp extra")

CLIP, MULTIPLIER, DELTA = 1.0, 0.01, 1e-5
CLIPPED_MEAN = 1.0 / (3 * math.sqrt(15))
# Noise of the mean per weight: z C sqrt(n / t) / n with n = 3 contributions and t = 2.
NOISE_STD = MULTIPLIER * CLIP * math.sqrt(3 / 2) / 3


@pytest.mark.slow  # rounds until the budget is spent: 1-3 s each
@pytest.mark.parametrize(
    "protection", [pb.PROTECTION_SECAGG, pb.PROTECTION_PAILLIER], ids=["secagg", "paillier"]
)
def test_a_dp_job_releases_noisy_clipped_means_and_stops_at_its_budget(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    protection: pb.Protection.ValueType,
) -> None:
    unbounded = DifferentialPrivacy(CLIP, MULTIPLIER, DELTA)
    budget = (epsilon_after(unbounded, 2) + epsilon_after(unbounded, 3)) / 2
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5)
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = shift_job_spec(num_rounds=4)
    spec.protection = protection
    spec.phase_timeout_seconds = 30
    spec.max_failed_rounds = 0
    spec.secagg.CopyFrom(pb.SecAggSettings(clip=2.0, levels_bits=12))
    spec.dp.CopyFrom(
        pb.DifferentialPrivacy(
            clip=CLIP, noise_multiplier=MULTIPLIER, delta=DELTA, epsilon_budget=budget
        )
    )
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)

    status = wait_for_job(
        admin, job_id, lambda s: s.state == pb.JOB_STATE_COMPLETED, "the budget to stop it", 180
    )
    assert status.model_version == 2  # of 4: the third round would overspend the budget
    assert [r.phase for r in status.rounds] == [pb.ROUND_PHASE_COMMITTED] * 2
    assert status.failure_reason.startswith("stopped by the privacy budget: after 2 released")
    assert status.HasField("privacy")
    assert (status.privacy.rounds, status.privacy.delta) == (2, DELTA)
    assert status.privacy.epsilon == pytest.approx(epsilon_after(unbounded, 2))
    assert status.privacy.epsilon <= status.privacy.epsilon_budget == pytest.approx(budget)

    _, base = admin.download_model(job_id, 0)
    if protection == pb.PROTECTION_PAILLIER:
        # The model exists only at the organizations; each evaluated the version it rebuilt.
        # The shift task's loss is the mean absolute weight, the same at all three.
        losses = {m.version: m.loss for m in status.metrics if m.reports == 3}
        assert 1 in losses
        noiseless = np.mean([np.abs(w + CLIPPED_MEAN).mean() for w in base])
        assert abs(losses[1] - noiseless) < 6 * NOISE_STD
        fedavg = np.mean([np.abs(w + 0.4).mean() for w in base])
        assert abs(losses[1] - fedavg) > 0.05
        return
    _, first = admin.download_model(job_id, 1)
    moved = np.concatenate([(f - b).ravel() for f, b in zip(first, base, strict=True)])
    assert moved.size == 15
    # Unweighted and clipped (FedAvg would be 0.4), within six deviations of the mean's noise.
    assert abs(float(np.mean(moved)) - CLIPPED_MEAN) < 6 * NOISE_STD / math.sqrt(15)
    # And noisy: a noiseless round moves every weight alike (up to 2^-13 of quantization).
    assert float(np.std(moved)) > NOISE_STD / 4
