"""Paillier test keys: one 2048-bit key per session (and a second one), from fixed random bytes."""

from __future__ import annotations

import pytest
from secagg_harness import DeterministicRandom

from secagg.paillier import PaillierPrivateKey, generate_private_key

KEY_LABEL = "paillier-test-key"
OTHER_KEY_LABEL = "paillier-other-key"


@pytest.fixture(scope="session")
def key_label() -> str:
    return KEY_LABEL


@pytest.fixture(scope="session")
def private_key() -> PaillierPrivateKey:
    return generate_private_key(2048, DeterministicRandom(KEY_LABEL))


@pytest.fixture(scope="session")
def other_private_key() -> PaillierPrivateKey:
    return generate_private_key(2048, DeterministicRandom(OTHER_KEY_LABEL))
