"""Tests for the Keras ``digits`` task (TensorFlow-marked) and its FedAvg accuracy bar."""

from __future__ import annotations

import pytest

from examples.digits.central import central_baseline
from examples.digits.simulate import organization_configs, run_fedavg
from examples.digits.task import default_rounds, default_settings, task
from fedsilo.tasks import Task

pytestmark = pytest.mark.tf

EXPECTED_SHAPES = [(64, 256), (256,), (256, 10), (10,)]


def test_digits_task_trains_and_evaluates_float32_weights() -> None:
    import numpy as np

    assert isinstance(task, Task) and task.name == "digits"
    data = task.load_data({"partition": 0, "num_partitions": 3})
    initial = task.initial_weights(0)
    assert [w.shape for w in initial] == EXPECTED_SHAPES
    assert all(w.dtype == np.float32 for w in initial)

    untrained = task.evaluate(initial, data)
    result = task.train(initial, data, default_settings)
    trained = task.evaluate(result.weights, data)
    assert [w.shape for w in result.weights] == EXPECTED_SHAPES
    assert all(w.dtype == np.float32 and w.flags.c_contiguous for w in result.weights)
    assert result.num_examples == data.num_train
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert trained.num_examples == data.num_test
    assert untrained.accuracy < 0.3
    assert trained.accuracy > 0.85 and trained.loss < untrained.loss


@pytest.mark.slow
def test_fedavg_reaches_the_accuracy_bar_with_the_default_settings() -> None:
    # The demo's promise: 3 label-skewed organizations, default settings, seed 0.
    configs = organization_configs(3, seed=0)
    datasets = [task.load_data(config) for config in configs]
    federated = run_fedavg(task, datasets, default_settings, default_rounds)
    central = central_baseline(task, configs, default_settings, default_rounds)
    assert federated.evaluation.accuracy >= 0.90
    assert central.accuracy - federated.evaluation.accuracy <= 0.03
