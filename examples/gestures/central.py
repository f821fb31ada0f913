"""Centrally trained baselines on the SYNTHETIC gestures: people held out, and a random split.

    python -m examples.gestures.central [--organizations 3] [--seed 0 1 2]

Pools the organizations' data (exactly what federation avoids; this exists only to measure what
federation costs) and trains the gestures model for as many epochs as the federated job makes
passes (``local_epochs * rounds``). Two figures per seed:

- ``person-held-out``: trained on the organizations' training people, evaluated on their
  held-out people, the test ``fedsilo demo --task gestures`` reports for the federated model;
- ``random-split``: every sample of every person pooled, shuffled and cut 80/20, so the test
  people were also seen in training, as in the random splits behind most published figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from examples.digits.central import central_baseline
from fedsilo.tasks import EvalResult, LocalData, Task, TrainingSettings

__all__ = ["organization_configs", "random_split_baseline"]


def organization_configs(organizations: int, seed: int) -> list[dict[str, Any]]:
    """The ``task_config`` of each organization, as ``fedsilo demo`` writes it."""
    return [
        {"partition": i, "num_partitions": organizations, "seed": seed}
        for i in range(organizations)
    ]


def random_split_baseline(
    task: Task,
    configs: Sequence[Mapping[str, Any]],
    settings: TrainingSettings,
    rounds: int,
    test_fraction: float = 0.2,
) -> EvalResult:
    """Central training on a random sample split of everyone's data (people seen in both)."""
    parts = [task.load_data(config) for config in configs]
    x = np.concatenate([p.x_train for p in parts] + [p.x_test for p in parts])
    y = np.concatenate([p.y_train for p in parts] + [p.y_test for p in parts])
    order = np.random.default_rng(settings.seed).permutation(y.shape[0])
    cut = int(round(y.shape[0] * (1.0 - test_fraction)))
    pooled = LocalData(
        x_train=x[order[:cut]], y_train=y[order[:cut]], x_test=x[order[cut:]], y_test=y[order[cut:]]
    )
    result = task.train(
        task.initial_weights(settings.seed),
        pooled,
        replace(settings, local_epochs=settings.local_epochs * rounds),
    )
    return task.evaluate(result.weights, pooled)


def main(argv: Sequence[str] | None = None) -> int:
    from examples.gestures.task import default_rounds, default_settings, task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--organizations", type=int, default=3)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=default_rounds)
    args = parser.parse_args(argv)
    for seed in args.seed:
        configs = organization_configs(args.organizations, seed)
        settings = replace(default_settings, seed=seed)
        held_out = central_baseline(task, configs, settings, args.rounds)
        random_split = random_split_baseline(task, configs, settings, args.rounds)
        print(
            f"seed={seed} orgs={args.organizations} epochs={settings.local_epochs * args.rounds} "
            f"central person-held-out={held_out.accuracy:.4f} ({held_out.num_examples} samples) "
            f"random-split={random_split.accuracy:.4f} ({random_split.num_examples} samples)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
