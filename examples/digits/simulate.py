"""In-process FedAvg simulation of the digits tasks, compared with a centrally trained model.

Run ``python -m examples.digits.simulate [--task digits|digits-linear] [--seed 0]``. No network,
no secure aggregation: the plain weighted mean the real coordinator computes under masks.
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from examples.digits.central import central_baseline
from fedsilo.tasks import EvalResult, LocalData, Task, TrainingSettings, TrainResult

__all__ = [
    "FedAvgRun",
    "federated_average",
    "organization_configs",
    "pooled_evaluation",
    "round_settings",
    "run_fedavg",
]

Weights = list[npt.NDArray[Any]]
# Task name -> module exposing `task`, `default_settings` and `default_rounds`.
_TASK_MODULES = {
    "digits": "examples.digits.task",
    "digits-linear": "examples.synthetic.task",
}


@dataclass(frozen=True)
class FedAvgRun:
    """Outcome of a simulated federated run."""

    weights: Weights
    evaluation: EvalResult
    round_seconds: list[float]


def organization_configs(
    num_organizations: int, seed: int, skew: str = "label"
) -> list[dict[str, Any]]:
    """The ``task_config`` each organization would have in its own configuration file."""
    return [
        {"partition": i, "num_partitions": num_organizations, "seed": seed, "skew": skew}
        for i in range(num_organizations)
    ]


def round_settings(settings: TrainingSettings, round_index: int) -> TrainingSettings:
    """The settings the coordinator sends for one round: a fresh shuffling seed per round."""
    # Reusing one seed every round would replay the same batch order each time.
    return replace(settings, seed=settings.seed * 10_000 + round_index)


def federated_average(results: Sequence[TrainResult]) -> Weights:
    """FedAvg (McMahan et al. 2017): mean of the returned weights weighted by example count."""
    total = sum(r.num_examples for r in results)
    if total <= 0:
        raise ValueError("cannot average updates that were trained on no examples")
    averaged: Weights = []
    for index, layer in enumerate(zip(*(r.weights for r in results), strict=True)):
        # float64 accumulation: the float32 sum of a few updates loses digits for no reason.
        acc = np.zeros(np.shape(layer[0]), dtype=np.float64)
        for w, r in zip(layer, results, strict=True):
            if np.shape(w) != acc.shape:
                # Broadcasting would silently "average" arrays of different shapes.
                raise ValueError(f"weight {index}: shapes differ, {np.shape(w)} != {acc.shape}")
            acc += np.asarray(w, dtype=np.float64) * r.num_examples
        averaged.append((acc / total).astype(np.float32))
    return averaged


def pooled_evaluation(evaluations: Sequence[EvalResult]) -> EvalResult:
    """Combine per-organization evaluations as one evaluation on the union of their test sets."""
    total = sum(e.num_examples for e in evaluations)
    if total <= 0:
        raise ValueError("no test examples to evaluate on")
    return EvalResult(
        num_examples=total,
        loss=sum(e.loss * e.num_examples for e in evaluations) / total,
        accuracy=sum(e.accuracy * e.num_examples for e in evaluations) / total,
    )


def run_fedavg(
    task: Task,
    datasets: Sequence[LocalData],
    settings: TrainingSettings,
    rounds: int,
) -> FedAvgRun:
    """``rounds`` of FedAvg from ``task.initial_weights(settings.seed)`` over every dataset."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    weights = task.initial_weights(settings.seed)
    round_seconds = []
    for round_index in range(rounds):
        started = time.perf_counter()
        this_round = round_settings(settings, round_index)
        results = [task.train(weights, data, this_round) for data in datasets]
        weights = federated_average(results)
        round_seconds.append(time.perf_counter() - started)
    evaluation = pooled_evaluation([task.evaluate(weights, data) for data in datasets])
    return FedAvgRun(weights=weights, evaluation=evaluation, round_seconds=round_seconds)


def _simulate(
    task_name: str, seed: int, organizations: int, rounds: int | None, skew: str
) -> tuple[FedAvgRun, EvalResult]:
    module = importlib.import_module(_TASK_MODULES[task_name])
    task: Task = module.task
    settings = replace(module.default_settings, seed=seed)
    num_rounds = rounds if rounds is not None else int(module.default_rounds)
    configs = organization_configs(organizations, seed, skew)
    datasets = [task.load_data(config) for config in configs]
    federated = run_fedavg(task, datasets, settings, num_rounds)
    central = central_baseline(task, configs, settings, num_rounds)
    return federated, central


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--task", choices=sorted(_TASK_MODULES), default="digits")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--organizations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None, help="default: the task's")
    parser.add_argument("--skew", choices=["label", "iid"], default="label")
    args = parser.parse_args(argv)
    for seed in args.seed:
        started = time.perf_counter()
        federated, central = _simulate(args.task, seed, args.organizations, args.rounds, args.skew)
        seconds = federated.round_seconds
        print(
            f"task={args.task} seed={seed} orgs={args.organizations} rounds={len(seconds)} "
            f"federated_acc={federated.evaluation.accuracy:.4f} "
            f"central_acc={central.accuracy:.4f} "
            f"gap={central.accuracy - federated.evaluation.accuracy:+.4f} "
            f"round_s(first/median)={seconds[0]:.2f}/{float(np.median(seconds)):.2f} "
            f"total_s={time.perf_counter() - started:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
