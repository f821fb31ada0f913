"""Tests for the numpy-only ``digits-linear`` task."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from examples.synthetic.task import default_settings, task
from fedsilo.tasks import LocalData, Task, TrainingSettings, load_task

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def data() -> LocalData:
    return task.load_data({"partition": 0, "num_partitions": 3, "seed": 0})


def _on_train_split(data: LocalData) -> LocalData:
    return replace(data, x_test=data.x_train, y_test=data.y_train)


def test_it_is_a_task_resolvable_by_name() -> None:
    assert isinstance(task, Task)
    assert load_task("digits-linear", {"digits-linear": "examples.synthetic.task:task"}) is task


def test_initial_weights_are_float32_and_seeded() -> None:
    weights = task.initial_weights(0)
    assert [w.shape for w in weights] == [(64, 10), (10,)]
    assert all(w.dtype == np.float32 for w in weights)
    for a, b in zip(weights, task.initial_weights(0), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(weights[0], task.initial_weights(1)[0])


def test_training_lowers_the_loss_and_raises_accuracy(data: LocalData) -> None:
    weights = task.initial_weights(0)
    before = task.evaluate(weights, _on_train_split(data))
    result = task.train(weights, data, default_settings)
    after = task.evaluate(result.weights, _on_train_split(data))
    assert result.num_examples == data.num_train
    assert [w.shape for w in result.weights] == [(64, 10), (10,)]
    assert all(w.dtype == np.float32 for w in result.weights)
    assert after.loss < 0.5 * before.loss
    assert result.loss < before.loss
    assert after.accuracy > 0.9 > before.accuracy


def test_evaluate_reports_held_out_accuracy(data: LocalData) -> None:
    trained = task.train(task.initial_weights(0), data, default_settings).weights
    held_out = task.evaluate(trained, data)
    assert held_out.num_examples == data.num_test
    assert held_out.accuracy > 0.85
    # Accuracy is a fraction of the test examples, not a rounded score.
    assert held_out.accuracy * data.num_test == pytest.approx(
        round(held_out.accuracy * data.num_test)
    )
    untrained = task.evaluate(task.initial_weights(0), data)
    assert untrained.accuracy < 0.5 and untrained.loss > held_out.loss


def test_training_is_deterministic_in_the_seed(data: LocalData) -> None:
    weights = task.initial_weights(0)
    settings = TrainingSettings(local_epochs=1, batch_size=16, learning_rate=0.2, seed=5)
    first = task.train(weights, data, settings)
    second = task.train(weights, data, settings)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert first.loss == second.loss
    reshuffled = task.train(weights, data, replace(settings, seed=6))
    assert not np.array_equal(first.weights[0], reshuffled.weights[0])


def test_bad_inputs_are_refused(data: LocalData) -> None:
    weights = task.initial_weights(0)
    with pytest.raises(ValueError, match="expected 2 weight arrays"):
        task.train(weights[:1], data, default_settings)
    with pytest.raises(ValueError, match="shape"):
        task.train([weights[0].T, weights[1]], data, default_settings)
    poisoned = [weights[0].copy(), weights[1]]
    poisoned[0][3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        task.evaluate(poisoned, data)
    with pytest.raises(ValueError, match="learning_rate"):
        task.train(weights, data, replace(default_settings, learning_rate=0.0))
    with pytest.raises(ValueError, match="batch_size"):
        task.train(weights, data, replace(default_settings, batch_size=0))


def test_divergence_is_reported_not_returned(data: LocalData) -> None:
    with pytest.raises(FloatingPointError, match="diverged"):
        task.train(
            task.initial_weights(0),
            data,
            TrainingSettings(local_epochs=3, batch_size=8, learning_rate=1e200),
        )


def test_importing_and_using_numpy_paths_never_imports_tensorflow() -> None:
    # In a fresh interpreter: this test process may have imported TensorFlow for other tests.
    code = textwrap.dedent(
        """
        import sys
        import examples.digits.simulate
        from examples.digits.task import task as keras_task
        from examples.synthetic.task import default_settings, task
        data = task.load_data({"partition": 1, "num_partitions": 3})
        result = task.train(task.initial_weights(0), data, default_settings)
        task.evaluate(result.weights, data)
        keras_task.load_data({"partition": 1, "num_partitions": 3})
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print("LEAKED", leaked)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED []" in proc.stdout, proc.stdout
