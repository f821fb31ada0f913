"""SYNTHETIC hand-gesture keypoints per organization (people held out), or the user's own CSV files.

The data is generated, not recorded: see ``examples.gestures.hand_model``. Each sample is one
static gesture (``GESTURES``) as 21 3D keypoints in MediaPipe's hand-landmark layout.

How a sample is made, per person (everything seeded, see below):

- the person's hand: bone lengths, knuckle positions, finger fan, left or right hand, hand size;
- the person's own way of making each gesture: a fixed offset from the gesture's joint-angle
  template (some people never quite straighten the pinky, tuck the thumb loosely, ...);
- per sample: joint-angle noise, now and then a pose caught on its way to another gesture,
  a random 3D rotation, distance to the camera, position in the image, landmark noise (more
  in depth, as a monocular tracker has), and occasionally 1-3 keypoints missing (NaN).

Organizations and people: organization ``p`` of ``num_partitions`` has its own
``people_per_organization`` people (person ids ``p * people_per_organization + i``), so no person
appears in two organizations. Each organization also has its own mix of gestures, drawn from
``Dirichlet(alpha)`` over the 7 gestures (non-IID: one site's users mostly point, another's
mostly give a thumbs-up). Of its people, the last ``test_people`` are held out: they contribute
only to the organization's test split, where every gesture appears equally often. Accuracy is
therefore measured on people the model never saw, the figure that matters for a gesture
interface.

Determinism: a person's hand, style and samples depend only on ``(seed, person id)``; the gesture
mix of an organization only on ``(seed, partition)``. Every organization can compute its share on
its own, and shares never overlap.

Preprocessing (``normalise_keypoints``, also applied to CSV files and by ``classify.py``):
wrist-relative coordinates divided by the palm size (mean wrist-to-knuckle distance), missing
keypoints set to 0, flattened to 63 numbers ``x0, y0, z0, ..., x20, y20, z20``.

Real keypoints: a ``task_config`` with ``train_csv`` and ``test_csv`` reads the organization's
own files instead of generating anything. Each row is a label (a gesture name from
``GESTURES`` or its index 0-6) and 63 numbers, the 21 landmarks as MediaPipe reports them
(image or world coordinates; the preprocessing removes position and scale). Empty fields or
``nan`` mark missing landmarks; a first row that is not numeric is taken as a header.

This module needs numpy only.
"""

from __future__ import annotations

import argparse
import csv
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from examples.gestures.hand_model import (
    GESTURES,
    NUM_LANDMARKS,
    POSE_SIZE,
    Pose,
    gesture_template,
    pose_hand,
    random_hand_shape,
    random_rotation,
    to_image_frame,
)
from fedsilo.tasks import LocalData

__all__ = [
    "GESTURES",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "GestureConfig",
    "generate_person",
    "load_partition",
    "normalise_keypoints",
    "organization_gesture_mix",
    "organization_people",
    "parse_gesture_config",
    "read_keypoints_csv",
    "synthetic_organization",
    "write_keypoints_csv",
]

NUM_CLASSES = len(GESTURES)
NUM_FEATURES = NUM_LANDMARKS * 3

# Knuckles used as the scale reference: index, middle, ring and pinky MCP.
_PALM_REFERENCE = (5, 9, 13, 17)
# Spread (degrees) of a person's fixed offset from a gesture template, and of per-sample noise.
_PERSON_STYLE_DEG = 22.0
_SAMPLE_NOISE_DEG = 6.0
# Share of samples caught part of the way to another gesture, and how far at most.
_TRANSITION_SHARE = 0.12
_TRANSITION_MAX = 0.45
# Share of samples with missing keypoints.
_MISSING_SHARE = 0.1
# Landmark noise in palm lengths: in the image plane and (worse, as for a monocular tracker) depth.
_NOISE_XY = 0.03
_NOISE_Z = 0.08

_SYNTHETIC_KEYS = frozenset(
    {
        "partition",
        "num_partitions",
        "seed",
        "people_per_organization",
        "test_people",
        "samples_per_person",
        "alpha",
    }
)
_CSV_KEYS = frozenset({"train_csv", "test_csv"})


@dataclass(frozen=True)
class GestureConfig:
    """Validated ``task_config`` of a gestures organization (synthetic data or CSV files)."""

    partition: int = 0
    num_partitions: int = 1
    seed: int = 0
    people_per_organization: int = 12
    test_people: int = 3
    samples_per_person: int = 140
    alpha: float = 1.0
    train_csv: Path | None = None
    test_csv: Path | None = None


def parse_gesture_config(config: Mapping[str, Any]) -> GestureConfig:
    """Validate a ``task_config`` mapping; raise ``ValueError`` naming the offending key."""
    unknown = sorted(set(config) - _SYNTHETIC_KEYS - _CSV_KEYS)
    if unknown:
        raise ValueError(
            f"task_config: unknown key(s) {unknown}; expected some of "
            f"{sorted(_SYNTHETIC_KEYS | _CSV_KEYS)}"
        )
    if _CSV_KEYS & set(config):
        if not _CSV_KEYS <= set(config):
            raise ValueError("task_config: give both train_csv and test_csv, or neither")
        # Generator settings next to real files would be silently ignored: refuse them instead.
        # (partition, num_partitions and seed are tolerated: a launcher may set them for all.)
        ignored = sorted(set(config) - _CSV_KEYS - {"partition", "num_partitions", "seed"})
        if ignored:
            raise ValueError(f"task_config: {ignored} have no effect with train_csv/test_csv")
        return GestureConfig(
            train_csv=Path(str(config["train_csv"])), test_csv=Path(str(config["test_csv"]))
        )
    if "partition" not in config or "num_partitions" not in config:
        raise ValueError(
            "task_config.partition and task_config.num_partitions are required for the "
            "synthetic data (or give train_csv and test_csv)"
        )
    num_partitions = _int(config, "num_partitions", 1, minimum=1)
    partition = _int(config, "partition", 0, minimum=0)
    if partition >= num_partitions:
        raise ValueError(
            f"task_config.partition must be in [0, {num_partitions - 1}], got {partition}"
        )
    people = _int(config, "people_per_organization", 12, minimum=2)
    test_people = _int(config, "test_people", 3, minimum=1)
    if test_people >= people:
        raise ValueError(
            f"task_config.test_people must be below people_per_organization ({people}), "
            f"got {test_people}"
        )
    samples = _int(config, "samples_per_person", 140, minimum=NUM_CLASSES)
    alpha = config.get("alpha", 1.0)
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, numbers.Real)
        or not 0 < float(alpha) < np.inf
    ):
        raise ValueError(f"task_config.alpha must be a positive number, got {alpha!r}")
    return GestureConfig(
        partition=partition,
        num_partitions=num_partitions,
        seed=_int(config, "seed", 0, minimum=0),
        people_per_organization=people,
        test_people=test_people,
        samples_per_person=samples,
        alpha=float(alpha),
    )


def _int(config: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = config.get(key, default)
    # bool is an int subclass; `partition: true` in YAML is a mistake, not partition 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"task_config.{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"task_config.{key} must be >= {minimum}, got {value}")
    return int(value)


# -- preprocessing ---------------------------------------------------------------------------------


def normalise_keypoints(keypoints: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(n, 21, 3) or (n, 63) keypoints, NaN where missing -> (n, 63) model inputs.

    Wrist-relative, divided by the palm size (mean distance from the wrist to the four finger
    knuckles that are present, or to the farthest keypoint if none is), missing keypoints 0.
    Applying it twice changes nothing.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    if points.ndim == 2 and points.shape[1] == NUM_FEATURES:
        points = points.reshape(-1, NUM_LANDMARKS, 3)
    if points.ndim != 3 or points.shape[1:] != (NUM_LANDMARKS, 3):
        raise ValueError(f"expected keypoints of shape (n, 21, 3) or (n, 63), got {points.shape}")
    present = np.asarray(~np.isnan(points).any(axis=2), dtype=bool)
    if not present[:, 0].all():
        rows = np.flatnonzero(~present[:, 0])[:5].tolist()
        raise ValueError(f"the wrist (landmark 0) is missing in row(s) {rows}")
    relative = points - points[:, :1, :]
    distances = np.linalg.norm(np.where(present[..., None], relative, 0.0), axis=2)
    knuckles = present[:, _PALM_REFERENCE]
    knuckle_sum = (distances[:, _PALM_REFERENCE] * knuckles).sum(axis=1)
    scale = np.where(
        knuckles.any(axis=1),
        knuckle_sum / np.maximum(knuckles.sum(axis=1), 1),
        distances.max(axis=1),
    )
    if not (scale > 0).all():
        rows = np.flatnonzero(~(scale > 0))[:5].tolist()
        raise ValueError(f"every keypoint sits on the wrist in row(s) {rows}: no hand size")
    normalised = np.where(present[..., None], relative / scale[:, None, None], 0.0)
    return normalised.reshape(-1, NUM_FEATURES).astype(np.float32)


# -- synthetic people and organizations ------------------------------------------------------------


def organization_people(config: GestureConfig) -> tuple[list[int], list[int]]:
    """Person ids of an organization: (training people, held-out test people)."""
    first = config.partition * config.people_per_organization
    ids = list(range(first, first + config.people_per_organization))
    cut = config.people_per_organization - config.test_people
    return ids[:cut], ids[cut:]


def organization_gesture_mix(seed: int, partition: int, alpha: float) -> npt.NDArray[np.float64]:
    """The organization's share of each gesture among its training samples (sums to 1)."""
    rng = np.random.default_rng([seed, 1, partition])
    mix: npt.NDArray[np.float64] = rng.dirichlet(np.full(NUM_CLASSES, alpha))
    return mix


def generate_person(
    seed: int, person: int, counts: Sequence[int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Raw keypoints (n, 21, 3), NaN where missing, and labels of one person's samples.

    ``counts[g]`` samples of gesture ``g``. The person (hand, style) depends only on
    ``(seed, person)``; asking for more samples extends, never changes, the earlier ones of a
    gesture.
    """
    if len(counts) != NUM_CLASSES:
        raise ValueError(f"need one count per gesture ({NUM_CLASSES}), got {len(counts)}")
    person_rng = np.random.default_rng([seed, 0, person])
    shape = random_hand_shape(person_rng)
    hand_size = person_rng.lognormal(np.log(0.12), 0.1)
    style = person_rng.normal(0.0, _PERSON_STYLE_DEG, (NUM_CLASSES, POSE_SIZE)) * _pose_units()
    keypoints: list[npt.NDArray[np.float64]] = []
    labels: list[int] = []
    for gesture, count in enumerate(counts):
        template = gesture_template(GESTURES[gesture]).as_vector()
        own = template + style[gesture]
        # One stream per (person, gesture): counts of other gestures do not shift this one.
        rng = np.random.default_rng([seed, 2, person, gesture])
        for _ in range(count):
            angles = own + rng.normal(0.0, _SAMPLE_NOISE_DEG, POSE_SIZE) * _pose_units()
            if rng.random() < _TRANSITION_SHARE:
                other = rng.choice([g for g in range(NUM_CLASSES) if g != gesture])
                target = gesture_template(GESTURES[other]).as_vector()
                angles = angles + rng.uniform(0.0, _TRANSITION_MAX) * (target - angles)
            points = pose_hand(shape, Pose.from_vector(angles))
            size = hand_size * rng.uniform(0.6, 1.4)  # distance to the camera
            origin = (rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), 0.0)
            image = to_image_frame(
                points, left=shape.left, rotation=random_rotation(rng), size=size, origin=origin
            )
            image += (
                rng.normal(0.0, 1.0, image.shape)
                * np.array([_NOISE_XY, _NOISE_XY, _NOISE_Z])
                * size
            )
            if rng.random() < _MISSING_SHARE:
                missing = rng.choice(np.arange(1, NUM_LANDMARKS), rng.integers(1, 4), replace=False)
                image[missing] = np.nan
            keypoints.append(image)
            labels.append(gesture)
    if not keypoints:
        return np.zeros((0, NUM_LANDMARKS, 3)), np.zeros(0, dtype=np.int64)
    return np.stack(keypoints), np.asarray(labels, dtype=np.int64)


def _pose_units() -> npt.NDArray[np.float64]:
    """Noise scale of each pose value per degree: splay is a multiplier and the thumb's spread
    and pull are shares in [0, 1], not angles."""
    units = np.ones(POSE_SIZE)
    units[12], units[13], units[17] = 1 / 60.0, 1 / 90.0, 1 / 90.0
    return units


@dataclass(frozen=True)
class SyntheticOrganization:
    """Raw keypoints of one organization with the person behind every sample."""

    train_keypoints: npt.NDArray[np.float64]
    train_labels: npt.NDArray[np.int64]
    train_people: npt.NDArray[np.int64]
    test_keypoints: npt.NDArray[np.float64]
    test_labels: npt.NDArray[np.int64]
    test_people: npt.NDArray[np.int64]


def synthetic_organization(config: GestureConfig) -> SyntheticOrganization:
    """Generate one organization's people: its gesture mix for training, balanced for test."""
    train_ids, test_ids = organization_people(config)
    mix = organization_gesture_mix(config.seed, config.partition, config.alpha)
    counts_rng = np.random.default_rng([config.seed, 3, config.partition])
    balanced = np.full(NUM_CLASSES, config.samples_per_person // NUM_CLASSES)

    def people(ids: list[int], counts_of: Any) -> tuple[Any, Any, Any]:
        xs, ys, who = [], [], []
        for person in ids:
            x, y = generate_person(config.seed, person, counts_of())
            xs.append(x)
            ys.append(y)
            who.append(np.full(y.shape[0], person, dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(who)

    x_train, y_train, p_train = people(
        train_ids, lambda: counts_rng.multinomial(config.samples_per_person, mix)
    )
    x_test, y_test, p_test = people(test_ids, lambda: balanced)
    return SyntheticOrganization(x_train, y_train, p_train, x_test, y_test, p_test)


# -- CSV -------------------------------------------------------------------------------------------


def read_keypoints_csv(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]:
    """Rows of 63 numbers, or of a label and 63 numbers -> raw keypoints (n, 21, 3), labels.

    Labels are gesture names or indices; labels is None when the file has none. Empty fields and
    ``nan`` are missing keypoints. A first row that does not end in a number is a header.
    """
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if rows and not _numeric(rows[0][-1:]):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no keypoint rows")
    widths = {len(row) for row in rows}
    if widths not in ({NUM_FEATURES}, {NUM_FEATURES + 1}):
        raise ValueError(
            f"{path}: every row must have 63 numbers, or a label and 63 numbers; "
            f"found rows of {sorted(widths)} fields"
        )
    labelled = widths == {NUM_FEATURES + 1}
    values = np.array(
        [[_number(cell, path, i) for cell in row[-NUM_FEATURES:]] for i, row in enumerate(rows)]
    )
    labels = (
        np.array([_label(row[0], path, i) for i, row in enumerate(rows)], dtype=np.int64)
        if labelled
        else None
    )
    return values.reshape(-1, NUM_LANDMARKS, 3), labels


def _numeric(cells: Sequence[str]) -> bool:
    try:
        [float(cell) for cell in cells if cell.strip()]
    except ValueError:
        return False
    return True


def _number(cell: str, path: Path, row: int) -> float:
    text = cell.strip()
    if not text:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: row {row + 1}: {cell!r} is not a number") from None
    if np.isinf(value):
        raise ValueError(f"{path}: row {row + 1}: infinite coordinate")
    return value


def _label(cell: str, path: Path, row: int) -> int:
    text = cell.strip()
    if text in GESTURES:
        return GESTURES.index(text)
    if text.isdigit() and int(text) < NUM_CLASSES:
        return int(text)
    raise ValueError(
        f"{path}: row {row + 1}: label {cell!r} is neither one of {list(GESTURES)} nor 0-6"
    )


def write_keypoints_csv(
    path: Path, keypoints: npt.ArrayLike, labels: npt.ArrayLike | None = None
) -> None:
    """Write raw keypoints (n, 21, 3) with gesture-name labels, in the format read above."""
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_FEATURES)
    header = [f"{axis}{i}" for i in range(NUM_LANDMARKS) for axis in "xyz"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow((["label"] if labels is not None else []) + header)
        names = [GESTURES[int(g)] for g in np.asarray(labels)] if labels is not None else None
        for i, row in enumerate(points):
            cells = ["" if np.isnan(v) else f"{v:.6f}" for v in row]
            writer.writerow(([names[i]] if names is not None else []) + cells)


# -- the task's entry point ------------------------------------------------------------------------


def load_partition(config: Mapping[str, Any]) -> LocalData:
    """This organization's train and person-held-out test data, from its ``task_config``."""
    cfg = parse_gesture_config(config)
    if cfg.train_csv is not None and cfg.test_csv is not None:
        splits = []
        for path in (cfg.train_csv, cfg.test_csv):
            keypoints, labels = read_keypoints_csv(path)
            if labels is None:
                raise ValueError(f"{path}: training and test files need a label in every row")
            splits.append((normalise_keypoints(keypoints), labels))
        (x_train, y_train), (x_test, y_test) = splits
        return LocalData(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    org = synthetic_organization(cfg)
    return LocalData(
        x_train=normalise_keypoints(org.train_keypoints),
        y_train=org.train_labels,
        x_test=normalise_keypoints(org.test_keypoints),
        y_test=org.test_labels,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Write one organization's SYNTHETIC keypoints to a CSV file (raw, as a tracker gives them)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path, help="CSV file to write")
    parser.add_argument("--split", choices=["train", "test"], default="test")
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--num-partitions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-labels", action="store_true", help="omit the label column")
    args = parser.parse_args(argv)
    cfg = parse_gesture_config(
        {"partition": args.partition, "num_partitions": args.num_partitions, "seed": args.seed}
    )
    org = synthetic_organization(cfg)
    if args.split == "train":
        keypoints, labels = org.train_keypoints, org.train_labels
    else:
        keypoints, labels = org.test_keypoints, org.test_labels
    write_keypoints_csv(args.out, keypoints, None if args.no_labels else labels)
    print(f"wrote {keypoints.shape[0]} synthetic {args.split} samples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
