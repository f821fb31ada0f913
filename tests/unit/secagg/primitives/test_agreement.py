"""X25519: RFC 7748 §6.1 test vector, key pairs from injected randomness, malicious keys."""

from __future__ import annotations

import pytest

from secagg.errors import InvalidInput
from secagg.primitives.agreement import (
    AgreementKeyPair,
    generate_key_pair,
    public_key_of,
    shared_secret,
    shared_secrets,
)

# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_rfc7748_public_keys() -> None:
    assert public_key_of(ALICE_PRIVATE) == ALICE_PUBLIC
    assert public_key_of(BOB_PRIVATE) == BOB_PUBLIC


def test_rfc7748_shared_secret_both_ways() -> None:
    assert shared_secret(ALICE_PRIVATE, BOB_PUBLIC) == SHARED
    assert shared_secret(BOB_PRIVATE, ALICE_PUBLIC) == SHARED
    assert shared_secrets(ALICE_PRIVATE, [BOB_PUBLIC, BOB_PUBLIC]) == [SHARED, SHARED]


def test_key_pair_comes_from_the_injected_random_source() -> None:
    pair = generate_key_pair(lambda count: ALICE_PRIVATE[:count])
    assert pair == AgreementKeyPair(ALICE_PRIVATE, ALICE_PUBLIC)
    assert ALICE_PRIVATE.hex() not in repr(pair)


def test_low_order_public_key_is_refused() -> None:
    # The all-zero point has order 1: X25519 with it is all zeros, a classic malicious key.
    with pytest.raises(InvalidInput, match="low-order"):
        shared_secret(ALICE_PRIVATE, bytes(32))


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_wrong_lengths_are_refused(bad: bytes) -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        shared_secret(ALICE_PRIVATE, bad)
    with pytest.raises(InvalidInput, match="32 bytes"):
        public_key_of(bad)
