"""Deterministic non-IID partitioning of scikit-learn's handwritten digits across organizations.

Every organization runs ``load_partition`` with the same ``seed`` and ``num_partitions`` and its
own ``partition`` index. The whole split is recomputed identically everywhere from those values,
so the organizations' shares are disjoint and together cover the 1,797 images without anyone
exchanging indices.

Partitioning schemes (``skew``):

- ``"label"`` (default): Dirichlet label skew (Hsu et al. 2019, "Measuring the Effects of
  Non-Identical Data Distribution", the scheme behind Flower's ``DirichletPartitioner``). For
  each class, the share of its images given to each organization is drawn from
  ``Dirichlet(alpha, ..., alpha)``; small ``alpha`` (default 0.5) means each organization holds
  most of a few classes and little of the others. Draws that would leave an organization with
  fewer than ``MIN_PARTITION_SIZE`` images (or the ``task_config``'s ``min_partition_size``)
  are redrawn (from the same seeded stream, so still deterministic).
- ``"iid"``: a seeded shuffle cut into near-equal parts.

Inside each organization a held-out test split of ``test_fraction`` is taken, stratified by
label, so the union of the organizations' test splits follows the pooled label distribution.

This module needs numpy and scikit-learn only; both the Keras task and the numpy task use it.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.tasks import LocalData

__all__ = [
    "MIN_PARTITION_SIZE",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "SKEWS",
    "PartitionConfig",
    "concat_local_data",
    "load_digits_arrays",
    "load_partition",
    "parse_partition_config",
    "partition_indices",
]

NUM_CLASSES = 10
NUM_FEATURES = 64
SKEWS = ("label", "iid")
# Smallest share worth training on; also guarantees a non-empty train and test split.
MIN_PARTITION_SIZE = 20
# The smallest a task_config may ask for (min_partition_size): one train and one test example.
_SMALLEST_PARTITION = 2
# Redraws allowed before giving up on a Dirichlet split that keeps every share large enough.
_MAX_DIRICHLET_DRAWS = 1000
_KNOWN_KEYS = frozenset(
    {"partition", "num_partitions", "seed", "skew", "alpha", "test_fraction", "min_partition_size"}
)


@dataclass(frozen=True)
class PartitionConfig:
    """Validated ``task_config`` of a digits organization."""

    partition: int
    num_partitions: int
    seed: int = 0
    skew: str = "label"
    alpha: float = 0.5
    test_fraction: float = 0.2
    min_partition_size: int = MIN_PARTITION_SIZE


def parse_partition_config(config: Mapping[str, Any]) -> PartitionConfig:
    """Validate a ``task_config`` mapping; raise ``ValueError`` naming the offending key."""
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(
            f"task_config: unknown key(s) {unknown}; expected some of {sorted(_KNOWN_KEYS)}"
        )
    if "partition" not in config:
        raise ValueError("task_config.partition is required (0-based index of this organization)")
    if "num_partitions" not in config:
        raise ValueError("task_config.num_partitions is required (number of organizations)")
    num_partitions = _int(config, "num_partitions")
    if num_partitions < 1:
        raise ValueError(f"task_config.num_partitions must be >= 1, got {num_partitions}")
    partition = _int(config, "partition")
    if not 0 <= partition < num_partitions:
        raise ValueError(
            f"task_config.partition must be in [0, {num_partitions - 1}] "
            f"(num_partitions={num_partitions}), got {partition}"
        )
    seed = _int(config, "seed", 0)
    if seed < 0:
        raise ValueError(f"task_config.seed must be >= 0, got {seed}")
    skew = config.get("skew", "label")
    if skew not in SKEWS:
        raise ValueError(f"task_config.skew must be one of {list(SKEWS)}, got {skew!r}")
    alpha = _float(config, "alpha", 0.5)
    if not alpha > 0:
        raise ValueError(f"task_config.alpha must be > 0, got {alpha}")
    test_fraction = _float(config, "test_fraction", 0.2)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"task_config.test_fraction must be in (0, 1), got {test_fraction}")
    # Smaller shares let more organizations split the 1,797 images (e.g. 100 of at least 10).
    min_size = _int(config, "min_partition_size", MIN_PARTITION_SIZE)
    if min_size < _SMALLEST_PARTITION:
        raise ValueError(
            f"task_config.min_partition_size must be >= {_SMALLEST_PARTITION}, got {min_size}"
        )
    return PartitionConfig(
        partition=partition,
        num_partitions=num_partitions,
        seed=seed,
        skew=skew,
        alpha=alpha,
        test_fraction=test_fraction,
        min_partition_size=min_size,
    )


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    # bool is an int subclass; `partition: true` in YAML is a mistake, not partition 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"task_config.{key} must be an integer, got {value!r}")
    return int(value)


def _float(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"task_config.{key} must be a number, got {value!r}")
    result = float(value)
    if not np.isfinite(result):
        raise ValueError(f"task_config.{key} must be finite, got {value!r}")
    return result


@functools.cache
def _digits() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are integers 0..16; [0, 1] keeps inputs on the scale the models are tuned for.
    x = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    # Cached arrays are shared between callers: make accidental in-place edits fail loudly.
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits_arrays() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """All 1,797 digits: ``x`` float32 of shape (n, 64) in [0, 1], ``y`` int64 labels 0..9."""
    return _digits()


def partition_indices(
    labels: npt.NDArray[np.integer[Any]],
    num_partitions: int,
    *,
    seed: int = 0,
    skew: str = "label",
    alpha: float = 0.5,
    min_size: int = MIN_PARTITION_SIZE,
) -> list[npt.NDArray[np.int64]]:
    """Split ``range(len(labels))`` into ``num_partitions`` disjoint, sorted index arrays of at
    least ``min_size`` each."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if skew not in SKEWS:
        raise ValueError(f"skew must be one of {list(SKEWS)}, got {skew!r}")
    labels = np.asarray(labels)
    if num_partitions * min_size > labels.shape[0]:
        raise ValueError(
            f"num_partitions={num_partitions} is too large for {labels.shape[0]} examples "
            f"(each organization needs at least {min_size})"
        )
    rng = np.random.default_rng(seed)
    if skew == "iid":
        parts = np.array_split(rng.permutation(labels.shape[0]), num_partitions)
    else:
        parts = _dirichlet_parts(labels, num_partitions, alpha, rng, min_size)
    return [np.sort(part).astype(np.int64) for part in parts]


def _dirichlet_parts(
    labels: npt.NDArray[np.integer[Any]],
    num_partitions: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int,
) -> list[npt.NDArray[np.int64]]:
    classes = np.unique(labels)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * members.shape[0]).astype(np.int64)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.append(chunk)
        merged = [np.concatenate(chunks) for chunks in parts]
        if min(chunk.shape[0] for chunk in merged) >= min_size:
            return merged
    raise ValueError(
        f"could not draw a Dirichlet(alpha={alpha}) split into {num_partitions} partitions of at "
        f"least {min_size} examples; use fewer partitions or a larger alpha"
    )


def _stratified_test_mask(
    labels: npt.NDArray[np.integer[Any]], test_fraction: float, rng: np.random.Generator
) -> npt.NDArray[np.bool_]:
    n = labels.shape[0]
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    # Shuffle, then group by label (stable sort keeps the shuffled order inside each class) and
    # take evenly spaced positions: every class contributes in proportion, with an exact total.
    order = rng.permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]
    picks = ((np.arange(n_test) + 0.5) * n / n_test).astype(np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[order[picks]] = True
    return mask


def load_partition(config: Mapping[str, Any]) -> LocalData:
    """This organization's train and held-out test data, from its ``task_config``."""
    cfg = parse_partition_config(config)
    x, y = load_digits_arrays()
    parts = partition_indices(
        y,
        cfg.num_partitions,
        seed=cfg.seed,
        skew=cfg.skew,
        alpha=cfg.alpha,
        min_size=cfg.min_partition_size,
    )
    own = parts[cfg.partition]
    # A per-partition stream: the test split of one organization does not depend on how many
    # random numbers the partitioning of the others consumed.
    rng = np.random.default_rng([cfg.seed, cfg.partition])
    test = _stratified_test_mask(y[own], cfg.test_fraction, rng)
    return LocalData(
        x_train=x[own[~test]],
        y_train=y[own[~test]],
        x_test=x[own[test]],
        y_test=y[own[test]],
    )


def concat_local_data(parts: list[LocalData]) -> LocalData:
    """Pool several organizations' data (for a centrally trained baseline, never in production)."""
    if not parts:
        raise ValueError("need at least one LocalData to pool")
    return LocalData(
        x_train=np.concatenate([p.x_train for p in parts]),
        y_train=np.concatenate([p.y_train for p in parts]),
        x_test=np.concatenate([p.x_test for p in parts]),
        y_test=np.concatenate([p.y_test for p in parts]),
    )
