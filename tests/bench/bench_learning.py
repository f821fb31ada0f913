"""Learning quality under label skew: every built-in strategy over simulated organizations,
each protection at least once, beside central training on the same organizations' pooled data
with the same model and as many epochs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from the repository root
    sys.path.insert(0, str(ROOT))

from fedsilo.cli.simulate import SimulationOptions, simulate, task_config  # noqa: E402
from fedsilo.protection import Protection  # noqa: E402
from fedsilo.strategies import BUILTIN_STRATEGIES  # noqa: E402
from fedsilo.tasks import LocalData, TrainingSettings, as_float32, load_task  # noqa: E402

TRAINING = {
    "digits-linear": TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1, seed=0),
    # The gestures MLP trains 1 epoch a round here (its demo default is 2) to keep the run short.
    "gestures": TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.05, seed=0),
}
SECURE_ALPHA = 0.5
"""The skew of the rows run under secagg and paillier (with fedavg and fedadam)."""
SECURE_STRATEGIES = ("fedavg", "fedadam")


@dataclass(frozen=True)
class Row:
    task: str
    organizations: int
    alpha: float
    strategy: str
    protection: Protection


def central_accuracy(
    task_name: str, organizations: int, alpha: float, rounds: int, seed: int
) -> float:
    """The organizations' data pooled (what federation avoids), trained for as many epochs as a
    federated run trains locally in total, and evaluated on their pooled test splits."""
    task = load_task(task_name)
    parts = [
        task.load_data(task_config(f"dirichlet:{alpha}", index, organizations, 0))
        for index in range(organizations)
    ]
    pooled = LocalData(
        x_train=np.concatenate([p.x_train for p in parts]),
        y_train=np.concatenate([p.y_train for p in parts]),
        x_test=np.concatenate([p.x_test for p in parts]),
        y_test=np.concatenate([p.y_test for p in parts]),
    )
    training = TRAINING[task_name]
    settings = TrainingSettings(
        local_epochs=rounds * training.local_epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        seed=training.seed,
    )
    trained = task.train(as_float32(task.initial_weights(seed)), pooled, settings)
    return task.evaluate(as_float32(trained.weights), pooled).accuracy


def rounds_to(target: float, accuracy: Sequence[float]) -> str:
    for number, value in enumerate(accuracy, start=1):
        if value >= target:
            return str(number)
    return "-"


def rows(
    task: str, organizations: Sequence[int], alphas: Sequence[float], strategies: Sequence[str]
) -> list[Row]:
    found: list[Row] = []
    for count in organizations:
        for alpha in alphas:
            found += [Row(task, count, alpha, s, Protection.NONE) for s in strategies]
            if alpha == SECURE_ALPHA:
                found += [
                    Row(task, count, alpha, s, protection)
                    for protection in (Protection.SECAGG, Protection.PAILLIER)
                    for s in SECURE_STRATEGIES
                    if s in strategies
                ]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=list(TRAINING), choices=list(TRAINING))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--organizations", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--strategies", nargs="+", default=list(BUILTIN_STRATEGIES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"{args.rounds} rounds; local training per task: ", end="")
    print(
        "; ".join(
            f"{name} {TRAINING[name].local_epochs} epoch(s), learning rate "
            f"{TRAINING[name].learning_rate}"
            for name in args.tasks
        )
    )
    print(
        "| task | orgs | alpha | strategy | protection | final accuracy "
        "| rounds to 95% central | central |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        central: dict[tuple[int, float], float] = {}
        for row in rows(task, args.organizations, args.alphas, args.strategies):
            key = (row.organizations, row.alpha)
            if key not in central:
                central[key] = central_accuracy(task, *key, args.rounds, args.seed)
            result = simulate(
                SimulationOptions(
                    task=task,
                    participants=row.organizations,
                    rounds=args.rounds,
                    strategy=row.strategy,
                    split=f"dirichlet:{row.alpha}",
                    seed=args.seed,
                    training=TRAINING[task],
                    protection=row.protection,
                )
            )
            print(
                f"| {task} | {row.organizations} | {row.alpha} | {row.strategy} | "
                f"{row.protection.value} | {result.accuracy[-1]:.3f} | "
                f"{rounds_to(0.95 * central[key], result.accuracy)} | {central[key]:.3f} |",
                flush=True,
            )
    print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
