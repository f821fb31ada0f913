"""RoundConfig: validation (t > n/2, t <= n), ordering, x coordinates, fingerprint, dict form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from secagg import InvalidInput, RoundConfig, default_threshold


def _config(**changes: object) -> RoundConfig:
    fields: dict[str, object] = {
        "job_id": "job",
        "round_id": "r1",
        "cohort": ("c", "a", "b"),
        "threshold": 2,
        "vector_length": 4,
        "context": bytes(32),
    }
    fields.update(changes)
    return RoundConfig(**fields)  # type: ignore[arg-type]


def test_cohort_is_sorted_and_x_is_the_position() -> None:
    config = _config()
    assert config.cohort == ("a", "b", "c")
    assert [config.x_coordinate(m) for m in ("a", "b", "c")] == [1, 2, 3]
    assert config.dtype == np.uint32 and _config(modulus_bits=64).dtype == np.uint64
    with pytest.raises(InvalidInput, match="not in the cohort"):
        config.x_coordinate("d")


@pytest.mark.parametrize(("n", "t"), [(2, 2), (3, 2), (3, 3), (4, 3), (5, 3), (20, 11)])
def test_valid_thresholds(n: int, t: int) -> None:
    _config(cohort=tuple(f"p{i}" for i in range(n)), threshold=t)


@pytest.mark.parametrize(("n", "t"), [(2, 1), (4, 2), (3, 4), (5, 0), (6, 3)])
def test_thresholds_outside_half_n_to_n_are_refused(n: int, t: int) -> None:
    with pytest.raises(InvalidInput, match="n/2 < t <= n"):
        _config(cohort=tuple(f"p{i}" for i in range(n)), threshold=t)


def test_default_threshold_is_a_strict_majority() -> None:
    assert [default_threshold(n) for n in (2, 3, 4, 5, 10)] == [2, 2, 3, 3, 6]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"job_id": ""}, "job_id"),
        ({"round_id": 7}, "round_id"),
        ({"cohort": ("a", "a", "b")}, "distinct"),
        ({"cohort": ("a", "")}, "non-empty strings"),
        ({"cohort": ("a",), "threshold": 1}, "2..65535 members"),
        ({"vector_length": 0}, "vector_length"),
        ({"modulus_bits": 16}, "modulus_bits"),
    ],
)
def test_bad_configs_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        _config(**changes)


def test_fingerprint_binds_every_parameter() -> None:
    base = _config().fingerprint
    assert _config(cohort=("b", "c", "a")).fingerprint == base
    for change in (
        {"job_id": "job2"},
        {"round_id": "r2"},
        {"cohort": ("a", "b", "d")},
        {"threshold": 3},
        {"vector_length": 5},
        {"modulus_bits": 64},
    ):
        assert _config(**change).fingerprint != base, change


def test_dict_round_trip_through_json() -> None:
    config = _config()
    assert RoundConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InvalidInput, match="malformed round config"):
        RoundConfig.from_dict({"job_id": "job"})


def test_the_context_is_32_bytes_and_enters_the_fingerprint() -> None:
    for bad in (b"", bytes(31), bytes(33), "0" * 32):
        with pytest.raises(InvalidInput, match="context"):
            _config(context=bad)
    assert _config(context=bytes(32)).fingerprint != _config(context=b"\x01" * 32).fingerprint
    with pytest.raises(TypeError):
        RoundConfig("job", "r1", ("a", "b"), 2, 4)  # type: ignore[call-arg]


def test_the_context_survives_the_dict_form() -> None:
    config = _config(context=bytes(range(32)))
    restored = RoundConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and restored.fingerprint == config.fingerprint
    data = config.to_dict()
    for broken in ({**data, "context": "zz"}, {k: v for k, v in data.items() if k != "context"}):
        with pytest.raises(InvalidInput, match="malformed"):
            RoundConfig.from_dict(broken)
