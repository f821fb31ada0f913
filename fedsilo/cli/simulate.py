"""In-process simulation of a federated job: N virtual organizations, no gRPC, no database."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from fedsilo.aggregation import fold_weighted, weighted_mean
from fedsilo.cli.strategy_arguments import strategy_parameters
from fedsilo.strategies import (
    OptimizerState,
    StrategyParameters,
    apply_server_step,
    load_strategy,
    resolve_parameters,
)
from fedsilo.tasks import LocalData, Task, TrainingSettings, as_float32, load_task


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate: the task, the cohort, the rounds and the strategy (plain rounds only)."""

    task: str = "digits-linear"
    participants: int = 3
    rounds: int = 2
    strategy: str = "fedavg"
    strategy_parameters: StrategyParameters = field(default_factory=StrategyParameters)
    split: str = "dirichlet:0.5"
    seed: int = 0  # the initial model's seed
    data_seed: int = 0  # the partitioner's seed (task_config.seed)
    training: TrainingSettings = field(default_factory=TrainingSettings)


@dataclass(frozen=True)
class SimulationResult:
    """The final global model and the mean test accuracy after each round."""

    weights: list[npt.NDArray[Any]]
    accuracy: list[float]


def task_config(split: str, partition: int, participants: int, seed: int) -> dict[str, Any]:
    """The ``task_config`` the example tasks understand for ``--split`` (iid or dirichlet:ALPHA)."""
    config: dict[str, Any] = {"partition": partition, "num_partitions": participants}
    config["seed"] = seed
    if split == "iid":
        config["skew"] = "iid"
    elif split.startswith("dirichlet:"):
        config["skew"] = "label"
        config["alpha"] = float(split.removeprefix("dirichlet:"))
    else:
        raise ValueError(f"--split must be iid or dirichlet:ALPHA, got {split!r}")
    return config


def plain_mean(
    updates: Sequence[tuple[Sequence[npt.NDArray[Any]], int]],
) -> list[npt.NDArray[np.float32]]:
    """The plain engine's weighted FedAvg over ``updates`` (weights, examples) in this order."""
    first, _ = updates[0]
    accumulator = [np.zeros(np.shape(w), dtype=np.float64) for w in first]
    for weights, num_examples in updates:
        fold_weighted(accumulator, [np.asarray(w) for w in weights], num_examples)
    return weighted_mean(accumulator, sum(n for _, n in updates))


def simulate(options: SimulationOptions) -> SimulationResult:
    """Run ``options.rounds`` plain rounds over ``options.participants`` virtual organizations."""
    task: Task = load_task(options.task)
    strategy = load_strategy(options.strategy, options.strategy_parameters)
    data: list[LocalData] = [
        task.load_data(task_config(options.split, i, options.participants, options.data_seed))
        for i in range(options.participants)
    ]
    model = as_float32(task.initial_weights(options.seed))
    state: OptimizerState | None = None
    accuracy: list[float] = []
    for round_number in range(1, options.rounds + 1):
        # The participant's per-round settings (participant/domain/assignments.py).
        settings = TrainingSettings(
            local_epochs=options.training.local_epochs,
            batch_size=options.training.batch_size,
            learning_rate=options.training.learning_rate,
            seed=options.training.seed * 1_000_003 + round_number,
            proximal_mu=resolve_parameters(
                options.strategy, options.strategy_parameters
            ).proximal_mu
            or 0.0,
        )
        updates = []
        for local in data:
            result = task.train([w.copy() for w in model], local, settings)
            updates.append((as_float32(result.weights), result.num_examples))
        mean = plain_mean(updates)
        if strategy.updates_server_model:
            model, state = apply_server_step(strategy, model, mean, state)
        else:
            model = list(mean)
        accuracy.append(_mean_accuracy(task, model, data))
    return SimulationResult(model, accuracy)


def _mean_accuracy(task: Task, model: list[npt.NDArray[Any]], data: Sequence[LocalData]) -> float:
    results = [task.evaluate(model, local) for local in data]
    total = sum(r.num_examples for r in results)
    return sum(r.accuracy * r.num_examples for r in results) / max(total, 1)


def summary(result: SimulationResult) -> Mapping[str, Any]:
    """A JSON-ready summary of a simulation."""
    return {"rounds": len(result.accuracy), "accuracy": result.accuracy}


def run_simulate(args: argparse.Namespace, console: Console) -> int:
    """``fedsilo simulate``: run the simulation and print the accuracy after each round."""
    options = SimulationOptions(
        task=args.task,
        participants=args.participants,
        rounds=args.rounds,
        strategy=args.strategy,
        strategy_parameters=strategy_parameters(args),
        split=args.split,
        seed=args.seed,
        training=TrainingSettings(
            local_epochs=args.local_epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
        ),
    )
    result = simulate(options)
    for number, accuracy in enumerate(result.accuracy, start=1):
        console.print(f"round {number}: mean test accuracy {accuracy:.4f}")
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary(result), indent=2), encoding="utf-8")
    return 0
