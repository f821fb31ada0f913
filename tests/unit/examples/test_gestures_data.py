"""The SYNTHETIC gesture keypoints: shapes, determinism, normalisation, people held out, non-IID."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from examples.gestures.data import (
    GESTURES,
    NUM_FEATURES,
    generate_person,
    load_partition,
    normalise_keypoints,
    organization_gesture_mix,
    parse_gesture_config,
    read_keypoints_csv,
    synthetic_organization,
    write_keypoints_csv,
)
from examples.gestures.hand_model import gesture_template, pose_hand, random_hand_shape

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"people_per_organization": 4, "test_people": 1, "samples_per_person": 35}


def _config(partition: int, num_partitions: int = 3, seed: int = 0, **extra: object) -> dict:
    return {
        "partition": partition,
        "num_partitions": num_partitions,
        "seed": seed,
        **SMALL,
        **extra,
    }


def test_partition_shapes_dtypes_and_labels() -> None:
    data = load_partition(_config(0))
    assert data.x_train.shape == (3 * 35, NUM_FEATURES) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (35, NUM_FEATURES) and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert set(np.unique(np.concatenate([data.y_train, data.y_test]))) <= set(range(len(GESTURES)))
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_test).all()
    # Held-out people show every gesture equally often.
    assert np.bincount(data.y_test, minlength=7).tolist() == [5] * 7


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again = load_partition(_config(1)), load_partition(_config(1))
    assert np.array_equal(first.x_train, again.x_train)
    assert np.array_equal(first.y_train, again.y_train)
    assert np.array_equal(first.x_test, again.x_test)
    other = load_partition(_config(1, seed=1))
    assert not np.array_equal(first.x_train[:10], other.x_train[:10])


def test_a_person_does_not_depend_on_the_other_gestures_counts() -> None:
    x_few, _ = generate_person(0, 5, [2, 0, 0, 0, 0, 0, 0])
    x_more, y_more = generate_person(0, 5, [3, 4, 0, 0, 0, 0, 1])
    assert np.array_equal(x_few, x_more[:2], equal_nan=True)
    assert y_more.tolist() == [0, 0, 0, 1, 1, 1, 1, 6]


def test_keypoints_are_wrist_relative_and_scale_normalised() -> None:
    x = load_partition(_config(0)).x_train.reshape(-1, 21, 3)
    assert np.all(x[:, 0] == 0.0)
    complete = ~(x[:, 1:] == 0.0).all(axis=2).any(axis=1)
    palm = np.linalg.norm(x[complete][:, [5, 9, 13, 17]], axis=2).mean(axis=1)
    assert np.allclose(palm, 1.0, atol=1e-5)


def test_normalisation_removes_position_scale_and_is_idempotent() -> None:
    raw, _ = generate_person(0, 0, [1, 1, 1, 1, 1, 1, 1])
    moved = raw * 3.5 + np.array([10.0, -4.0, 2.0])
    once = normalise_keypoints(raw)
    assert np.allclose(normalise_keypoints(moved), once, atol=1e-5)
    assert np.allclose(normalise_keypoints(once), once, atol=1e-6)
    with pytest.raises(ValueError, match="wrist"):
        normalise_keypoints(np.full((1, 21, 3), np.nan))


def test_some_keypoints_are_missing_and_become_zero() -> None:
    raw, _ = generate_person(0, 2, [20] * 7)
    missing_rows = np.isnan(raw).any(axis=(1, 2))
    assert 0 < missing_rows.sum() < 0.3 * raw.shape[0]
    assert not np.isnan(raw[:, 0]).any()
    x = normalise_keypoints(raw).reshape(-1, 21, 3)
    assert np.all(x[np.isnan(raw)] == 0.0)


def test_people_are_held_out_and_never_shared_between_organizations() -> None:
    people_train, people_test = [], []
    for partition in range(3):
        org = synthetic_organization(parse_gesture_config(_config(partition)))
        train, test = set(org.train_people.tolist()), set(org.test_people.tolist())
        assert len(train) == 3 and len(test) == 1
        assert train.isdisjoint(test)
        people_train.append(train)
        people_test.append(test)
    everyone = [p for group in people_train + people_test for p in group]
    assert len(everyone) == len(set(everyone)) == 12


def test_organizations_have_different_gesture_mixes() -> None:
    mixes = [organization_gesture_mix(0, partition, 1.0) for partition in range(3)]
    assert all(np.isclose(m.sum(), 1.0) for m in mixes)
    counts = [
        np.bincount(load_partition(_config(p, samples_per_person=140)).y_train, minlength=7)
        for p in range(3)
    ]
    shares = [c / c.sum() for c in counts]
    # Total variation distance between organizations' label distributions: clearly non-IID.
    assert min(0.5 * np.abs(a - b).sum() for a in shares for b in shares if a is not b) > 0.2
    # A small alpha concentrates each organization on few gestures.
    assert all((organization_gesture_mix(0, p, 0.05) > 0.05).sum() <= 3 for p in range(3))


def test_gestures_differ_in_the_hand_model() -> None:
    shape = random_hand_shape(np.random.default_rng(0))
    poses = {g: pose_hand(shape, gesture_template(g)) for g in GESTURES}
    # Index tip far from the wrist when pointing, close in a fist; thumb meets index for OK.
    assert np.linalg.norm(poses["point"][8]) > 1.5 * np.linalg.norm(poses["fist"][8])
    assert np.linalg.norm(poses["ok"][4] - poses["ok"][8]) < 0.05
    assert np.linalg.norm(poses["call"][20]) > 1.5 * np.linalg.norm(poses["fist"][20])
    assert np.linalg.norm(poses["thumbs_up"][4] - poses["fist"][4]) > 0.3


def test_csv_round_trip_and_task_config_reads_user_files(tmp_path: Path) -> None:
    org = synthetic_organization(parse_gesture_config(_config(0)))
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    write_keypoints_csv(train_csv, org.train_keypoints, org.train_labels)
    write_keypoints_csv(test_csv, org.test_keypoints, org.test_labels)
    keypoints, labels = read_keypoints_csv(train_csv)
    assert labels is not None and np.array_equal(labels, org.train_labels)
    assert np.allclose(keypoints, org.train_keypoints, atol=1e-6, equal_nan=True)
    from_files = load_partition({"train_csv": str(train_csv), "test_csv": str(test_csv)})
    generated = load_partition(_config(0))
    assert np.allclose(from_files.x_train, generated.x_train, atol=1e-4)
    assert np.array_equal(from_files.y_test, generated.y_test)
    # Numeric labels and no header work too.
    plain = tmp_path / "plain.csv"
    plain.write_text("3," + ",".join(["0.5"] * 3 + ["0.6"] * 60) + "\n")
    _, plain_labels = read_keypoints_csv(plain)
    assert plain_labels is not None and plain_labels.tolist() == [3]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"partition": 0}, "required"),
        ({"partition": 3, "num_partitions": 3}, "partition"),
        ({"partition": 0, "num_partitions": 1, "colour": 1}, "unknown"),
        ({"partition": 0, "num_partitions": 1, "test_people": 12}, "test_people"),
        ({"partition": True, "num_partitions": 1}, "integer"),
        ({"partition": 0, "num_partitions": 1, "alpha": 0}, "alpha"),
        ({"train_csv": "a.csv"}, "both"),
        ({"train_csv": "a.csv", "test_csv": "b.csv", "alpha": 1.0}, "no effect"),
    ],
)
def test_bad_task_config_is_refused(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gesture_config(config)


def test_bad_csv_rows_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("fist,1,2,3\n")
    with pytest.raises(ValueError, match="63 numbers"):
        read_keypoints_csv(short)
    bad_label = tmp_path / "label.csv"
    bad_label.write_text("wave," + ",".join(["0.1"] * 63) + "\n")
    with pytest.raises(ValueError, match="label"):
        read_keypoints_csv(bad_label)


def test_the_task_is_registered_and_importing_it_does_not_load_tensorflow() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["fedsilo.tasks"]["gestures"] == (
        "examples.gestures.task:task"
    )
    assert any(
        "ai-edge-litert" in dep for dep in pyproject["project"]["optional-dependencies"]["tf"]
    )
    probe = (
        "import sys, json, examples.gestures.task, examples.gestures.classify, "
        "examples.gestures.central; from fedsilo.tasks import Task; "
        "assert isinstance(examples.gestures.task.task, Task); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'ai_edge_litert'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
