"""Tests for the deterministic non-IID partitioning of the digits data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from examples.digits.data import (
    MIN_PARTITION_SIZE,
    NUM_CLASSES,
    concat_local_data,
    load_digits_arrays,
    load_partition,
    parse_partition_config,
    partition_indices,
)

N_DIGITS = 1797


def _label_distribution(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    return counts / counts.sum()


def _total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def test_dataset_is_scaled_digits() -> None:
    x, y = load_digits_arrays()
    assert x.shape == (N_DIGITS, 64) and x.dtype == np.float32
    assert y.shape == (N_DIGITS,) and set(np.unique(y)) == set(range(NUM_CLASSES))
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("skew", ["label", "iid"])
@pytest.mark.parametrize("num_partitions", [1, 2, 3, 7])
def test_partitions_are_disjoint_and_cover_everything(skew: str, num_partitions: int) -> None:
    _, y = load_digits_arrays()
    parts = partition_indices(y, num_partitions, seed=3, skew=skew)
    assert len(parts) == num_partitions
    assert all(p.shape[0] >= MIN_PARTITION_SIZE for p in parts)
    joined = np.concatenate(parts)
    assert joined.shape[0] == N_DIGITS  # no index twice ...
    np.testing.assert_array_equal(np.sort(joined), np.arange(N_DIGITS))  # ... and none missing


@pytest.mark.parametrize("seed", range(5))
def test_label_skew_is_real(seed: int) -> None:
    _, y = load_digits_arrays()
    overall = _label_distribution(y)
    label_parts = partition_indices(y, 3, seed=seed, skew="label")
    iid_parts = partition_indices(y, 3, seed=seed, skew="iid")
    label_tv = [_total_variation(_label_distribution(y[p]), overall) for p in label_parts]
    iid_tv = [_total_variation(_label_distribution(y[p]), overall) for p in iid_parts]
    # Dirichlet(0.5) over 3 organizations: every organization's mix is far from the pooled one,
    # while an IID cut stays close to it.
    assert min(label_tv) > 0.15, label_tv
    assert max(iid_tv) < 0.08, iid_tv
    # Some organization holds most of some class.
    shares = np.stack([np.bincount(y[p], minlength=NUM_CLASSES) for p in label_parts])
    assert (shares / shares.sum(axis=0)).max() > 0.6


def test_local_data_splits_the_partition_into_train_and_stratified_test() -> None:
    _, y = load_digits_arrays()
    parts = partition_indices(y, 3, seed=0)
    datasets = [load_partition({"partition": i, "num_partitions": 3}) for i in range(3)]
    for part, data in zip(parts, datasets, strict=True):
        assert data.num_train + data.num_test == part.shape[0]
        assert abs(data.num_test - 0.2 * part.shape[0]) <= 1
        assert data.x_train.dtype == np.float32 and data.x_train.shape[1] == 64
        # Each class lands in the test split in proportion to its share of the partition.
        train_counts = np.bincount(data.y_train, minlength=NUM_CLASSES)
        test_counts = np.bincount(data.y_test, minlength=NUM_CLASSES)
        expected = 0.2 * (train_counts + test_counts)
        assert np.all(np.abs(test_counts - expected) <= 1.5)
        # Train and test are exactly the partition's examples, each used once.
        x_all, _ = load_digits_arrays()
        split_rows = sorted(row.tobytes() for row in np.concatenate([data.x_train, data.x_test]))
        assert split_rows == sorted(row.tobytes() for row in x_all[part])
    pooled = concat_local_data(datasets)
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([pooled.y_train, pooled.y_test]), minlength=NUM_CLASSES),
        np.bincount(y, minlength=NUM_CLASSES),
    )


def test_partitioning_is_deterministic_and_seed_dependent() -> None:
    config = {"partition": 1, "num_partitions": 3, "seed": 7}
    first, second = load_partition(config), load_partition(dict(config))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    other = load_partition({**config, "seed": 8})
    assert other.num_train != first.num_train or not np.array_equal(other.y_train, first.y_train)


def test_defaults_are_label_skew_seed_0_and_a_fifth_held_out() -> None:
    cfg = parse_partition_config({"partition": 0, "num_partitions": 2})
    assert (cfg.seed, cfg.skew, cfg.test_fraction) == (0, "label", 0.2)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"num_partitions": 3}, "partition"),
        ({"partition": 0}, "num_partitions"),
        ({"partition": 3, "num_partitions": 3}, "partition"),
        ({"partition": -1, "num_partitions": 3}, "partition"),
        ({"partition": 0, "num_partitions": 0}, "num_partitions"),
        ({"partition": "0", "num_partitions": 3}, "partition"),
        ({"partition": True, "num_partitions": 3}, "partition"),
        ({"partition": 0, "num_partitions": 3, "skew": "feature"}, "skew"),
        ({"partition": 0, "num_partitions": 3, "seed": -1}, "seed"),
        ({"partition": 0, "num_partitions": 3, "seed": 1.5}, "seed"),
        ({"partition": 0, "num_partitions": 3, "test_fraction": 1.0}, "test_fraction"),
        ({"partition": 0, "num_partitions": 3, "test_fraction": 0}, "test_fraction"),
        ({"partition": 0, "num_partitions": 3, "alpha": 0.0}, "alpha"),
        ({"partition": 0, "num_partitions": 3, "alpha": float("nan")}, "alpha"),
        ({"partition": 0, "num_partitions": 3, "partitions": 3}, "partitions"),
    ],
)
def test_bad_config_raises_naming_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        load_partition(config)


def test_too_many_partitions_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="num_partitions"):
        load_partition({"partition": 0, "num_partitions": N_DIGITS // MIN_PARTITION_SIZE + 1})


@pytest.mark.parametrize("skew", ["label", "iid"])
def test_smaller_shares_split_the_digits_among_100_organizations(skew: str) -> None:
    _, y = load_digits_arrays()
    parts = partition_indices(y, 100, seed=0, skew=skew, alpha=1.0, min_size=10)
    assert len(parts) == 100 and min(p.shape[0] for p in parts) >= 10
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(N_DIGITS))
    config = {"partition": 99, "num_partitions": 100, "min_partition_size": 10, "skew": skew}
    local = load_partition({**config, "alpha": 1.0})
    assert local.x_train.shape[0] >= 1 and local.x_test.shape[0] >= 1
    with pytest.raises(ValueError, match="min_partition_size"):
        load_partition({"partition": 0, "num_partitions": 2, "min_partition_size": 1})


def test_the_default_share_size_is_unchanged_by_the_option() -> None:
    _, y = load_digits_arrays()
    default = partition_indices(y, 3, seed=4)
    explicit = partition_indices(y, 3, seed=4, min_size=MIN_PARTITION_SIZE)
    for a, b in zip(default, explicit, strict=True):
        np.testing.assert_array_equal(a, b)


def test_concat_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        concat_local_data([])
