"""Packing codec: slot layout, round trips, and no carry between slots for n_max participants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidInput
from secagg.paillier import MAX_PARTICIPANTS, PackingLayout


@pytest.mark.parametrize(
    ("k", "n_max", "key_bits", "slot_bits", "slots"),
    [
        (32, 16, 2048, 37, 55),  # the service default: 55 values per ciphertext
        (32, 17, 2048, 38, 53),
        (32, 1, 2048, 33, 62),
        (32, 2, 2048, 34, 60),
        (64, 16, 2048, 69, 29),
        (64, 100, 3072, 72, 42),
        (32, MAX_PARTICIPANTS, 2048, 49, 41),
        (32, 20000, 3072, 48, 63),  # 48 divides 3072: the one-bit margin costs a slot here
    ],
)
def test_slot_layout(k: int, n_max: int, key_bits: int, slot_bits: int, slots: int) -> None:
    layout = PackingLayout(k, n_max, key_bits)
    assert (layout.slot_bits, layout.slots) == (slot_bits, slots)
    # The largest sum fits below the guard bit, and one bit of margin stays below bits(n).
    assert n_max * (2**k - 1) < 2 ** (slot_bits - 1)
    assert layout.packed_bits <= key_bits - 1 < layout.packed_bits + slot_bits


@pytest.mark.parametrize(
    ("k", "n_max", "key_bits"),
    [(16, 4, 2048), (32, 0, 2048), (32, MAX_PARTICIPANTS + 1, 2048), (32, 4, 1024), (32, 4, 2050)],
)
def test_invalid_layouts_are_refused(k: int, n_max: int, key_bits: int) -> None:
    with pytest.raises(InvalidInput):
        PackingLayout(k, n_max, key_bits)


@settings(max_examples=25, deadline=None)
@given(
    k=st.sampled_from([32, 64]),
    n_max=st.integers(1, 300),
    data=st.data(),
)
def test_pack_unpack_round_trip(k: int, n_max: int, data: st.DataObject) -> None:
    layout = PackingLayout(k, n_max, 2048)
    words = data.draw(st.lists(st.integers(0, 2**k - 1), min_size=1, max_size=3 * layout.slots))
    vector = np.array(words, dtype=layout.dtype)
    plaintexts = layout.pack(vector)
    assert len(plaintexts) == layout.ciphertext_count(len(words))
    # Slot j of plaintext i holds word i * slots + j, independently recomputed.
    for index, plaintext in enumerate(plaintexts):
        expected = sum(
            word << (slot * layout.slot_bits)
            for slot, word in enumerate(words[index * layout.slots : (index + 1) * layout.slots])
        )
        assert plaintext == expected
    unpacked = layout.unpack(plaintexts, len(words), 1)
    assert unpacked.dtype == np.uint64
    assert unpacked.tolist() == words


@pytest.mark.parametrize("k", [32, 64])
@pytest.mark.parametrize("n_max", [1, 2, 16, 17, 255, MAX_PARTICIPANTS])
def test_sum_of_n_max_maximal_vectors_does_not_carry(k: int, n_max: int) -> None:
    layout = PackingLayout(k, n_max, 2048)
    length = 2 * layout.slots + 3  # two full plaintexts and a padded one
    top = 2**k - 1
    packed = layout.pack(np.full(length, top, dtype=layout.dtype))
    sums = [n_max * plaintext for plaintext in packed]  # the plaintext sum of n_max copies
    exact = n_max * top
    for index, total in enumerate(sums):
        used = min(layout.slots, length - index * layout.slots)
        # Exactly the digits S = n_max * (R - 1) in base 2^slot_bits: no slot spilled over.
        assert total == sum(exact << (slot * layout.slot_bits) for slot in range(used))
        assert total < 2 ** (2048 - 1)  # below every 2048-bit n: no reduction modulo n
    unpacked = layout.unpack(sums, length, n_max)
    assert unpacked.tolist() == [exact % 2**64] * length
    if k == 32:
        assert unpacked.tolist() == [exact] * length  # the exact integer sum, not mod R


def test_the_sum_api_counts_contributions_and_the_guard_bit_catches_one_too_many() -> None:
    n_max = 16  # a power of two: n_max + 1 maximal words reach the guard bit
    layout = PackingLayout(32, n_max, 2048)
    top = 2**32 - 1
    packed = layout.pack(np.full(layout.slots, top, dtype=np.uint32))
    over = [(n_max + 1) * plaintext for plaintext in packed]
    slot = over[0] & (2**layout.slot_bits - 1)
    assert slot == (n_max + 1) * top and slot >> (layout.slot_bits - 1) == 1  # guard bit set
    # The next slot is untouched: the guard bit absorbed it instead of a silent carry.
    assert (over[0] >> layout.slot_bits) & (2**layout.slot_bits - 1) == (n_max + 1) * top
    with pytest.raises(InvalidInput, match="exceeds the sum of 16"):
        layout.unpack(over, layout.slots, n_max)
    with pytest.raises(InvalidInput, match="1..16 contributions"):
        layout.unpack(over, layout.slots, n_max + 1)
    # Declared with fewer contributions than it holds, an honest sum is refused too.
    with pytest.raises(InvalidInput, match="exceeds"):
        layout.unpack([3 * plaintext for plaintext in packed], layout.slots, 2)


def test_unpack_refuses_bits_outside_the_slots() -> None:
    layout = PackingLayout(32, 4, 2048)
    packed = layout.pack(np.arange(1, layout.slots + 2, dtype=np.uint32))
    assert len(packed) == 2
    with pytest.raises(InvalidInput, match="outside the packed slots"):
        layout.unpack([packed[0] | 1 << layout.packed_bits, packed[1]], layout.slots + 1, 1)
    with pytest.raises(InvalidInput, match="outside the packed slots"):
        layout.unpack([-1, packed[1]], layout.slots + 1, 1)
    with pytest.raises(InvalidInput, match="padding slot"):
        layout.unpack([packed[0], packed[1] | 1 << layout.slot_bits], layout.slots + 1, 1)
    with pytest.raises(InvalidInput, match="need 2 plaintexts"):
        layout.unpack(packed[:1], layout.slots + 1, 1)
    for value_count, contributions in ((0, 1), (layout.slots + 1, 0), (True, 1)):
        with pytest.raises(InvalidInput):
            layout.unpack(packed, value_count, contributions)


def test_unpack_checks_the_high_word_for_k_64() -> None:
    layout = PackingLayout(64, 4, 2048)
    packed = layout.pack(np.array([5, 7], dtype=np.uint64))
    # 2^64 + 5 in slot 0 wraps to 5 in the low word, but exceeds 1 * (2^64 - 1).
    with pytest.raises(InvalidInput, match="exceeds"):
        layout.unpack([packed[0] + (1 << 64)], 2, 1)
    # A padding slot holding 2^64 (low word 0) within the bound of 4 contributions.
    with pytest.raises(InvalidInput, match="padding slot"):
        layout.unpack([packed[0] + (1 << (64 + 2 * layout.slot_bits))], 2, 4)


@pytest.mark.parametrize(
    "values",
    [
        np.zeros(3, dtype=np.int64),
        np.zeros(3, dtype=np.uint64),  # k=32 layout expects uint32
        np.zeros((2, 2), dtype=np.uint32),
        np.zeros(0, dtype=np.uint32),
        [1, 2, 3],
    ],
)
def test_pack_refuses_wrong_vectors(values: object) -> None:
    with pytest.raises(InvalidInput):
        PackingLayout(32, 4, 2048).pack(values)  # type: ignore[arg-type]


def test_large_vectors_pack_across_chunks() -> None:
    layout = PackingLayout(32, 16, 2048)
    vector = (np.arange(200_000, dtype=np.uint64) * 2654435761 % 2**32).astype(np.uint32)
    plaintexts = layout.pack(vector)
    assert len(plaintexts) == 3637
    assert np.array_equal(layout.unpack(plaintexts, vector.size, 1), vector.astype(np.uint64))
