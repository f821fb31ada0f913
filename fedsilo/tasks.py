"""Task API: what an organization installs to train one model family on its own data.

A task is a plain Python object (no TensorFlow import required at module level) that provides:

- ``name``: the name jobs refer to;
- ``initial_weights(seed)``: the version-0 weights, a list of numpy arrays;
- ``load_data(config)``: the organization's local train and held-out test data, from the
  ``task_config`` mapping in the organization's own configuration (where its data lives);
- ``train(weights, data, settings)``: local training from the given global weights;
- ``evaluate(weights, data)``: loss and accuracy of the given weights on the held-out split.

Tasks are looked up by name in the participant's configuration (``tasks: {name: "module:attr"}``)
or in the ``fedsilo.tasks`` entry point group; a participant only runs tasks it installed itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedsilo.errors import FedsiloError

__all__ = [
    "EvalResult",
    "LocalData",
    "Task",
    "TaskNotFoundError",
    "TrainResult",
    "TrainingSettings",
    "installed_tasks",
    "load_task",
]

Weights = list[npt.NDArray[Any]]


@dataclass(frozen=True)
class TrainingSettings:
    """Local training hyper-parameters sent by the coordinator with each round.

    ``proximal_mu`` is the weight of the proximal client term ``mu/2 * ||w - w_global||^2``
    (FedProx, docs/strategies.md) a task adds to its local loss; it comes from the job's
    strategy, 0 for strategies without a client term.
    """

    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class LocalData:
    """An organization's private data: a training split and a held-out test split."""

    x_train: npt.NDArray[Any]
    y_train: npt.NDArray[Any]
    x_test: npt.NDArray[Any]
    y_test: npt.NDArray[Any]

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class TrainResult:
    """New local weights, the number of examples they were trained on, and the training loss."""

    weights: Weights
    num_examples: int
    loss: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """Loss and accuracy of a model on ``num_examples`` held-out examples."""

    num_examples: int
    loss: float
    accuracy: float


@runtime_checkable
class Task(Protocol):
    """What a participant needs to train and evaluate one model family locally."""

    name: str

    def initial_weights(self, seed: int) -> Weights: ...

    def load_data(self, config: Mapping[str, Any]) -> LocalData: ...

    def train(self, weights: Weights, data: LocalData, settings: TrainingSettings) -> TrainResult:
        """Train locally from ``weights`` (read-only arrays: return new ones)."""
        ...

    def evaluate(self, weights: Weights, data: LocalData) -> EvalResult:
        """Evaluate ``weights`` (read-only arrays) on the held-out split."""
        ...


class TaskNotFoundError(FedsiloError, LookupError):
    """The named task is not installed (or not allowed) on this machine."""


def load_task(name: str, allowed: Mapping[str, str] | None = None) -> Task:
    """Resolve a task by name from ``allowed`` ("module:attr" specs) or the entry point group."""
    if allowed is not None and name in allowed:
        return _import_spec(allowed[name])
    if allowed:
        raise TaskNotFoundError(f"task {name!r} is not in this organization's configured tasks")
    for ep in entry_points(group="fedsilo.tasks"):
        if ep.name == name:
            task = ep.load()
            return _check(task, ep.value)
    raise TaskNotFoundError(f"task {name!r} is not installed (no 'fedsilo.tasks' entry point)")


def installed_tasks() -> dict[str, str]:
    """The ``fedsilo.tasks`` entry points installed on this machine: name -> "module:attr"."""
    return {ep.name: ep.value for ep in entry_points(group="fedsilo.tasks")}


def _import_spec(spec: str) -> Task:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TaskNotFoundError(f"task spec {spec!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskNotFoundError(f"cannot import task module {module_name!r}: {exc}") from exc
    try:
        task = getattr(module, attr)
    except AttributeError as exc:
        raise TaskNotFoundError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return _check(task, spec)


def _check(task: object, spec: str) -> Task:
    if not isinstance(task, Task):
        raise TaskNotFoundError(f"{spec!r} does not provide the fedsilo Task interface")
    return task


def as_float32(weights: Weights) -> Weights:
    """Return C-contiguous float32 copies, the form weights travel in."""
    return [np.ascontiguousarray(w, dtype=np.float32) for w in weights]
