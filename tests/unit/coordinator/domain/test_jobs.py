"""JobSpec validation: the defaults pass, and each bad field is named in the error."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from coordinator.domain.jobs import JobSpec, SecAggSettings
from coordinator.errors import CoordinatorError, InvalidRequest
from fedsilo.protection import Protection
from fedsilo.strategies import StrategyParameters
from fedsilo.tasks import TrainingSettings


def spec(**changes: Any) -> JobSpec:
    return dataclasses.replace(JobSpec(name="digits", task_name="digits-linear"), **changes)


def plan(**changes: Any) -> TrainingSettings:
    return dataclasses.replace(TrainingSettings(), **changes)


def secagg(**changes: Any) -> SecAggSettings:
    return dataclasses.replace(SecAggSettings(), **changes)


def test_defaults_are_valid() -> None:
    spec().validate()


def test_secure_aggregation_is_the_default_protection() -> None:
    assert spec().protection is Protection.SECAGG


def test_the_threshold_is_at_least_two_thirds_of_the_cohort() -> None:
    # secure_threshold(n) = max(ceil(2n/3), n // 2 + 1), what participants accept by default.
    assert [SecAggSettings().threshold_for(n) for n in (2, 3, 4, 5, 6, 7, 9)] == [
        2,
        2,
        3,
        4,
        4,
        5,
        6,
    ]
    assert secagg(threshold=5).threshold_for(5) == 5
    assert secagg(threshold=2).threshold_for(6) == 4


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "n" * 200},
        {"task_name": "t" * 200},
        {"num_rounds": 1},
        {"num_rounds": 100_000},
        {"min_participants": 1, "protection": Protection.NONE},
        {"min_participants": 10_000, "protection": Protection.NONE},
        {"min_participants": 2},
        {"min_participants": 16},
        {"phase_timeout_seconds": 1.0},
        {"protection": Protection.PAILLIER},
        {"protection": Protection.PAILLIER, "paillier_key_bits": 3072},
        {"phase_timeout_seconds": 86_400.0},
        {"secagg": secagg(threshold=16)},
        {"secagg": secagg(modulus_bits=64, levels_bits=40, clip=4.0, max_weight=1 << 16)},
        {"secagg": secagg(levels_bits=14, max_participants=8)},
        {"round_timeout_seconds": 1.0},
        {"round_timeout_seconds": 604_800.0},
        {"max_failed_rounds": 0},
        {"max_failed_rounds": 1000},
        {"training": plan(local_epochs=1000, batch_size=1_000_000, learning_rate=10.0)},
        {"training": plan(learning_rate=1e-9, seed=-5)},
        {"task_config_json": ""},
        {"task_config_json": '{"layers": [1, 2]}'},
    ],
    ids=lambda c: ",".join(f"{k}" for k in c),
)
def test_boundary_values_are_valid(changes: dict[str, Any]) -> None:
    spec(**changes).validate()


BAD_FIELDS = [
    ("name", {"name": ""}, "name must be 1-200 characters"),
    ("name", {"name": "n" * 201}, "name must be 1-200 characters"),
    ("task_name", {"task_name": ""}, "task_name must"),
    ("task_name", {"task_name": "t" * 201}, "task_name must"),
    ("algorithm", {"algorithm": "fedsgd"}, "algorithm 'fedsgd' is neither built in nor installed"),
    (
        "strategy",
        {"algorithm": "fedadam", "strategy": StrategyParameters(proximal_mu=0.1)},
        "fedadam does not use the parameter proximal_mu",
    ),
    (
        "strategy",
        {"algorithm": "fedyogi", "strategy": StrategyParameters(beta2=1.0)},
        "beta2 must be below 1",
    ),
    (
        "paillier_key_bits",
        {"protection": Protection.PAILLIER, "paillier_key_bits": 1024},
        "paillier_key_bits must be 2048 or 3072",
    ),
    ("num_rounds", {"num_rounds": 0}, "num_rounds"),
    ("num_rounds", {"num_rounds": 100_001}, "num_rounds"),
    ("min_participants", {"min_participants": 0}, "min_participants"),
    ("min_participants", {"min_participants": 10_001}, "min_participants"),
    ("min_participants", {"min_participants": 1}, "min_participants of at least 2"),
    ("min_participants", {"min_participants": 17}, "must not exceed the secagg cohort limit 16"),
    ("phase_timeout_seconds", {"phase_timeout_seconds": 0.5}, "phase_timeout_seconds"),
    ("phase_timeout_seconds", {"phase_timeout_seconds": 86_401.0}, "phase_timeout_seconds"),
    ("secagg.threshold", {"secagg": secagg(threshold=17)}, "secagg.threshold"),
    ("secagg.threshold", {"secagg": secagg(threshold=-1)}, "secagg.threshold"),
    ("secagg.max_participants", {"secagg": secagg(max_participants=1)}, "secagg.max_part"),
    (
        "secagg.levels_bits",
        {"secagg": secagg(levels_bits=14)},
        "bit budget exceeded: n_max * w_max * rint(clip * 2^q) = 16 * 8192 * 16384",
    ),
    ("secagg.clip", {"secagg": secagg(clip=float("nan"))}, "clip must be a positive finite"),
    ("secagg.modulus_bits", {"secagg": secagg(modulus_bits=16)}, "k must be one of"),
    ("round_timeout_seconds", {"round_timeout_seconds": 0.5}, "round_timeout_seconds"),
    ("round_timeout_seconds", {"round_timeout_seconds": 604_801.0}, "round_timeout_seconds"),
    ("round_timeout_seconds", {"round_timeout_seconds": float("nan")}, "round_timeout_seconds"),
    ("max_failed_rounds", {"max_failed_rounds": -1}, "max_failed_rounds"),
    ("max_failed_rounds", {"max_failed_rounds": 1001}, "max_failed_rounds"),
    ("training.local_epochs", {"training": plan(local_epochs=0)}, "training.local_epochs"),
    ("training.batch_size", {"training": plan(batch_size=0)}, "training.batch_size"),
    ("training.batch_size", {"training": plan(batch_size=1_000_001)}, "training.batch_size"),
    ("training.learning_rate", {"training": plan(learning_rate=0.0)}, "training.learning_rate"),
    ("training.learning_rate", {"training": plan(learning_rate=10.5)}, "training.learning_rate"),
    (
        "training.learning_rate",
        {"training": plan(learning_rate=float("nan"))},
        "training.learning_rate",
    ),
    ("task_config_json", {"task_config_json": "[1, 2]"}, "task_config_json must be a JSON object"),
    ("task_config_json", {"task_config_json": "{oops"}, "task_config_json is not valid JSON"),
]


FIELD_NAMES = {field for field, _, _ in BAD_FIELDS}


@pytest.mark.parametrize(
    ("field", "changes", "expected"),
    BAD_FIELDS,
    ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)],
)
def test_bad_field_is_named(field: str, changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        spec(**changes).validate()
    message = str(refused.value)
    assert expected in message
    assert message.startswith("invalid job: ")
    # Only the bad field is blamed, never one that is fine.
    for other in FIELD_NAMES - {field}:
        assert not re.search(rf"(?<![\w.]){re.escape(other)}\b", message), (other, message)


def test_every_problem_is_reported_at_once() -> None:
    bad = spec(name="", num_rounds=0, training=plan(batch_size=0))
    with pytest.raises(InvalidRequest) as refused:
        bad.validate()
    message = str(refused.value)
    for field in ("name must", "num_rounds", "training.batch_size"):
        assert field in message
    assert message.count(";") == 2


def test_invalid_input_is_a_coordinator_error() -> None:
    # transport/ maps the CoordinatorError tree to gRPC codes; a bare ValueError would be INTERNAL.
    assert issubclass(InvalidRequest, CoordinatorError)
