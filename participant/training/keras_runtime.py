"""Keras training runtime behind a task: the only code that imports TensorFlow/Keras.

A task module supplies a model factory ``build_model(keras) -> keras.Model`` (it receives the
keras module, so the task itself never imports TensorFlow) and delegates ``initial_weights``,
``train`` and ``evaluate`` to a ``KerasTaskRuntime``. Keras is imported on first use, so merely
importing a task (for example to list installed tasks) stays cheap and TensorFlow-free.

Design decisions:

- One built and compiled model per runtime, reused for every round: rebuilding per round would
  retrace the training function each time (about half a second on two cores) and churn memory
  in a long-lived daemon.
- Each ``train`` call starts from a *fresh* optimizer state (moments and step counter zeroed,
  learning rate set from the round's settings), so a round's result depends only on its inputs
  (global weights, data, settings), not on which rounds this process happened to run before.
- Randomness (initializers, batch shuffling) is seeded with ``keras.utils.set_random_seed``.
  That call also reseeds Python's ``random`` and numpy's global generator for the whole
  process; their states are restored afterwards so the rest of the daemon (retry jitter, ...)
  does not become predictable or replay the same sequence after every round.
- Calls are serialized by a lock: the model is shared state and Keras is not re-entrant.
- FedProx (``settings.proximal_mu > 0``, docs/strategies.md) trains through a wrapper model
  whose ``compute_loss`` adds ``mu/2 * ||w - w_global||^2`` over the trainable weights, with
  its own optimizer; it shares the layers of the plain model, and training with ``mu = 0``
  never touches it, so FedAvg training is exactly what it was.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.tasks import EvalResult, LocalData, TrainingSettings, TrainResult, as_float32
from participant.training.quiet_import import import_keras
from participant.training.validation import check_settings, check_weights

__all__ = [
    "DataLoader",
    "KerasTask",
    "KerasTaskRuntime",
    "ModelFactory",
    "OptimizerFactory",
    "sgd_with_momentum",
]

Weights = list[npt.NDArray[Any]]
ModelFactory = Callable[[ModuleType], Any]
"""``build_model(keras) -> keras.Model``: an uncompiled model whose input shape is known."""
OptimizerFactory = Callable[[ModuleType, float], Any]
"""``make_optimizer(keras, learning_rate) -> keras.optimizers.Optimizer``."""

# Evaluation has no gradient state, so one large batch is just faster.
_EVAL_BATCH_SIZE = 1024


@contextlib.contextmanager
def _seeded(keras: ModuleType, seed: int) -> Iterator[None]:
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _adam(keras: ModuleType, learning_rate: float) -> Any:
    return keras.optimizers.Adam(learning_rate=learning_rate)


class KerasTaskRuntime:
    """Train and evaluate one Keras classifier (integer labels, softmax output) on numpy data."""

    def __init__(
        self, build_model: ModelFactory, *, make_optimizer: OptimizerFactory = _adam
    ) -> None:
        self._build_model = build_model
        self._make_optimizer = make_optimizer
        self._lock = threading.Lock()
        self._keras: ModuleType | None = None
        self._model: Any = None
        self._proximal: Any = None

    # -- public API (the Task methods a task delegates) ---------------------------------------

    def initial_weights(self, seed: int) -> Weights:
        """Weights of a freshly initialized model; the same seed gives the same weights."""
        with self._lock:
            keras = self._import_keras()
            # Initializers draw from Keras' global seed; building a throwaway model under a fixed
            # seed is the one generic way to re-run every layer's initializer. Called once per
            # job, so the extra model is cheap.
            with _seeded(keras, seed):
                model = self._build_model(keras)
            return as_float32(model.get_weights())

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        """Fit from ``weights`` on the training split for ``settings.local_epochs`` epochs."""
        check_settings(settings)
        if data.num_train == 0:
            raise ValueError("cannot train on an empty training split")
        with self._lock:
            keras, model = self._compiled_model()
            self._set_weights(model, weights)
            trainer = model
            if settings.proximal_mu > 0:
                trainer = self._proximal_trainer(keras, model)
                trainer.anchor(settings.proximal_mu)
            self._reset_optimizer(trainer.optimizer, settings.learning_rate)
            with _seeded(keras, settings.seed):
                history = trainer.fit(
                    np.asarray(data.x_train, dtype=np.float32),
                    np.asarray(data.y_train),
                    epochs=settings.local_epochs,
                    batch_size=settings.batch_size,
                    shuffle=True,
                    verbose=0,
                )
            new_weights = as_float32(model.get_weights())
        loss = float(history.history["loss"][-1])
        if not math.isfinite(loss) or not all(np.isfinite(w).all() for w in new_weights):
            # Diverged training must not reach aggregation, where one NaN poisons the sum.
            raise FloatingPointError(
                f"local training diverged (loss={loss}); lower the learning rate"
            )
        metrics = {"accuracy": float(history.history["accuracy"][-1])}
        return TrainResult(
            weights=new_weights, num_examples=data.num_train, loss=loss, metrics=metrics
        )

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        """Loss and accuracy of ``weights`` on the held-out test split."""
        if data.num_test == 0:
            raise ValueError("cannot evaluate on an empty test split")
        with self._lock:
            _, model = self._compiled_model()
            self._set_weights(model, weights)
            scores = model.evaluate(
                np.asarray(data.x_test, dtype=np.float32),
                np.asarray(data.y_test),
                batch_size=_EVAL_BATCH_SIZE,
                verbose=0,
                return_dict=True,
            )
        return EvalResult(
            num_examples=data.num_test,
            loss=float(scores["loss"]),
            accuracy=float(scores["accuracy"]),
        )

    def export_keras(self, weights: Weights, path: Path) -> None:
        """Save the architecture with ``weights`` as a native Keras ``.keras`` file.

        The exported model is uncompiled: optimizer state is local to each training round and
        means nothing to whoever serves or fine-tunes the global model.
        """
        if path.suffix != ".keras":
            raise ValueError(f"{path}: a Keras model file must end in .keras")
        with self._lock:
            keras = self._import_keras()
            model = self._build_model(keras)
            self._set_weights(model, weights)
            path.parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                # Keras's saver converts TF variables with np.array(x, copy=False), which NumPy
                # 2 flags; the copy it falls back to is what the file needs anyway.
                warnings.filterwarnings(
                    "ignore", "__array__ implementation doesn't accept a copy keyword",
                    DeprecationWarning,
                )  # fmt: skip
                model.save(path)

    # -- internals -----------------------------------------------------------------------------

    def _import_keras(self) -> ModuleType:
        if self._keras is None:
            # The lazy import is the point: see the module docstring.
            self._keras = import_keras()
        return self._keras

    def _compiled_model(self) -> tuple[ModuleType, Any]:
        keras = self._import_keras()
        if self._model is None:
            model = self._build_model(keras)
            # The learning rate is overwritten at every train call (_reset_optimizer).
            optimizer = self._make_optimizer(keras, 0.001)
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
            self._model = model
            self._proximal = None
        return keras, self._model

    def _set_weights(self, model: Any, weights: Weights) -> None:
        check_weights(weights, [tuple(v.shape) for v in model.weights])
        model.set_weights(as_float32(weights))

    def _proximal_trainer(self, keras: ModuleType, model: Any) -> Any:
        """The FedProx wrapper around ``model`` (built and compiled on first use)."""
        if self._proximal is None:
            proximal = _proximal_model_class(keras)(model)
            proximal.compile(
                optimizer=self._make_optimizer(keras, 0.001),
                loss=keras.losses.SparseCategoricalCrossentropy(),
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            )
            self._proximal = proximal
        return self._proximal

    @staticmethod
    def _reset_optimizer(optimizer: Any, learning_rate: float) -> None:
        # Zero the step counter and every slot (Adam moments, momentum...), then set this
        # round's rate: FedAvg local training starts each round from a clean optimizer.
        for variable in optimizer.variables:
            variable.assign(np.zeros(tuple(variable.shape), dtype=variable.dtype))
        optimizer.learning_rate = learning_rate


def _proximal_model_class(keras: ModuleType) -> type[Any]:
    """A Keras model that trains an inner model on ``loss + mu/2 * ||w - w_global||^2``
    (Li et al., "Federated Optimization in Heterogeneous Networks", 2020), where ``w_global``
    is the inner model's trainable weights when :meth:`anchor` was last called."""
    ops = keras.ops

    class ProximalModel(keras.Model):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.mu = keras.Variable(0.0, trainable=False, name="proximal_mu")
            self.anchors = [
                keras.Variable(ops.zeros(w.shape, dtype=w.dtype), trainable=False)
                for w in inner.trainable_weights
            ]

        def anchor(self, mu: float) -> None:
            self.mu.assign(mu)
            for anchor, weight in zip(self.anchors, self.inner.trainable_weights, strict=True):
                anchor.assign(weight.value)

        def call(self, inputs: Any, training: bool = False) -> Any:
            return self.inner(inputs, training=training)

        def compute_loss(
            self,
            x: Any = None,
            y: Any = None,
            y_pred: Any = None,
            sample_weight: Any = None,
            training: bool = True,
        ) -> Any:
            loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
            distance = ops.sum(
                ops.stack(
                    [
                        ops.sum(ops.square(weight - anchor))
                        for weight, anchor in zip(
                            self.inner.trainable_weights, self.anchors, strict=True
                        )
                    ]
                )
            )
            return loss + 0.5 * self.mu * distance

    return ProximalModel


def sgd_with_momentum(keras: ModuleType, learning_rate: float) -> Any:
    """SGD with momentum 0.9: the example tasks' local optimizer (reset every round)."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)


DataLoader = Callable[[Mapping[str, Any]], LocalData]
"""``load_data(task_config) -> LocalData``: the organization's own train and held-out data."""


class KerasTask:
    """A ``fedsilo.tasks.Task`` made of a name, a model factory, an optimizer and a data loader.

    Example tasks are instances of it (``examples/digits/task.py``); the Keras work happens in
    one :class:`KerasTaskRuntime`, created when the task is.
    """

    def __init__(
        self,
        name: str,
        build_model: ModelFactory,
        load_data: DataLoader,
        *,
        make_optimizer: OptimizerFactory = _adam,
    ) -> None:
        self.name = name
        self._load_data = load_data
        self._runtime = KerasTaskRuntime(build_model, make_optimizer=make_optimizer)

    def initial_weights(self, seed: int) -> Weights:
        return self._runtime.initial_weights(seed)

    def load_data(self, config: Mapping[str, Any]) -> LocalData:
        return self._load_data(config)

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        return self._runtime.train(weights, data, settings)

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        return self._runtime.evaluate(weights, data)

    def export_keras(self, weights: Weights, path: Path) -> None:
        self._runtime.export_keras(weights, path)
