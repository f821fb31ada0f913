"""Mask PRG: the documented AES-256 counter-mode definition, determinism, distinctness, threads."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InvalidInput
from secagg.primitives.prg import SEGMENT_BYTES, apply_masks, expand, mask_dtype

SEED = bytes(range(32))
OTHER = bytes(range(1, 33))


def _reference_keystream(seed: bytes, nbytes: int) -> bytes:
    """The definition, block by block: AES-256-ECB of counter blocks (segment, 2 + m)."""
    blocks_per_segment = SEGMENT_BYTES // 16
    counters = b"".join(
        (index // blocks_per_segment).to_bytes(12, "big")
        + (2 + index % blocks_per_segment).to_bytes(4, "big")
        for index in range(-(-nbytes // 16))
    )
    encryptor = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    return (encryptor.update(counters) + encryptor.finalize())[:nbytes]


@pytest.mark.parametrize("bits", [32, 64])
def test_matches_the_definition_across_a_segment_boundary(bits: int) -> None:
    words = SEGMENT_BYTES // (bits // 8) + 37
    expected = np.frombuffer(_reference_keystream(SEED, words * bits // 8), dtype=f"<u{bits // 8}")
    assert np.array_equal(expand(SEED, words, bits), expected)


def test_each_segment_is_standard_aes_ctr() -> None:
    # Segment 1 starts at counter block (1 || 2): plain CTR mode from that block.
    words = SEGMENT_BYTES // 4
    stream = expand(SEED, 2 * words, 32)
    initial = (1).to_bytes(12, "big") + (2).to_bytes(4, "big")
    encryptor = Cipher(algorithms.AES(SEED), modes.CTR(initial)).encryptor()
    ctr = np.frombuffer(encryptor.update(bytes(SEGMENT_BYTES)), dtype="<u4")
    assert np.array_equal(stream[words:], ctr)


@pytest.mark.parametrize("bits", [32, 64])
def test_dtype_length_and_determinism(bits: int) -> None:
    first = expand(SEED, 1000, bits)
    assert first.dtype == mask_dtype(bits) and first.shape == (1000,)
    assert np.array_equal(first, expand(SEED, 1000, bits))
    # A prefix of a longer stream: the length does not change the words.
    assert np.array_equal(first[:10], expand(SEED, 10, bits))


def test_different_seeds_give_unrelated_streams() -> None:
    a, b = expand(SEED, 4096, 32), expand(OTHER, 4096, 32)
    # Independent uniform words agree with probability 2^-32 each.
    assert np.count_nonzero(a == b) < 3
    assert len(np.unique(a)) > 4000


def test_empty_vector() -> None:
    assert expand(SEED, 0, 32).shape == (0,)
    target = np.zeros(0, dtype=np.uint32)
    apply_masks(target, add=[SEED], subtract=[])


@settings(max_examples=25, deadline=None)
@given(
    length=st.sampled_from([1, 3, 5, 1000, SEGMENT_BYTES // 8, SEGMENT_BYTES // 4 * 2 + 3]),
    workers=st.integers(1, 4),
    bits=st.sampled_from([32, 64]),
)
def test_workers_do_not_change_the_result(length: int, workers: int, bits: int) -> None:
    expected = expand(SEED, length, bits) - expand(OTHER, length, bits)
    target = np.zeros(length, dtype=mask_dtype(bits))
    apply_masks(target, add=[SEED], subtract=[OTHER], workers=workers)
    assert np.array_equal(target, expected)


def test_add_then_subtract_cancels_modulo_r() -> None:
    original = expand(OTHER, 777, 64)
    target = original.copy()
    apply_masks(target, add=[SEED, SEED], subtract=[SEED])
    apply_masks(target, add=[], subtract=[SEED])
    assert np.array_equal(target, original)


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(31), bytes(33), "x" * 32])
def test_seed_must_be_exactly_32_bytes(seed: bytes) -> None:
    with pytest.raises(InvalidInput, match="exactly 32 bytes"):
        expand(seed, 4, 32)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (np.zeros(4, dtype=np.int32), "uint32 or uint64"),
        (np.zeros((2, 2), dtype=np.uint32), "1-D contiguous"),
        (np.zeros(8, dtype=np.uint32)[::2], "1-D contiguous"),
        ([0, 0], "numpy array"),
    ],
)
def test_bad_targets_are_refused(target: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        apply_masks(target, add=[SEED], subtract=[])  # type: ignore[arg-type]


def test_read_only_target_workers_and_bits_are_checked() -> None:
    target = np.zeros(4, dtype=np.uint32)
    target.flags.writeable = False
    with pytest.raises(InvalidInput, match="writable"):
        apply_masks(target, add=[SEED], subtract=[])
    with pytest.raises(InvalidInput, match="workers"):
        apply_masks(np.zeros(4, dtype=np.uint32), add=[SEED], subtract=[], workers=0)
    with pytest.raises(InvalidInput, match="modulus bits"):
        mask_dtype(16)
    with pytest.raises(InvalidInput, match="negative"):
        expand(SEED, -1, 32)
