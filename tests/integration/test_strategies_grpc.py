"""FedAdam jobs over real gRPC under secagg and paillier: the server step where the mean is.

Three real participant daemons (threads) run the shift task, whose round mean is exactly the
base model + 0.4 (up to quantization). Under ``secagg`` the coordinator runs FedAdam's step on
the unmasked mean and keeps the optimizer state beside each version; under ``paillier`` every
organization runs it on the decrypted mean, and all must hold the same model bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job

from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.convert import strategy_parameters_from_pb
from fedsilo.strategies import StrategyParameters, apply_server_step, load_strategy
from fedsilo.v1 import fedsilo_pb2 as pb

LEVELS_BITS = 12
ROUNDS = 3
SHIFT = 0.4  # (10 * 1 + 30 * 2 - 60 * 0.5) / 100
ADAM = StrategyParameters(server_learning_rate=0.05, beta1=0.9, beta2=0.99, tau=1e-3)
# FedAdam moves each weight by about eta per round here (m / sqrt(v) ~ 1 while delta is
# constant): far from FedAvg's 0.4, so the two are told apart.
QUANTIZATION = math.ldexp(1.0, -(LEVELS_BITS + 1)) + 1e-5


def adam_spec(protection: pb.Protection.ValueType) -> pb.JobSpec:
    spec = shift_job_spec(num_rounds=ROUNDS)
    spec.protection = protection
    spec.phase_timeout_seconds = 30
    spec.max_failed_rounds = 0
    spec.secagg.CopyFrom(pb.SecAggSettings(clip=2.0, levels_bits=LEVELS_BITS))
    spec.algorithm = "fedadam"
    spec.strategy.CopyFrom(pb.StrategyParameters(server_learning_rate=0.05, tau=1e-3))
    return spec


def models_of(
    algorithm: str, parameters: StrategyParameters
) -> list[list[npt.NDArray[np.float32]]]:
    """Versions 0..ROUNDS of a strategy when every round's mean is the base + SHIFT exactly."""
    strategy = load_strategy(algorithm, parameters)
    models = [initial_weights()]
    state = None
    for _ in range(ROUNDS):
        base = models[-1]
        mean = [(w.astype(np.float64) + SHIFT).astype(np.float32) for w in base]
        following, state = apply_server_step(strategy, base, mean, state)
        models.append(following)
    return models


def mean_abs(weights: list[npt.NDArray[np.float32]]) -> float:
    """The shift task's evaluation loss of a model."""
    return float(np.mean([np.abs(w).mean() for w in weights]))


def run_job(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    protection: pb.Protection.ValueType,
    spec: pb.JobSpec | None = None,
) -> tuple[str, pb.JobStatus]:
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5)
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = adam_spec(protection) if spec is None else spec
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == ROUNDS]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports == 3

    status = wait_for_job(admin, job_id, done, f"the {spec.algorithm} job to complete", 180)
    for round_ in status.rounds:
        assert round_.phase == pb.ROUND_PHASE_COMMITTED, round_.abort_reason
        assert sorted(round_.contributors) == list(ORGS)
    assert status.spec.algorithm == spec.algorithm
    return job_id, status


def test_a_secagg_job_with_fedadam_steps_at_the_coordinator(
    admin: AdminClient, target: str, run_daemon: Callable[..., DaemonThread]
) -> None:
    job_id, status = run_job(admin, target, run_daemon, pb.PROTECTION_SECAGG)
    # The job keeps its strategy with every default filled in.
    assert status.spec.strategy.beta1 == 0.9 and status.spec.strategy.beta2 == 0.99
    assert not status.spec.strategy.HasField("proximal_mu")
    expected = models_of("fedadam", ADAM)
    for version in range(1, ROUNDS + 1):
        got_version, got = admin.download_model(job_id, version)
        assert got_version == version
        for have, want in zip(got, expected[version], strict=True):
            np.testing.assert_allclose(have, want, rtol=0, atol=version * QUANTIZATION)
        # Not FedAvg: FedAvg would have moved every weight by 0.4 per round.
        fedavg = initial_weights()[0] + np.float32(version * SHIFT)
        assert np.max(np.abs(got[0] - fedavg)) > 0.1
        metrics = next(m for m in status.metrics if m.version == version)
        assert abs(metrics.loss - mean_abs(expected[version])) <= version * QUANTIZATION


@pytest.mark.slow  # paillier rounds of three daemons: about 4 s
def test_a_paillier_job_with_fedadam_gives_every_organization_the_same_model(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
) -> None:
    job_id, status = run_job(admin, target, run_daemon, pb.PROTECTION_PAILLIER)
    expected = models_of("fedadam", ADAM)
    participants = tmp_path / "participants"
    for version in range(1, ROUNDS + 1):
        kept = {
            org: list(participants.joinpath(org).rglob(f"paillier/{job_id}/models/{version}.bin"))
            for org in ORGS
        }
        assert all(len(paths) == 1 for paths in kept.values()), kept
        digests = {
            org: hashlib.sha256(paths[0].read_bytes()).hexdigest() for org, paths in kept.items()
        }
        assert len(set(digests.values())) == 1, f"version {version}: {digests}"
        states = {
            org: participants.joinpath(org).rglob(f"paillier/{job_id}/optimizer/{version}.bin")
            for org in ORGS
        }
        state_bytes = {org: [p.read_bytes() for p in paths] for org, paths in states.items()}
        assert all(len(b) == 1 for b in state_bytes.values())
        assert len({b[0] for b in state_bytes.values()}) == 1
        # Each organization evaluated the model it rebuilt: FedAdam's, not FedAvg's.
        metrics = next(m for m in status.metrics if m.version == version)
        assert metrics.reports == 3
        assert abs(metrics.loss - mean_abs(expected[version])) <= version * QUANTIZATION
        fedavg = [w + np.float32(version * SHIFT) for w in initial_weights()]
        assert abs(metrics.loss - mean_abs(fedavg)) > 0.05


STRATEGY_PARAMETERS = {
    "fedavg": pb.StrategyParameters(),
    "fedavgm": pb.StrategyParameters(server_learning_rate=1.0, server_momentum=0.9),
    "fedadam": pb.StrategyParameters(server_learning_rate=0.05, tau=1e-3),
    "fedyogi": pb.StrategyParameters(server_learning_rate=0.05, tau=1e-3),
    "fedadagrad": pb.StrategyParameters(server_learning_rate=0.05, tau=1e-3),
    "fedprox": pb.StrategyParameters(proximal_mu=0.1),
}


@pytest.mark.slow  # twelve jobs of three rounds with three daemons each: about 30 s
@pytest.mark.parametrize(
    "protection", [pb.PROTECTION_SECAGG, pb.PROTECTION_PAILLIER], ids=["secagg", "paillier"]
)
@pytest.mark.parametrize("algorithm", sorted(STRATEGY_PARAMETERS))
def test_every_built_in_strategy_completes_a_secure_and_a_paillier_job(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    algorithm: str,
    protection: pb.Protection.ValueType,
) -> None:
    spec = adam_spec(protection)
    spec.algorithm = algorithm
    spec.strategy.CopyFrom(STRATEGY_PARAMETERS[algorithm])
    _, status = run_job(admin, target, run_daemon, protection, spec)
    # The server step the job ran is this strategy's, with the defaults the job filled in.
    expected = models_of(algorithm, strategy_parameters_from_pb(status.spec.strategy))
    for version in range(1, ROUNDS + 1):
        metrics = next(m for m in status.metrics if m.version == version)
        assert metrics.reports == len(ORGS)
        assert abs(metrics.loss - mean_abs(expected[version])) <= version * QUANTIZATION
        fedavg = [w + np.float32(version * SHIFT) for w in initial_weights()]
        if abs(mean_abs(expected[version]) - mean_abs(fedavg)) > 0.05:
            # Told apart from FedAvg where the strategy moves the model elsewhere.
            assert abs(metrics.loss - mean_abs(fedavg)) > 0.05
