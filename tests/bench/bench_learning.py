"""Learning quality under label skew: every built-in strategy over simulated organizations,
beside central training on the pooled data with the same model and epochs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from the repository root
    sys.path.insert(0, str(ROOT))

from fedsilo.cli.simulate import SimulationOptions, simulate  # noqa: E402
from fedsilo.strategies import BUILTIN_STRATEGIES  # noqa: E402
from fedsilo.tasks import TrainingSettings, as_float32, load_task  # noqa: E402

TRAINING = TrainingSettings(local_epochs=1, batch_size=32, learning_rate=0.1, seed=0)


def central_accuracy(task_name: str, rounds: int, seed: int) -> float:
    """Pooled data (one organization holding every example), trained for as many epochs as a
    federated run trains locally in total per example."""
    task = load_task(task_name)
    data = task.load_data({"partition": 0, "num_partitions": 1, "skew": "iid"})
    weights = as_float32(task.initial_weights(seed))
    settings = TrainingSettings(
        local_epochs=rounds * TRAINING.local_epochs,
        batch_size=TRAINING.batch_size,
        learning_rate=TRAINING.learning_rate,
        seed=TRAINING.seed,
    )
    trained = task.train(weights, data, settings)
    return task.evaluate(as_float32(trained.weights), data).accuracy


def rounds_to(target: float, accuracy: Sequence[float]) -> str:
    for number, value in enumerate(accuracy, start=1):
        if value >= target:
            return str(number)
    return "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="digits-linear")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--organizations", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    central = central_accuracy(args.task, args.rounds, args.seed)
    print(f"task {args.task}, {args.rounds} rounds of {TRAINING.local_epochs} local epoch(s)")
    header = "| orgs | alpha | strategy | protection | final accuracy | rounds to 95% central |"
    print(header + " central |")
    print("|---|---|---|---|---|---|---|")
    for organizations in args.organizations:
        for alpha in args.alphas:
            for strategy in BUILTIN_STRATEGIES:
                result = simulate(
                    SimulationOptions(
                        task=args.task,
                        participants=organizations,
                        rounds=args.rounds,
                        strategy=strategy,
                        split=f"dirichlet:{alpha}",
                        seed=args.seed,
                        training=TRAINING,
                    )
                )
                print(
                    f"| {organizations} | {alpha} | {strategy} | none | "
                    f"{result.accuracy[-1]:.3f} | {rounds_to(0.95 * central, result.accuracy)} "
                    f"| {central:.3f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
