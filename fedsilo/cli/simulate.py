"""In-process simulation of a federated job: N virtual organizations, no gRPC, no database."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from coordinator.domain.jobs import SecAggSettings
from coordinator.domain.privacy import epsilon_after, rounds_within_budget
from fedsilo.aggregation import fold_weighted, weighted_mean
from fedsilo.cli.privacy_arguments import (
    add_privacy_arguments,
    positive_float,
    positive_int,
    privacy_settings,
)
from fedsilo.cli.simulated_rounds import RoundJob, VirtualOrganizations, secure_round
from fedsilo.cli.strategy_arguments import add_strategy_arguments, strategy_parameters
from fedsilo.privacy import DifferentialPrivacy, privatize_weights
from fedsilo.protection import Protection, SecAggParameters
from fedsilo.strategies import (
    OptimizerState,
    StrategyChoice,
    StrategyParameters,
    apply_server_step,
    load_strategy,
    resolve_parameters,
)
from fedsilo.tasks import (
    LocalData,
    Task,
    TrainingSettings,
    TrainResult,
    as_float32,
    installed_tasks,
    load_task,
)
from secagg import RandomSource

__all__ = [
    "SimulationOptions",
    "SimulationResult",
    "plain_mean",
    "register",
    "run_simulate",
    "secagg_settings",
    "simulate",
    "summary",
    "task_config",
]

_SECAGG = SecAggSettings()
_TRAINING = TrainingSettings()


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate: the task, the cohort, the rounds, the strategy and the protection."""

    task: str = "digits-linear"
    participants: int = 3
    rounds: int = 2
    strategy: str = "fedavg"
    strategy_parameters: StrategyParameters = field(default_factory=StrategyParameters)
    split: str = "dirichlet:0.5"
    seed: int = 0  # the initial model's seed
    data_seed: int = 0  # the partitioner's seed (task_config.seed)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    protection: Protection = Protection.NONE
    secagg: SecAggSettings | None = None  # None: secagg_settings(participants)
    dp: DifferentialPrivacy = field(default_factory=DifferentialPrivacy)
    dropouts: int = 0  # organizations that stop after sharing keys, each secure round
    task_options: Mapping[str, Any] = field(default_factory=dict)  # more task_config keys
    paillier_key_bits: int = 2048


@dataclass(frozen=True)
class SimulationResult:
    """The final global model, the mean test accuracy after each round and, under differential
    privacy, the epsilon spent (the coordinator's accountant, coordinator/domain/privacy.py)."""

    weights: list[npt.NDArray[Any]]
    accuracy: list[float]
    epsilon: float | None = None


def task_config(
    split: str,
    partition: int,
    participants: int,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``task_config`` the example tasks understand for ``--split`` (iid or dirichlet:ALPHA),
    with ``options`` added (``--task-config``)."""
    config: dict[str, Any] = {"partition": partition, "num_partitions": participants}
    config["seed"] = seed
    if split == "iid":
        config["skew"] = "iid"
    elif split.startswith("dirichlet:"):
        # Label skew is the digits tasks' default; the gestures task skews its gesture mix.
        config["alpha"] = float(split.removeprefix("dirichlet:"))
    else:
        raise ValueError(f"--split must be iid or dirichlet:ALPHA, got {split!r}")
    config.update(options or {})
    return config


def secagg_settings(
    participants: int, *, clip: float | None = None, max_weight: int | None = None
) -> SecAggSettings:
    """A job's default secure-aggregation settings with a cohort limit of at least
    ``participants``, the given ``clip`` and ``max_weight``, and without a given ``max_weight``,
    the job's default halved until the bit budget holds for the cohort."""
    settings = SecAggSettings(
        max_participants=max(_SECAGG.max_participants, participants),
        clip=_SECAGG.clip if clip is None else clip,
        max_weight=_SECAGG.max_weight if max_weight is None else max_weight,
    )
    while max_weight is None and settings.problems() and settings.max_weight > 1:
        settings = replace(settings, max_weight=settings.max_weight // 2)
    return settings


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
    """Run ``options.rounds`` rounds over ``options.participants`` virtual organizations."""
    if options.participants < 1 or options.rounds < 1:
        raise ValueError("a simulation needs at least one organization and one round")
    if options.dp.problems():
        raise ValueError("; ".join(options.dp.problems()))
    if not rounds_within_budget(options.dp, 1):
        # The coordinator refuses such a job when it is created (coordinator/domain/jobs.py).
        raise ValueError(
            f"one round alone spends epsilon {epsilon_after(options.dp, 1):.4g}, more than the "
            f"budget {options.dp.epsilon_budget:g}"
        )
    task: Task = load_task(options.task)
    strategy = load_strategy(options.strategy, options.strategy_parameters)
    organizations = VirtualOrganizations(
        options.participants,
        paillier_key_bits=(
            options.paillier_key_bits if options.protection is Protection.PAILLIER else None
        ),
    )
    data: dict[str, LocalData] = {
        org: task.load_data(
            task_config(
                options.split,
                index,
                options.participants,
                options.data_seed,
                options.task_options,
            )
        )
        for index, org in enumerate(organizations.ids)
    }
    # Noise shares from one seeded stream per organization: a simulation is reproducible (the
    # daemons draw theirs from os.urandom; in one process there is nobody to hide them from).
    noise: dict[str, RandomSource] = {
        org: _seeded_source(options.seed, index) for index, org in enumerate(organizations.ids)
    }
    proximal_mu = resolve_parameters(options.strategy, options.strategy_parameters).proximal_mu
    model = as_float32(task.initial_weights(options.seed))
    state: OptimizerState | None = None
    accuracy: list[float] = []
    for round_number in range(1, options.rounds + 1):
        if not rounds_within_budget(options.dp, round_number):
            break  # as the coordinator stops a job before a round would overspend its budget
        # The participant's per-round settings (participant/domain/assignments.py).
        settings = TrainingSettings(
            local_epochs=options.training.local_epochs,
            batch_size=options.training.batch_size,
            learning_rate=options.training.learning_rate,
            seed=options.training.seed * 1_000_003 + round_number,
            proximal_mu=proximal_mu or 0.0,
        )

        def train(
            org: str, base: list[npt.NDArray[Any]], settings: TrainingSettings = settings
        ) -> TrainResult:
            return task.train([w.copy() for w in base], data[org], settings)

        if options.protection is Protection.NONE:
            mean = _plain_round(options, organizations.ids, model, train, noise)
        else:
            mean = _secure_round(options, organizations, round_number, model, train, noise)
        if strategy.updates_server_model:
            model, state = apply_server_step(strategy, model, mean, state)
        else:
            model = list(mean)
        accuracy.append(_mean_accuracy(task, model, list(data.values())))
    epsilon = epsilon_after(options.dp, len(accuracy)) if options.dp.enabled else None
    return SimulationResult(model, accuracy, epsilon)


def _plain_round(
    options: SimulationOptions,
    organizations: Sequence[str],
    model: list[npt.NDArray[Any]],
    train: Callable[[str, list[npt.NDArray[Any]]], TrainResult],
    noise: Mapping[str, RandomSource],
) -> list[npt.NDArray[np.float32]]:
    """What a plain round commits (participant/service/runner.py, then the none engine)."""
    updates = []
    for org in organizations:
        result = train(org, model)
        sent, weight = as_float32(result.weights), result.num_examples
        if options.dp.enabled:
            # Every organization contributes, so the job's min_participants is all of them.
            sent = privatize_weights(model, sent, options.dp, len(organizations), noise[org])
            weight = 1
        updates.append((sent, weight))
    return plain_mean(updates)


def _secure_round(
    options: SimulationOptions,
    organizations: VirtualOrganizations,
    round_number: int,
    model: list[npt.NDArray[Any]],
    train: Callable[[str, list[npt.NDArray[Any]]], TrainResult],
    noise: Mapping[str, RandomSource],
) -> list[npt.NDArray[np.float32]]:
    settings = options.secagg or secagg_settings(options.participants)
    if settings.problems():
        raise ValueError("; ".join(settings.problems()))
    cohort = organizations.ids[: settings.max_participants]
    parameters = SecAggParameters(
        threshold=settings.threshold_for(len(cohort)),
        modulus_bits=settings.modulus_bits,
        vector_length=sum(int(np.size(w)) for w in model) + 1,
        cohort=tuple(sorted(cohort)),
        clip=settings.clip,
        levels_bits=settings.levels_bits,
        max_participants=settings.max_participants,
        max_weight=settings.max_weight,
    )
    if len(cohort) - options.dropouts < parameters.threshold:
        raise ValueError(
            f"{options.dropouts} dropouts leave fewer than the threshold of "
            f"{parameters.threshold} of a cohort of {len(cohort)}: every round would abort"
        )
    # Who drops out changes from round to round, reproducibly.
    dropouts = random.Random(options.seed * 1_000_003 + round_number).sample(  # noqa: S311
        list(cohort), options.dropouts
    )
    job = RoundJob(
        job_id="simulation",
        task_name=options.task,
        algorithm=StrategyChoice(options.strategy, options.strategy_parameters).canonical(),
        training=options.training,
        min_participants=len(cohort) - options.dropouts,
        dp=options.dp,
    )
    result = secure_round(
        protection=options.protection,
        organizations=organizations,
        cohort=cohort,
        dropouts=dropouts,
        parameters=parameters,
        job=job,
        round_number=round_number,
        base=model,
        train=train,
        noise=noise,
    )
    return result.weights


def _seeded_source(seed: int, index: int) -> RandomSource:
    generator = np.random.default_rng([seed, index])
    return lambda count: generator.bytes(count)


def _mean_accuracy(task: Task, model: list[npt.NDArray[Any]], data: Sequence[LocalData]) -> float:
    results = [task.evaluate(model, local) for local in data]
    total = sum(r.num_examples for r in results)
    return sum(r.accuracy * r.num_examples for r in results) / max(total, 1)


def summary(result: SimulationResult) -> Mapping[str, Any]:
    """A JSON-ready summary of a simulation."""
    return {"rounds": len(result.accuracy), "accuracy": result.accuracy, "epsilon": result.epsilon}


def register(commands: Any) -> None:
    """Add ``fedsilo simulate`` to the command's subparsers."""
    parser = commands.add_parser(
        "simulate",
        help="simulate a job over virtual organizations in one process (no daemons)",
        description="Simulate a job over virtual organizations in one process: the task, "
        "strategy and secure-aggregation library code of the daemons, without gRPC or a "
        "database.",
    )
    parser.add_argument("--task", default="digits-linear", choices=sorted(installed_tasks()))
    parser.add_argument("--participants", type=positive_int, default=3)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--split", default="dirichlet:0.5", help="iid or dirichlet:ALPHA")
    parser.add_argument(
        "--task-config",
        default="{}",
        help="JSON object of more task_config keys for every organization",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protection", choices=[mode.value for mode in Protection], default="none")
    parser.add_argument(
        "--dropouts",
        type=int,
        default=0,
        help="organizations that stop after sharing their keys, each secure round",
    )
    parser.add_argument(
        "--max-weight",
        type=positive_int,
        help="cap on one organization's example count (default: the job's, lowered until "
        "the secure-aggregation bit budget holds for the cohort)",
    )
    parser.add_argument(
        "--clip",
        type=positive_float,
        help=f"clip of each update value under secagg and paillier (default {_SECAGG.clip:g}; "
        "with --dp-clip it must leave room for the noise, docs/differential-privacy.md)",
    )
    parser.add_argument("--paillier-key-bits", type=int, choices=[2048, 3072], default=2048)
    parser.add_argument("--local-epochs", type=positive_int, default=_TRAINING.local_epochs)
    parser.add_argument("--batch-size", type=positive_int, default=_TRAINING.batch_size)
    parser.add_argument("--learning-rate", type=float, default=_TRAINING.learning_rate)
    parser.add_argument("--summary-json", type=Path, help="write the result summary here")
    add_strategy_arguments(parser)
    add_privacy_arguments(parser)


def run_simulate(args: argparse.Namespace, console: Console) -> int:
    """``fedsilo simulate``: run the simulation and print the accuracy after each round."""
    options_json = json.loads(args.task_config)
    if not isinstance(options_json, dict):
        raise ValueError("--task-config must be a JSON object")
    secagg = secagg_settings(args.participants, clip=args.clip, max_weight=args.max_weight)
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
        protection=Protection(args.protection),
        secagg=secagg,
        dp=privacy_settings(args),
        dropouts=args.dropouts,
        task_options=options_json,
        paillier_key_bits=args.paillier_key_bits,
    )
    result = simulate(options)
    for number, accuracy in enumerate(result.accuracy, start=1):
        console.print(f"round {number}: mean test accuracy {accuracy:.4f}")
    if result.epsilon is not None:
        console.print(
            f"privacy: epsilon {result.epsilon:.4g} at delta {options.dp.delta:g} after "
            f"{len(result.accuracy)} rounds (organization-level)"
        )
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary(result), indent=2), encoding="utf-8")
    return 0
