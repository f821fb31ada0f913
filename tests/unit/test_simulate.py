"""The in-process simulation trains digits-linear over virtual organizations, plain and secure."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from coordinator.domain.privacy import epsilon_after
from fedsilo.cli.main import main
from fedsilo.cli.simulate import (
    SimulationOptions,
    plain_mean,
    secagg_settings,
    simulate,
    task_config,
)
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings

TRAINING = TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1, seed=3)
# Each coordinate of a secure round's mean delta is within 2^-(13+1) of the plain one.
QUANTIZATION_BOUND = 2.0**-14 + 1e-6


def test_weighted_mean_matches_examples_weighting() -> None:
    a = [np.array([1.0, 3.0], dtype=np.float32)]
    b = [np.array([3.0, 5.0], dtype=np.float32)]
    mean = plain_mean([(a, 1), (b, 3)])
    assert mean[0].dtype == np.float32
    np.testing.assert_array_equal(mean[0], np.array([2.5, 4.5], dtype=np.float32))


def test_split_maps_to_task_config() -> None:
    # Label skew is the digits tasks' default skew; the gestures task takes alpha alone.
    assert task_config("dirichlet:0.1", 1, 3, 7) == {
        "partition": 1,
        "num_partitions": 3,
        "seed": 7,
        "alpha": 0.1,
    }
    assert task_config("iid", 0, 2, 0)["skew"] == "iid"
    assert task_config("iid", 0, 2, 0, {"min_partition_size": 10})["min_partition_size"] == 10
    with pytest.raises(ValueError, match="split"):
        task_config("bogus", 0, 2, 0)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "fedprox"])
def test_simulate_is_deterministic_and_learns(strategy: str) -> None:
    options = SimulationOptions(participants=3, rounds=3, strategy=strategy, split="iid", seed=1)
    first = simulate(options)
    second = simulate(options)
    assert len(first.accuracy) == 3
    for x, y in zip(first.weights, second.weights, strict=True):
        assert x.tobytes() == y.tobytes()
    assert first.accuracy[-1] > 0.5


def test_simulate_command_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    code = main(
        [
            "simulate",
            "--participants",
            "4",
            "--rounds",
            "2",
            "--split",
            "dirichlet:0.5",
            "--strategy",
            "fedavgm",
            "--summary-json",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["rounds"] == 2
    assert len(data["accuracy"]) == 2


def test_simulate_scales_to_many_organizations() -> None:
    # digits-linear's 1797 examples make 89 shares of the default 20 at most; 100 of at least 10.
    result = simulate(
        SimulationOptions(
            participants=100,
            rounds=1,
            split="iid",
            seed=2,
            task_options={"min_partition_size": 10},
        )
    )
    assert len(result.accuracy) == 1
    assert all(np.isfinite(w).all() for w in result.weights)


@pytest.mark.parametrize("strategy", ["fedavg", "fedyogi"])
def test_secure_protections_agree_with_each_other_and_with_plain_rounds(strategy: str) -> None:
    def run(protection: Protection) -> list[np.ndarray]:
        options = SimulationOptions(
            participants=3, rounds=1, strategy=strategy, seed=3, training=TRAINING
        )
        return simulate(dataclasses.replace(options, protection=protection)).weights

    plain, secagg, paillier = (run(mode) for mode in Protection)
    # Paillier encrypts the same masked words: the decrypted sum is the very same aggregate.
    for a, b in zip(secagg, paillier, strict=True):
        assert a.tobytes() == b.tobytes()
    if strategy == "fedavg":  # no server step that could scale the quantization error
        for a, b in zip(plain, secagg, strict=True):
            assert np.max(np.abs(a.astype(np.float64) - b)) <= QUANTIZATION_BOUND
    assert any(a.tobytes() != b.tobytes() for a, b in zip(plain, secagg, strict=True))


def test_secure_rounds_survive_dropouts_down_to_the_threshold() -> None:
    # A cohort of 4 has threshold 3 (docs/threat-model.md): one organization may drop each round.
    options = SimulationOptions(
        participants=4, rounds=2, seed=1, training=TRAINING, protection=Protection.SECAGG
    )
    full = simulate(options).weights
    dropped = simulate(dataclasses.replace(options, dropouts=1)).weights
    assert all(np.isfinite(w).all() for w in dropped)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(full, dropped, strict=True))
    with pytest.raises(ValueError, match="threshold"):
        simulate(dataclasses.replace(options, dropouts=2))


@pytest.mark.parametrize("protection", [Protection.NONE, Protection.SECAGG])
def test_dp_noise_is_reproducible_per_seed_and_moves_the_model(protection: Protection) -> None:
    options = SimulationOptions(
        participants=3, rounds=1, seed=5, training=TRAINING, protection=protection
    )
    noisy = dataclasses.replace(options, dp=DifferentialPrivacy(0.5, 1.0, 1e-5))
    first, second = simulate(noisy).weights, simulate(noisy).weights
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second, strict=True))
    reseeded = simulate(dataclasses.replace(noisy, seed=6)).weights
    assert any(a.tobytes() != b.tobytes() for a, b in zip(first, reseeded, strict=True))
    # The clipped update has norm at most 0.5; noise of std 1.0 * 0.5 moves it much further.
    base = simulate(dataclasses.replace(options, rounds=1)).weights
    moved = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(first, base)))
    assert moved > 1.0


def test_default_secure_settings_fit_the_bit_budget_of_the_cohort() -> None:
    assert secagg_settings(3).max_participants == 16
    assert secagg_settings(3).max_weight == 8192
    large = secagg_settings(100)
    assert large.max_participants == 100 and not large.problems()
    assert large.max_weight < 8192


def test_simulate_command_takes_protection_and_dp_flags(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    code = main(
        [
            "simulate",
            "--participants",
            "3",
            "--rounds",
            "1",
            "--protection",
            "secagg",
            "--dp-clip",
            "1.0",
            "--dp-noise-multiplier",
            "0.3",
            "--summary-json",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["rounds"] == 1
    with pytest.raises(SystemExit):
        main(["simulate", "--dp-clip", "1.0"])


def test_an_epsilon_budget_stops_the_simulation_as_it_stops_a_job() -> None:
    dp = DifferentialPrivacy(clip=0.5, noise_multiplier=4.0, delta=1e-5, epsilon_budget=8.0)
    options = SimulationOptions(participants=3, rounds=30, seed=1, training=TRAINING, dp=dp)
    result = simulate(options)
    assert 1 <= len(result.accuracy) < 30
    assert result.epsilon is not None and result.epsilon <= 8.0
    assert epsilon_after(dp, len(result.accuracy) + 1) > 8.0
    with pytest.raises(ValueError, match="budget"):
        simulate(dataclasses.replace(options, dp=dataclasses.replace(dp, noise_multiplier=1.1)))
    assert (
        simulate(dataclasses.replace(options, rounds=1, dp=DifferentialPrivacy())).epsilon is None
    )
