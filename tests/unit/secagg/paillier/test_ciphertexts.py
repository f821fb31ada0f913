"""Ciphertext bundles: wire encoding, homomorphic sum, and what is rejected.

docs/fault-matrix.md S17.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
from secagg_harness import DeterministicRandom

from secagg.errors import InvalidInput
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    PaillierWorkers,
    add_ciphertexts,
    decrypt_integers,
    decrypt_vector,
    encrypt_vector,
)
from secagg.primitives.encoding import decode_fields, encode_fields

SERIAL = PaillierWorkers(1)
LENGTH = 60  # two ciphertexts with the default layout (55 slots)


@pytest.fixture(scope="module")
def layout(private_key: PaillierPrivateKey) -> PackingLayout:
    return PackingLayout(32, 16, private_key.public_key.bits)


@pytest.fixture(scope="module")
def bundles(
    private_key: PaillierPrivateKey, layout: PackingLayout
) -> list[tuple[np.ndarray, PaillierCiphertexts]]:
    out = []
    for index in range(3):
        vector = (np.arange(LENGTH, dtype=np.uint64) * (index + 7) * 2654435761 % 2**32).astype(
            np.uint32
        )
        encrypted = encrypt_vector(
            private_key.public_key,
            layout,
            vector,
            random=DeterministicRandom(f"bundle-{index}"),
            workers=SERIAL,
        )
        out.append((vector, encrypted))
    return out


def test_wire_encoding_round_trip(
    private_key: PaillierPrivateKey, bundles: list[tuple[np.ndarray, PaillierCiphertexts]]
) -> None:
    public = private_key.public_key
    _, bundle = bundles[0]
    encoded = bundle.to_bytes()
    assert PaillierCiphertexts.from_bytes(encoded, public) == bundle
    fields = decode_fields(encoded)
    assert fields[0] == b"fedsilo/paillier/v1/ciphertexts"
    assert fields[1] == public.fingerprint
    assert [int.from_bytes(f, "big") for f in fields[2:6]] == [32, 16, 1, LENGTH]
    assert len(fields[6]) == 2 * 512
    assert [int.from_bytes(fields[6][i : i + 512], "big") for i in (0, 512)] == list(
        bundle.ciphertexts
    )


def test_homomorphic_sum_is_the_product_modulo_n_squared(
    private_key: PaillierPrivateKey, bundles: list[tuple[np.ndarray, PaillierCiphertexts]]
) -> None:
    public = private_key.public_key
    items = [bundle for _, bundle in bundles]
    total = add_ciphertexts(public, items)
    for position in range(2):
        product = 1
        for item in items:
            product = product * item.ciphertexts[position] % public.n_squared
        assert total.ciphertexts[position] == product
    running = add_ciphertexts(public, [add_ciphertexts(public, items[:2]), items[2]])
    assert running == total and running.contributions == 3
    expected = sum(vector.astype(np.uint64) for vector, _ in bundles)
    assert np.array_equal(decrypt_vector(private_key, total, workers=SERIAL), expected)


def _replace_first(bundle: PaillierCiphertexts, value: int) -> PaillierCiphertexts:
    return dataclasses.replace(bundle, ciphertexts=(value, *bundle.ciphertexts[1:]))


BAD_VALUES: dict[str, Callable[[PaillierPrivateKey], int]] = {
    "zero": lambda key: 0,
    "n squared": lambda key: key.public_key.n_squared,
    "n squared plus one": lambda key: key.public_key.n_squared + 1,
    "multiple of p": lambda key: key.p * 977,
    "multiple of q": lambda key: key.q * (key.q + 2),
    "multiple of n": lambda key: key.public_key.n * 5,
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_invalid_ciphertexts_are_rejected_everywhere(
    private_key: PaillierPrivateKey,
    bundles: list[tuple[np.ndarray, PaillierCiphertexts]],
    name: str,
) -> None:
    public = private_key.public_key
    value = BAD_VALUES[name](private_key)
    tampered = _replace_first(bundles[0][1], value)
    message = (
        "outside" if value in (0, public.n_squared, public.n_squared + 1) else "shares a factor"
    )
    with pytest.raises(InvalidInput, match=message):
        PaillierCiphertexts.from_bytes(tampered.to_bytes(), public)
    with pytest.raises(InvalidInput, match=message):
        add_ciphertexts(public, [bundles[1][1], tampered])
    with pytest.raises(InvalidInput, match=message):
        decrypt_vector(private_key, tampered, workers=SERIAL)
    with pytest.raises(InvalidInput, match=message):
        decrypt_integers(private_key, [value], workers=SERIAL)


def test_another_keys_ciphertexts_are_rejected(
    private_key: PaillierPrivateKey,
    other_private_key: PaillierPrivateKey,
    bundles: list[tuple[np.ndarray, PaillierCiphertexts]],
    layout: PackingLayout,
) -> None:
    public, other = private_key.public_key, other_private_key.public_key
    foreign = encrypt_vector(
        other, layout, bundles[0][0], random=DeterministicRandom("foreign"), workers=SERIAL
    )
    with pytest.raises(InvalidInput, match="another key"):
        PaillierCiphertexts.from_bytes(foreign.to_bytes(), public)
    with pytest.raises(InvalidInput, match="another key"):
        add_ciphertexts(public, [bundles[0][1], foreign])
    with pytest.raises(InvalidInput, match="another key"):
        decrypt_vector(private_key, foreign, workers=SERIAL)
    # Relabelled with this key's fingerprint, the values are still checked (here they pass the
    # range checks, and decrypt to garbage that the slot checks refuse).
    relabelled = dataclasses.replace(foreign, fingerprint=public.fingerprint)
    with pytest.raises(InvalidInput):
        decrypt_vector(private_key, relabelled, workers=SERIAL)


def test_counts_above_n_max_are_refused(
    private_key: PaillierPrivateKey,
    bundles: list[tuple[np.ndarray, PaillierCiphertexts]],
) -> None:
    public = private_key.public_key
    nine = PackingLayout(32, 9, public.bits)  # the same 55 slots of 37 bits as n_max = 16
    items = [dataclasses.replace(bundle, layout=nine, contributions=4) for _, bundle in bundles]
    assert add_ciphertexts(public, items[:2]).contributions == 8
    with pytest.raises(InvalidInput, match="12 contributions exceeds max_participants = 9"):
        add_ciphertexts(public, items)
    with pytest.raises(InvalidInput, match="exceed max_participants"):
        dataclasses.replace(items[0], contributions=10)
    fields = decode_fields(items[0].to_bytes())
    with pytest.raises(InvalidInput, match="exceed max_participants"):
        PaillierCiphertexts.from_bytes(
            encode_fields([*fields[:4], (10).to_bytes(4, "big"), *fields[5:]]), public
        )


def test_mismatched_bundles_cannot_be_added(
    private_key: PaillierPrivateKey,
    bundles: list[tuple[np.ndarray, PaillierCiphertexts]],
    layout: PackingLayout,
) -> None:
    public = private_key.public_key
    first = bundles[0][1]
    other_layout = dataclasses.replace(first, layout=PackingLayout(32, 15, public.bits))
    shorter = dataclasses.replace(first, value_count=LENGTH - 1)
    for item in (other_layout, shorter):
        with pytest.raises(InvalidInput, match="different layouts or lengths"):
            add_ciphertexts(public, [first, item])
    with pytest.raises(InvalidInput, match="nothing to add"):
        add_ciphertexts(public, [])


def test_malformed_encodings_are_rejected(
    private_key: PaillierPrivateKey, bundles: list[tuple[np.ndarray, PaillierCiphertexts]]
) -> None:
    public = private_key.public_key
    encoded = bundles[0][1].to_bytes()
    fields = decode_fields(encoded)
    blob = fields[6]
    for data in [
        b"",
        encoded[:-1],
        encoded + b"\x00",
        encode_fields([b"fedsilo/paillier/v1/other", *fields[1:]]),
        encode_fields(fields[:6]),
        encode_fields([*fields[:2], (16).to_bytes(1, "big"), *fields[3:]]),  # k = 16
        encode_fields([*fields[:2], (32).to_bytes(2, "big"), *fields[3:]]),  # k field width
        encode_fields([*fields[:5], (LENGTH + 55).to_bytes(8, "big"), blob]),  # count mismatch
        encode_fields([*fields[:6], blob[:-1]]),  # not whole ciphertexts
        encode_fields([*fields[:6], blob + blob[:512]]),  # one ciphertext too many
        encode_fields([*fields[:3], (0).to_bytes(4, "big"), *fields[4:]]),  # n_max = 0
    ]:
        with pytest.raises(InvalidInput):
            PaillierCiphertexts.from_bytes(data, public)


def test_structure_is_checked_on_construction(
    bundles: list[tuple[np.ndarray, PaillierCiphertexts]],
) -> None:
    bundle = bundles[0][1]
    for changes in (
        {"fingerprint": b"short"},
        {"contributions": 0},
        {"value_count": 0},
        {"value_count": 200},
        {"ciphertexts": bundle.ciphertexts[:1]},
        {"layout": "layout"},
    ):
        with pytest.raises(InvalidInput):
            dataclasses.replace(bundle, **changes)
