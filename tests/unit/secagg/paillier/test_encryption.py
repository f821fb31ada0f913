"""Encryption (short exponent with a table, classic r^n), CRT decryption, and packed sums."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_harness import DeterministicRandom

from secagg.errors import InvalidInput
from secagg.paillier import (
    ClassicRandomizer,
    PackingLayout,
    PaillierPrivateKey,
    PaillierWorkers,
    ShortExponentRandomizer,
    add_ciphertexts,
    decrypt_integers,
    decrypt_vector,
    encrypt_integers,
    encrypt_vector,
)
from secagg.paillier.keys import random_unit

SERIAL = PaillierWorkers(1)


def _plaintexts(n: int) -> list[int]:
    return [0, 1, 2, n // 2, n - 2, n - 1, 0xDEADBEEF]


@pytest.mark.parametrize("randomizer", [ShortExponentRandomizer(), ClassicRandomizer()])
def test_round_trip(private_key: PaillierPrivateKey, randomizer: object) -> None:
    public = private_key.public_key
    plaintexts = _plaintexts(public.n)
    ciphertexts = encrypt_integers(
        public,
        plaintexts,
        random=DeterministicRandom("round-trip"),
        randomizer=randomizer,  # type: ignore[arg-type]
        workers=SERIAL,
    )
    assert all(1 <= c < public.n_squared for c in ciphertexts)
    assert len(set(ciphertexts)) == len(ciphertexts)
    assert decrypt_integers(private_key, ciphertexts, workers=SERIAL) == plaintexts
    # CRT decryption equals phe's decryption of the same ciphertexts.
    phe_key = private_key.to_phe()
    assert [phe_key.raw_decrypt(c) for c in ciphertexts] == plaintexts


def test_phe_ciphertexts_decrypt(private_key: PaillierPrivateKey) -> None:
    phe_public = private_key.public_key.to_phe()
    plaintexts = [0, 7, private_key.public_key.n - 1]
    ciphertexts = [phe_public.raw_encrypt(m) for m in plaintexts]
    assert decrypt_integers(private_key, ciphertexts, workers=SERIAL) == plaintexts


def test_encryption_is_randomized(private_key: PaillierPrivateKey) -> None:
    public = private_key.public_key
    for randomizer in (ShortExponentRandomizer(), ClassicRandomizer()):
        first, second = encrypt_integers(
            public, [42, 42], random=DeterministicRandom("twice"), randomizer=randomizer
        )
        assert first != second


@pytest.mark.parametrize(
    ("exponent_bits", "window_bits"),
    [(None, 8), (224, 1), (448, 3), (1001, 8), (2048, 5), (500, 10)],
)
def test_short_exponent_randomizer_is_h_s_to_a_drawn_exponent(
    private_key: PaillierPrivateKey, exponent_bits: int | None, window_bits: int
) -> None:
    public = private_key.public_key
    n, n_squared = public.n, public.n_squared
    randomizer = ShortExponentRandomizer(exponent_bits, window_bits)
    bits = 448 if exponent_bits is None else exponent_bits
    plaintexts = [5, n - 1]
    label = f"short-{exponent_bits}-{window_bits}"
    ciphertexts = encrypt_integers(
        public, plaintexts, random=DeterministicRandom(label), randomizer=randomizer
    )
    # Recompute independently with Python's pow: a = the next ceil(bits/8) bytes, top bits only.
    source = DeterministicRandom(label)
    size = (bits + 7) // 8
    for m, c in zip(plaintexts, ciphertexts, strict=True):
        a = int.from_bytes(source(size), "big") >> (8 * size - bits)
        assert c == (1 + m * n) * pow(public.h_s, a, n_squared) % n_squared
    assert decrypt_integers(private_key, ciphertexts) == plaintexts


def test_classic_randomizer_is_r_to_the_n(private_key: PaillierPrivateKey) -> None:
    public = private_key.public_key
    n, n_squared = public.n, public.n_squared
    ciphertexts = encrypt_integers(
        public, [9, 10], random=DeterministicRandom("classic"), randomizer=ClassicRandomizer()
    )
    source = DeterministicRandom("classic")
    for m, c in zip([9, 10], ciphertexts, strict=True):
        r = random_unit(n, source)
        assert c == (1 + m * n) * pow(r, n, n_squared) % n_squared


@pytest.mark.parametrize(
    "randomizer_arguments", [(223, 8), (2049, 8), (448, 0), (448, 13), (448.0, 8), (None, True)]
)
def test_short_exponent_parameters_are_bounded(
    private_key: PaillierPrivateKey, randomizer_arguments: tuple[object, object]
) -> None:
    with pytest.raises(InvalidInput):
        randomizer = ShortExponentRandomizer(*randomizer_arguments)  # type: ignore[arg-type]
        encrypt_integers(private_key.public_key, [1], randomizer=randomizer)


@pytest.mark.parametrize("plaintext", [-1, "n", True, 1.0])
def test_plaintexts_outside_z_n_are_refused(
    private_key: PaillierPrivateKey, plaintext: object
) -> None:
    value = private_key.public_key.n if plaintext == "n" else plaintext
    with pytest.raises(InvalidInput, match="plaintext"):
        encrypt_integers(private_key.public_key, [value])  # type: ignore[list-item]


def test_randomness_comes_only_from_the_injected_source(private_key: PaillierPrivateKey) -> None:
    public = private_key.public_key
    source = DeterministicRandom("counted")
    encrypt_integers(public, [1, 2, 3], random=source)
    assert source.drawn == 3 * 56  # three 448-bit exponents
    with pytest.raises(InvalidInput, match="wrong number of bytes"):
        encrypt_integers(public, [1], random=lambda count: b"\x00" * (count - 1))


@pytest.mark.parametrize("k", [32, 64])
def test_homomorphic_sum_of_packed_vectors(private_key: PaillierPrivateKey, k: int) -> None:
    public = private_key.public_key
    layout = PackingLayout(k, 5, public.bits)
    rng = np.random.default_rng(k)
    length = layout.slots + 7
    vectors = [
        rng.integers(0, 2**k, size=length, dtype=layout.dtype, endpoint=False) for _ in range(4)
    ]
    vectors.append(np.full(length, 2**k - 1, dtype=layout.dtype))  # one at the clip bound
    encrypted = [
        encrypt_vector(
            public,
            layout,
            vector,
            random=DeterministicRandom(f"party-{index}"),
            randomizer=ClassicRandomizer() if index == 0 else None,
            workers=SERIAL,
        )
        for index, vector in enumerate(vectors)
    ]
    total = add_ciphertexts(public, encrypted)
    assert total.contributions == 5
    sums = decrypt_vector(private_key, total, workers=SERIAL)
    exact = [sum(int(vector[i]) for vector in vectors) for i in range(length)]
    assert sums.dtype == np.uint64
    assert sums.tolist() == [value % 2**64 for value in exact]
    if k == 32:
        assert sums.tolist() == exact
    # How the service finishes: remove a correction M and reduce modulo R.
    correction = rng.integers(0, 2**k, size=length, dtype=layout.dtype)
    result = (sums - correction.astype(np.uint64)).astype(layout.dtype)  # uint64 wraps mod 2^64
    assert result.tolist() == [(value - int(m)) % 2**k for value, m in zip(exact, correction)]


def test_n_max_participants_at_the_clip_bound(private_key: PaillierPrivateKey) -> None:
    public = private_key.public_key
    layout = PackingLayout(32, 4, public.bits)
    vector = np.full(layout.slots, 2**32 - 1, dtype=np.uint32)
    parts = [
        encrypt_vector(public, layout, vector, random=DeterministicRandom(f"bound-{i}"))
        for i in range(4)
    ]
    sums = decrypt_vector(private_key, add_ciphertexts(public, parts))
    assert sums.tolist() == [4 * (2**32 - 1)] * layout.slots
    with pytest.raises(InvalidInput, match="exceeds max_participants = 4"):
        add_ciphertexts(public, [*parts, parts[0]])


def test_parallel_workers_give_the_serial_result(private_key: PaillierPrivateKey) -> None:
    public = private_key.public_key
    layout = PackingLayout(32, 8, public.bits)
    vector = (np.arange(40 * layout.slots, dtype=np.uint64) * 40503 % 2**32).astype(np.uint32)
    serial = encrypt_vector(public, layout, vector, random=DeterministicRandom("p"), workers=SERIAL)
    with PaillierWorkers(2) as pool:
        parallel = encrypt_vector(
            public, layout, vector, random=DeterministicRandom("p"), workers=pool
        )
        assert parallel == serial
        classic = encrypt_integers(
            public,
            [3, 4, 5, 6],
            random=DeterministicRandom("c"),
            randomizer=ClassicRandomizer(),
            workers=pool,
        )
        assert decrypt_integers(private_key, classic, workers=pool) == [3, 4, 5, 6]
        assert np.array_equal(decrypt_vector(private_key, parallel, workers=pool), vector)


def test_workers_must_be_positive() -> None:
    for count in (0, -1, True, 1.5):
        with pytest.raises(InvalidInput):
            PaillierWorkers(count)  # type: ignore[arg-type]
    assert PaillierWorkers().workers >= 1
