"""Federated optimization strategies: how the next global model is made from a round's mean.

Every round ends with the weighted mean of the participants' models (``mean``). A strategy's
server step turns the current global model ``x`` and that mean into the next global model,
optionally with an optimizer state (moments) it carries from version to version; a job's
``proximal_mu`` parameter is a client term every organization adds to its local loss. The
step runs where the mean is in the clear: at the coordinator under ``none`` and ``secagg``, at
every organization under ``paillier`` (docs/strategies.md). It is numpy on flat float64 vectors
and uses only element-wise IEEE operations (``+ - * /``, ``sqrt``, ``sign``), which are
correctly rounded: every organization computes the same bits from the same inputs.

Built-ins: ``fedavg`` (the mean is the next model), ``fedavgm`` (server momentum), ``fedadam``,
``fedyogi`` and ``fedadagrad`` (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
Algorithm 2), ``fedprox`` (Li et al., MLSys 2020: a proximal client term, FedAvg on the server).
Other strategies are installed as entry points of the group ``fedsilo.strategies``: a factory
called with the job's :class:`StrategyParameters` that returns a :class:`ServerStrategy`.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedsilo.errors import FedsiloError
from secagg import SecAggError, decode_fields, encode_fields

__all__ = [
    "BUILTIN_STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "OptimizerState",
    "ServerStrategy",
    "StrategyChoice",
    "StrategyError",
    "StrategyParameters",
    "apply_server_step",
    "decode_optimizer_state",
    "encode_optimizer_state",
    "installed_strategies",
    "load_strategy",
    "resolve_parameters",
    "strategy_names",
]

Vector = npt.NDArray[np.float64]
OptimizerState = dict[str, Vector]
"""A strategy's state between versions: named flat float64 vectors of the model's length."""

_STATE_FORMAT = b"fedsilo-optimizer-state/1"
_GROUP = "fedsilo.strategies"


class StrategyError(FedsiloError, ValueError):
    """An unknown strategy, bad strategy parameters, or an unreadable optimizer state."""


@dataclass(frozen=True)
class StrategyParameters:
    """A job's strategy parameters; None: unset (the strategy's default, or unused).

    ``server_learning_rate`` is the server step size eta, ``server_momentum`` FedAvgM's beta,
    ``beta1``/``beta2``/``tau`` the adaptive optimizers' decay rates and adaptivity, and
    ``proximal_mu`` the weight of FedProx's client term ``mu/2 * ||w - w_global||^2``.
    """

    server_learning_rate: float | None = None
    server_momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    proximal_mu: float | None = None

    def to_json(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> StrategyParameters:
        """Invert :meth:`to_json` (missing keys are unset); bad values raise StrategyError."""
        values: dict[str, float | None] = {}
        for item in dataclasses.fields(cls):
            raw = (data or {}).get(item.name)
            if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float)):
                raise StrategyError(f"strategy parameter {item.name} must be a number")
            values[item.name] = None if raw is None else float(raw)
        return cls(**values)


@dataclass(frozen=True)
class StrategyChoice:
    """A job's strategy as a participant receives it: the name and the parameters."""

    name: str = "fedavg"
    parameters: StrategyParameters = field(default_factory=StrategyParameters)

    def load(self) -> ServerStrategy:
        return load_strategy(self.name, self.parameters)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "parameters": self.parameters.to_json()}

    def canonical(self) -> str:
        """One text for the strategy and all its parameters (what a round context binds)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StrategyChoice:
        """Invert :meth:`to_json`; bad values raise StrategyError."""
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise StrategyError("a strategy has a name")
        return cls(name, StrategyParameters.from_json(data.get("parameters")))


@runtime_checkable
class ServerStrategy(Protocol):
    """What a strategy provides (see the module docstring).

    ``updates_server_model`` False means the next model is the mean itself (FedAvg): no server
    step runs and no optimizer state is kept. ``server_step`` must be deterministic and must not
    modify its arguments; ``initial_state`` is the state before the first step.
    """

    @property
    def name(self) -> str: ...

    @property
    def updates_server_model(self) -> bool: ...

    def initial_state(self, size: int) -> OptimizerState: ...

    def server_step(
        self, current: Vector, mean: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]: ...


StrategyFactory = Callable[[StrategyParameters], ServerStrategy]


class _BuiltinStrategy(abc.ABC):
    """Shared plumbing of the built-ins: their parameters, with defaults filled in."""

    name: ClassVar[str]
    defaults: ClassVar[StrategyParameters] = StrategyParameters()
    updates_server_model: ClassVar[bool] = True

    def __init__(self, parameters: StrategyParameters) -> None:
        self.parameters = resolve_parameters(self.name, parameters)

    def initial_state(self, size: int) -> OptimizerState:
        return {}

    @abc.abstractmethod
    def server_step(
        self, current: Vector, mean: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        """The next model and state (see ServerStrategy)."""

    def _value(self, field_name: str) -> float:
        value = getattr(self.parameters, field_name)
        assert value is not None  # resolve_parameters fills every parameter the strategy uses
        return float(value)


class FedAvg(_BuiltinStrategy):
    """The next model is the weighted mean of the participants' models (McMahan et al. 2017)."""

    name = "fedavg"
    updates_server_model = False

    def server_step(
        self, current: Vector, mean: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        return mean.copy(), {}


class FedProx(FedAvg):
    """FedAvg on the server; each organization minimizes ``loss + mu/2 * ||w - w_global||^2``."""

    name = "fedprox"
    defaults = StrategyParameters(proximal_mu=0.01)


class FedAvgM(_BuiltinStrategy):
    """Server momentum (Hsu et al. 2019): ``m = beta*m + delta``, ``x = x + eta*m``."""

    name = "fedavgm"
    defaults = StrategyParameters(server_learning_rate=1.0, server_momentum=0.9)

    def initial_state(self, size: int) -> OptimizerState:
        return {"momentum": np.zeros(size, dtype=np.float64)}

    def server_step(
        self, current: Vector, mean: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        delta = mean - current
        momentum = self._value("server_momentum") * state["momentum"] + delta
        return current + self._value("server_learning_rate") * momentum, {"momentum": momentum}


class _AdaptiveStrategy(_BuiltinStrategy):
    """Reddi et al. 2021, Algorithm 2: ``m = beta1*m + (1-beta1)*delta``, a second moment ``v``
    per optimizer, ``x = x + eta * m / (sqrt(v) + tau)``, from ``m = 0`` and ``v = tau^2``."""

    def initial_state(self, size: int) -> OptimizerState:
        tau = self._value("tau")
        return {
            "m": np.zeros(size, dtype=np.float64),
            "v": np.full(size, tau * tau, dtype=np.float64),
        }

    @abc.abstractmethod
    def _second_moment(self, v: Vector, delta_squared: Vector) -> Vector:
        """The new second moment from the old one and the squared pseudo-gradient."""

    def server_step(
        self, current: Vector, mean: Vector, state: OptimizerState
    ) -> tuple[Vector, OptimizerState]:
        delta = mean - current
        beta1 = self._value("beta1")
        m = beta1 * state["m"] + (1.0 - beta1) * delta
        v = self._second_moment(state["v"], delta * delta)
        step = self._value("server_learning_rate") * m / (np.sqrt(v) + self._value("tau"))
        return current + step, {"m": m, "v": v}


class FedAdam(_AdaptiveStrategy):
    """Adam on the server: ``v = beta2*v + (1-beta2)*delta^2``."""

    name = "fedadam"
    defaults = StrategyParameters(server_learning_rate=0.01, beta1=0.9, beta2=0.99, tau=1e-3)

    def _second_moment(self, v: Vector, delta_squared: Vector) -> Vector:
        beta2 = self._value("beta2")
        return beta2 * v + (1.0 - beta2) * delta_squared


class FedYogi(_AdaptiveStrategy):
    """Yogi on the server: ``v = v - (1-beta2) * delta^2 * sign(v - delta^2)``."""

    name = "fedyogi"
    defaults = StrategyParameters(server_learning_rate=0.01, beta1=0.9, beta2=0.99, tau=1e-3)

    def _second_moment(self, v: Vector, delta_squared: Vector) -> Vector:
        beta2 = self._value("beta2")
        return v - (1.0 - beta2) * delta_squared * np.sign(v - delta_squared)


class FedAdagrad(_AdaptiveStrategy):
    """Adagrad on the server: ``v = v + delta^2`` (``beta1`` 0 by default: ``m = delta``)."""

    name = "fedadagrad"
    defaults = StrategyParameters(server_learning_rate=0.01, beta1=0.0, tau=1e-3)

    def _second_moment(self, v: Vector, delta_squared: Vector) -> Vector:
        return v + delta_squared


BUILTIN_STRATEGIES: Mapping[str, type[_BuiltinStrategy]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx)
}

# Which parameters each built-in uses, and the range each must lie in.
_RANGES: Mapping[str, tuple[float, float, bool]] = {
    # name: (low, high, low is exclusive)
    "server_learning_rate": (0.0, 100.0, True),
    "server_momentum": (0.0, 1.0, False),
    "beta1": (0.0, 1.0, False),
    "beta2": (0.0, 1.0, False),
    "tau": (0.0, 1.0, True),
    "proximal_mu": (0.0, 1000.0, False),
}


def resolve_parameters(name: str, parameters: StrategyParameters) -> StrategyParameters:
    """A built-in's parameters with every unset one at its default; a parameter the strategy
    does not use, or one out of range, raises StrategyError. Other strategies' parameters are
    returned as given (their factory checks them)."""
    cls = BUILTIN_STRATEGIES.get(name)
    if cls is None:
        return parameters
    values: dict[str, float | None] = {}
    for item in dataclasses.fields(StrategyParameters):
        given = getattr(parameters, item.name)
        default = getattr(cls.defaults, item.name)
        if default is None:
            if given is not None:
                raise StrategyError(f"{name} does not use the parameter {item.name}")
            values[item.name] = None
            continue
        value = default if given is None else given
        low, high, exclusive = _RANGES[item.name]
        if not math.isfinite(value) or value > high or value < low or (exclusive and value == low):
            bracket = "(" if exclusive else "["
            raise StrategyError(f"{item.name} must be in {bracket}{low}, {high}], not {value}")
        if item.name in ("beta1", "beta2", "server_momentum") and value == 1.0:
            raise StrategyError(f"{item.name} must be below 1")
        values[item.name] = value
    return StrategyParameters(**values)


def installed_strategies() -> dict[str, str]:
    """The ``fedsilo.strategies`` entry points installed here: name -> "module:attr"."""
    return {ep.name: ep.value for ep in entry_points(group=_GROUP)}


def strategy_names() -> list[str]:
    """Every strategy a job may name here: the built-ins and the installed entry points."""
    return sorted(set(BUILTIN_STRATEGIES) | set(installed_strategies()))


def load_strategy(name: str, parameters: StrategyParameters | None = None) -> ServerStrategy:
    """The strategy ``name`` with ``parameters``: a built-in, or the entry point of that name
    in the group ``fedsilo.strategies`` (a factory taking :class:`StrategyParameters`)."""
    parameters = parameters or StrategyParameters()
    builtin = BUILTIN_STRATEGIES.get(name)
    if builtin is not None:
        return builtin(parameters)
    for ep in entry_points(group=_GROUP):
        if ep.name == name:
            factory: StrategyFactory = ep.load()
            try:
                strategy = factory(parameters)
            except StrategyError:
                raise
            except (TypeError, ValueError) as exc:
                raise StrategyError(f"strategy {name!r} refused its parameters: {exc}") from exc
            if not isinstance(strategy, ServerStrategy):
                raise StrategyError(f"{ep.value!r} does not provide the fedsilo strategy interface")
            return strategy
    raise StrategyError(
        f"strategy {name!r} is unknown: it is neither built in ({', '.join(BUILTIN_STRATEGIES)}) "
        f"nor installed as a '{_GROUP}' entry point"
    )


def apply_server_step(
    strategy: ServerStrategy,
    current: Sequence[npt.NDArray[Any]],
    mean: Sequence[npt.NDArray[Any]],
    state: OptimizerState | None,
) -> tuple[list[npt.NDArray[Any]], OptimizerState]:
    """The next global model (tensors of ``current``'s dtypes and shapes) and optimizer state.

    ``state`` None is the state before the first step. A step that yields NaN or Inf, or a
    state of the wrong shape, raises StrategyError.
    """
    flat_current = _flatten(current)
    flat_mean = _flatten(mean)
    if flat_mean.shape != flat_current.shape:
        raise StrategyError("the mean model does not have the global model's layout")
    if state is None:
        state = strategy.initial_state(flat_current.size)
    for key, vector in state.items():
        if vector.dtype != np.float64 or vector.shape != flat_current.shape:
            raise StrategyError(f"optimizer state {key!r} does not fit the model")
    following, new_state = strategy.server_step(flat_current, flat_mean, state)
    following = np.asarray(following, dtype=np.float64)
    if following.shape != flat_current.shape or not np.isfinite(following).all():
        raise StrategyError(f"the {strategy.name} server step did not yield a finite model")
    if not all(np.isfinite(v).all() for v in new_state.values()):
        raise StrategyError(f"the {strategy.name} server step yielded a non-finite state")
    tensors: list[npt.NDArray[Any]] = []
    offset = 0
    for tensor in current:
        size = int(np.asarray(tensor).size)
        part = following[offset : offset + size].reshape(np.shape(tensor))
        # astype, not ascontiguousarray: that one turns a 0-d tensor into shape (1,).
        tensors.append(part.astype(np.asarray(tensor).dtype, order="C"))
        offset += size
    return tensors, {key: np.asarray(v, dtype=np.float64) for key, v in new_state.items()}


def _flatten(weights: Sequence[npt.NDArray[Any]]) -> Vector:
    if not weights:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def encode_optimizer_state(state: Mapping[str, Vector]) -> bytes:
    """The state as bytes: a format tag, the sorted names with their lengths (JSON), then each
    vector's little-endian float64 values. No pickle, and the same state gives the same bytes."""
    names = sorted(state)
    layout = json.dumps([[name, int(state[name].size)] for name in names]).encode()
    return encode_fields(
        [_STATE_FORMAT, layout, *(np.asarray(state[n], dtype="<f8").tobytes() for n in names)]
    )


def decode_optimizer_state(data: bytes) -> OptimizerState:
    """Invert :func:`encode_optimizer_state`; damaged bytes raise StrategyError."""
    try:
        fields = decode_fields(data)
        if len(fields) < 2 or fields[0] != _STATE_FORMAT:
            raise ValueError("not an optimizer state")
        layout = json.loads(fields[1])
        if not isinstance(layout, list) or len(layout) != len(fields) - 2:
            raise ValueError("the layout does not list every vector")
        state: OptimizerState = {}
        for (name, size), raw in zip(layout, fields[2:], strict=True):
            if not isinstance(name, str) or not isinstance(size, int) or len(raw) != 8 * size:
                raise ValueError("a vector does not have its listed length")
            state[name] = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        return state
    except (ValueError, TypeError, SecAggError) as exc:
        raise StrategyError(f"the optimizer state is unreadable: {exc}") from None
