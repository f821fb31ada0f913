"""Tests for the Keras training runtime (TensorFlow-marked, except the lazy-import check)."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fedsilo.tasks import LocalData, TrainingSettings

REPO_ROOT = Path(__file__).resolve().parents[4]


def _tiny_model(keras: ModuleType) -> Any:
    return keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])


def _separable_data() -> LocalData:
    # Class = index of the largest of the first three features: learnable by a linear model.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = x[:, :3].argmax(axis=1).astype(np.int64)
    return LocalData(x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])


def test_importing_the_runtime_does_not_import_tensorflow() -> None:
    code = (
        "import sys, participant.training as t\n"
        "t.KerasTaskRuntime(lambda keras: None)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.tf
def test_train_evaluate_round_trip_is_deterministic_and_stateless() -> None:
    from participant.training.keras_runtime import KerasTaskRuntime

    runtime = KerasTaskRuntime(_tiny_model)
    data = _separable_data()
    settings = TrainingSettings(local_epochs=5, batch_size=16, learning_rate=0.05, seed=3)

    initial = runtime.initial_weights(7)
    assert [w.shape for w in initial] == [(4, 3), (3,)]
    assert all(w.dtype == np.float32 for w in initial)
    assert all(np.array_equal(a, b) for a, b in zip(initial, runtime.initial_weights(7)))
    assert not np.array_equal(initial[0], runtime.initial_weights(8)[0])

    before = runtime.evaluate(initial, data)
    python_random_state = random.getstate()
    first = runtime.train(initial, data, settings)
    # Seeding Keras must not reset the process-wide Python generator other code relies on.
    assert random.getstate() == python_random_state
    after = runtime.evaluate(first.weights, data)
    assert first.num_examples == 200 and np.isfinite(first.loss)
    assert [w.shape for w in first.weights] == [(4, 3), (3,)]
    assert all(w.dtype == np.float32 for w in first.weights)
    assert after.num_examples == 100
    assert after.loss < before.loss and after.accuracy > 0.85

    # Training on something else in between must not leak optimizer state into the next round.
    runtime.train(first.weights, data, replace(settings, learning_rate=0.5, seed=4))
    again = runtime.train(initial, data, settings)
    for a, b in zip(first.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a, b)

    with pytest.raises(ValueError, match="shape"):
        runtime.train([initial[0].T, initial[1]], data, settings)
    poisoned = [initial[0].copy(), initial[1]]
    poisoned[0][0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        runtime.evaluate(poisoned, data)


@pytest.mark.tf
def test_fedprox_term_pulls_the_local_model_toward_the_global_one() -> None:
    from participant.training.keras_runtime import KerasTaskRuntime

    runtime = KerasTaskRuntime(_tiny_model)
    data = _separable_data()
    settings = TrainingSettings(local_epochs=10, batch_size=16, learning_rate=0.1, seed=3)
    global_weights = runtime.initial_weights(7)

    def distance(result: list[np.ndarray]) -> float:
        return float(
            sum(np.sum((a.astype(np.float64) - b) ** 2) for a, b in zip(result, global_weights))
        )

    plain = runtime.train(global_weights, data, settings)
    pulled = runtime.train(global_weights, data, replace(settings, proximal_mu=1.0))
    strongly = runtime.train(global_weights, data, replace(settings, proximal_mu=10.0))
    assert distance(strongly.weights) < distance(pulled.weights) < distance(plain.weights)
    assert distance(strongly.weights) < 0.5 * distance(plain.weights)
    # The term weighs only with mu > 0: afterwards, mu = 0 trains exactly as before.
    again = runtime.train(global_weights, data, settings)
    for a, b in zip(plain.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="proximal_mu"):
        runtime.train(global_weights, data, replace(settings, proximal_mu=-1.0))
