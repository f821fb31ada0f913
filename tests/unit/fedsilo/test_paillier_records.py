"""Paillier version records: the round's terms, the round key fingerprint, one encoding each."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import pytest

from fedsilo.paillier_versions import (
    PaillierVersion,
    RoundTerms,
    RoundTranscript,
    round_key_fingerprint,
)
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection, SecAggParameters, round_context
from fedsilo.tasks import TrainingSettings
from secagg import InvalidInput, decode_fields, encode_fields
from secagg.paillier import PaillierPublicKey, generate_private_key

TERMS = RoundTerms(
    round_number=4,
    task_name="digits-linear",
    algorithm="fedavg",
    training=TrainingSettings(local_epochs=2, batch_size=16, learning_rate=0.05, seed=-3),
    min_participants=3,
)
PARAMETERS = SecAggParameters(
    threshold=3,
    modulus_bits=32,
    vector_length=0,
    cohort=("org-a", "org-b", "org-c"),
    clip=1.0,
    levels_bits=16,
    max_participants=8,
    max_weight=1000,
)
BASE = hashlib.sha256(b"version 3 as served").digest()
TRANSCRIPT = RoundTranscript(
    round_id="round-4",
    cohort=("org-a", "org-b", "org-c"),
    threshold=3,
    context=b"\x07" * 32,
    keys=(),
    shares=(),
    contributors=("org-a", "org-b", "org-c"),
    consistency=(),
    unmask=(),
)


@pytest.fixture(scope="module")
def public_keys() -> tuple[PaillierPublicKey, PaillierPublicKey]:
    return (
        generate_private_key(2048, os.urandom).public_key,
        generate_private_key(2048, os.urandom).public_key,
    )


@pytest.mark.parametrize(
    "terms",
    [TERMS, replace(TERMS, dp=DifferentialPrivacy(0.5, 1.1, 1e-5, 8.0))],
    ids=["without-dp", "with-dp"],
)
def test_round_terms_round_trip(terms: RoundTerms) -> None:
    assert RoundTerms.from_bytes(terms.to_bytes()) == terms


def test_terms_without_dp_encode_like_a_job_without_it() -> None:
    assert replace(TERMS, dp=DifferentialPrivacy()).to_bytes() == TERMS.to_bytes()


def test_malformed_terms_are_refused() -> None:
    fields = decode_fields(TERMS.to_bytes())
    with pytest.raises(InvalidInput):
        RoundTerms.from_bytes(encode_fields(fields[:-1]))
    with pytest.raises(InvalidInput):
        RoundTerms.from_bytes(encode_fields([b"another label", *fields[1:]]))
    with pytest.raises(InvalidInput):  # a learning rate that is not 8 bytes
        RoundTerms.from_bytes(encode_fields([*fields[:6], b"\x00", *fields[7:]]))


def test_the_round_key_names_the_generation_and_the_key(
    public_keys: tuple[PaillierPublicKey, PaillierPublicKey],
) -> None:
    first, second = public_keys
    fingerprint = round_key_fingerprint("job-1", 0, first)
    assert len(fingerprint) == 32
    assert round_key_fingerprint("job-1", 0, first) == fingerprint
    # The same key dealt again in a later generation, another key, another job: all differ.
    others = {
        round_key_fingerprint("job-1", 1, first),
        round_key_fingerprint("job-1", 0, second),
        round_key_fingerprint("job-2", 0, first),
    }
    assert len(others) == 3 and fingerprint not in others


def test_the_terms_give_the_paillier_round_context(
    public_keys: tuple[PaillierPublicKey, PaillierPublicKey],
) -> None:
    key = round_key_fingerprint("job-1", 1, public_keys[0])
    fields = {
        "job_id": "job-1",
        "round_number": TERMS.round_number,
        "task_name": TERMS.task_name,
        "algorithm": TERMS.algorithm,
        "base_version": 3,
        "base_model_sha256": BASE,
        "training": TERMS.training,
        "parameters": PARAMETERS,
        "min_participants": TERMS.min_participants,
    }
    context = TERMS.context(
        job_id="job-1",
        base_version=3,
        base_model_sha256=BASE,
        parameters=PARAMETERS,
        key_fingerprint=key,
    )
    assert context == round_context(
        protection=Protection.PAILLIER, paillier_key_fingerprint=key, **fields
    )
    # Without a key the context is another one; a secagg round's binds none.
    assert context != round_context(protection=Protection.PAILLIER, **fields)
    assert round_context(protection=Protection.SECAGG, **fields) == round_context(
        protection=Protection.SECAGG, paillier_key_fingerprint=b"", **fields
    )


@pytest.mark.parametrize("generation", [0, 2])
def test_a_record_with_terms_round_trips_and_always_names_its_generation(generation: int) -> None:
    record = PaillierVersion(b"sums", b"tag", TRANSCRIPT, generation, TERMS)
    data = record.to_bytes()
    assert len(decode_fields(data)) == 6
    assert PaillierVersion.from_bytes(data) == record


def test_a_record_without_terms_keeps_the_earlier_encoding() -> None:
    for generation, count in ((0, 4), (3, 5)):
        record = PaillierVersion(b"sums", b"tag", TRANSCRIPT, generation)
        data = record.to_bytes()
        assert len(decode_fields(data)) == count
        assert PaillierVersion.from_bytes(data) == record
