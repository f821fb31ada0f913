"""round_context: deterministic, and every field that determines an input changes the digest."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from fedsilo.protection import Protection, SecAggParameters, round_context
from fedsilo.tasks import TrainingSettings

PARAMETERS = SecAggParameters(
    threshold=3,
    modulus_bits=32,
    vector_length=100,
    cohort=("a", "b", "c", "d"),
    clip=1.0,
    levels_bits=16,
    max_participants=8,
    max_weight=1000,
)
TRAINING = TrainingSettings(local_epochs=2, batch_size=32, learning_rate=0.01, seed=7)


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "protection": Protection.SECAGG,
        "job_id": "job-1",
        "round_number": 3,
        "task_name": "digits-linear",
        "algorithm": "fedavg",
        "base_version": 2,
        "base_model_sha256": hashlib.sha256(b"model v2").digest(),
        "training": TRAINING,
        "parameters": PARAMETERS,
        "min_participants": 3,
        "paillier_key_fingerprint": b"",
    }
    fields.update(changes)
    return fields


CHANGES: dict[str, dict[str, Any]] = {
    "protection": {"protection": Protection.PAILLIER},
    "job_id": {"job_id": "job-2"},
    "round_number": {"round_number": 4},
    "task_name": {"task_name": "digits"},
    "algorithm": {"algorithm": "fedprox"},
    "base_version": {"base_version": 1},
    "base_model_sha256": {"base_model_sha256": hashlib.sha256(b"another model").digest()},
    "local_epochs": {"training": dataclasses.replace(TRAINING, local_epochs=3)},
    "batch_size": {"training": dataclasses.replace(TRAINING, batch_size=33)},
    "learning_rate": {"training": dataclasses.replace(TRAINING, learning_rate=1e-300)},
    "seed": {"training": dataclasses.replace(TRAINING, seed=8)},
    "clip": {"parameters": dataclasses.replace(PARAMETERS, clip=2.0)},
    "levels_bits": {"parameters": dataclasses.replace(PARAMETERS, levels_bits=15)},
    "modulus_bits": {"parameters": dataclasses.replace(PARAMETERS, modulus_bits=64)},
    "max_participants": {"parameters": dataclasses.replace(PARAMETERS, max_participants=9)},
    "max_weight": {"parameters": dataclasses.replace(PARAMETERS, max_weight=999)},
    "threshold": {"parameters": dataclasses.replace(PARAMETERS, threshold=4)},
    "min_participants": {"min_participants": 2},
    "paillier_key_fingerprint": {"paillier_key_fingerprint": b"\x01" * 32},
}


def test_the_digest_is_deterministic_and_32_bytes() -> None:
    digest = round_context(**_fields())
    assert len(digest) == 32
    assert round_context(**_fields()) == digest


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_every_field_changes_the_digest(name: str) -> None:
    assert round_context(**_fields(**CHANGES[name])) != round_context(**_fields())


def test_neighbouring_text_fields_do_not_run_together() -> None:
    # Length prefixes: moving a character from one text field to the next is another context.
    assert round_context(**_fields(job_id="job-1d", task_name="igits-linear")) != round_context(
        **_fields(job_id="job-1", task_name="digits-linear")
    )


def test_a_base_model_hash_must_be_a_sha256_digest() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        round_context(**_fields(base_model_sha256=b"short"))
