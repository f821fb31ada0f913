"""The in-process simulation trains digits-linear over virtual organizations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsilo.cli.main import main
from fedsilo.cli.simulate import SimulationOptions, plain_mean, simulate, task_config


def test_weighted_mean_matches_examples_weighting() -> None:
    a = [np.array([1.0, 3.0], dtype=np.float32)]
    b = [np.array([3.0, 5.0], dtype=np.float32)]
    mean = plain_mean([(a, 1), (b, 3)])
    assert mean[0].dtype == np.float32
    np.testing.assert_array_equal(mean[0], np.array([2.5, 4.5], dtype=np.float32))


def test_split_maps_to_task_config() -> None:
    assert task_config("dirichlet:0.1", 1, 3, 7) == {
        "partition": 1,
        "num_partitions": 3,
        "seed": 7,
        "skew": "label",
        "alpha": 0.1,
    }
    assert task_config("iid", 0, 2, 0)["skew"] == "iid"
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
    # digits-linear's 1797 examples split into at most 89 shares of the 20 each organization needs.
    result = simulate(SimulationOptions(participants=89, rounds=1, split="iid", seed=2))
    assert len(result.accuracy) == 1
    assert all(np.isfinite(w).all() for w in result.weights)
