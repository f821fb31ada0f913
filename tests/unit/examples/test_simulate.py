"""Tests for the in-process FedAvg simulation and the central baseline (numpy task only)."""

from __future__ import annotations

import numpy as np
import pytest

from examples.digits.central import central_baseline
from examples.digits.simulate import (
    federated_average,
    main,
    organization_configs,
    pooled_evaluation,
    round_settings,
    run_fedavg,
)
from examples.synthetic.task import default_rounds, default_settings, task
from fedsilo.tasks import EvalResult, TrainingSettings, TrainResult


def test_federated_average_weights_by_examples() -> None:
    results = [
        TrainResult(
            weights=[np.full((2, 2), 1.0, np.float32), np.zeros(3, np.float32)],
            num_examples=1,
            loss=0.0,
        ),
        TrainResult(
            weights=[np.full((2, 2), 4.0, np.float32), np.ones(3, np.float32)],
            num_examples=3,
            loss=0.0,
        ),
    ]
    averaged = federated_average(results)
    np.testing.assert_allclose(averaged[0], np.full((2, 2), 3.25))
    np.testing.assert_allclose(averaged[1], np.full(3, 0.75))
    assert all(w.dtype == np.float32 for w in averaged)


def test_federated_average_refuses_mismatched_or_empty_updates() -> None:
    one = TrainResult(weights=[np.zeros(2, np.float32)], num_examples=1, loss=0.0)
    two = TrainResult(weights=[np.zeros(2, np.float32)] * 2, num_examples=1, loss=0.0)
    with pytest.raises(ValueError):
        federated_average([one, two])
    broadcastable = TrainResult(weights=[np.zeros(1, np.float32)], num_examples=1, loss=0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        federated_average([one, broadcastable])
    with pytest.raises(ValueError):
        federated_average([TrainResult(weights=one.weights, num_examples=0, loss=0.0)])


def test_pooled_evaluation_is_the_accuracy_on_the_union() -> None:
    pooled = pooled_evaluation(
        [
            EvalResult(num_examples=10, loss=1.0, accuracy=0.5),
            EvalResult(num_examples=30, loss=2.0, accuracy=1.0),
        ]
    )
    assert pooled == EvalResult(num_examples=40, loss=1.75, accuracy=0.875)


def test_round_settings_change_the_seed_only() -> None:
    base = TrainingSettings(local_epochs=2, batch_size=8, learning_rate=0.1, seed=1)
    seeds = {round_settings(base, r).seed for r in range(5)}
    assert len(seeds) == 5
    assert round_settings(base, 3).learning_rate == base.learning_rate


def test_fedavg_matches_central_training_on_skewed_organizations() -> None:
    configs = organization_configs(3, seed=0)
    datasets = [task.load_data(config) for config in configs]
    run = run_fedavg(task, datasets, default_settings, default_rounds)
    central = central_baseline(task, configs, default_settings, default_rounds)
    assert run.evaluation.num_examples == central.num_examples == sum(d.num_test for d in datasets)
    assert len(run.round_seconds) == default_rounds
    assert run.evaluation.accuracy >= 0.9
    assert central.accuracy - run.evaluation.accuracy <= 0.03
    # And federation actually trained something: one round is clearly worse than the full run.
    one_round = run_fedavg(task, datasets, default_settings, 1)
    assert one_round.evaluation.loss > run.evaluation.loss


def test_simulate_cli_prints_both_accuracies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", "digits-linear", "--seed", "1", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "federated_acc=" in out and "central_acc=" in out and "seed=1" in out
