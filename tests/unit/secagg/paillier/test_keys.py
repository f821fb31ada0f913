"""Paillier keys: generation, sizes, fingerprint, canonical encodings and strict validation."""

from __future__ import annotations

import hashlib

import gmpy2
import pytest
from secagg_harness import DeterministicRandom

from secagg.errors import InvalidInput
from secagg.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    default_exponent_bits,
    generate_private_key,
)
from secagg.paillier import keys as keys_module
from secagg.paillier.arithmetic import is_probable_prime
from secagg.paillier.keys import minimum_exponent_bits, security_strength
from secagg.primitives.encoding import decode_fields, encode_fields


def _prime_near(value: int) -> int:
    return int(gmpy2.next_prime(value))


def test_generated_key_is_well_formed(private_key: PaillierPrivateKey) -> None:
    p, q, public = private_key.p, private_key.q, private_key.public_key
    assert public.bits == 2048 and public.n.bit_length() == 2048
    assert p * q == public.n and p < q
    assert p.bit_length() == q.bit_length() == 1024
    assert gmpy2.is_prime(p, 50) and gmpy2.is_prime(q, 50)
    # h_s is an n-th residue: its order divides phi(n) (checked with Python's own pow).
    assert pow(public.h_s, (p - 1) * (q - 1), public.n_squared) == 1
    assert public.h_s not in (1, public.n_squared - 1)


def test_generation_is_reproducible_from_the_random_source(
    private_key: PaillierPrivateKey, other_private_key: PaillierPrivateKey, key_label: str
) -> None:
    again = generate_private_key(2048, DeterministicRandom(key_label))
    assert again == private_key
    assert other_private_key.public_key.n != private_key.public_key.n


@pytest.mark.parametrize("bits", [512, 1024, 2047, 2000, 3000, 8448, True, "2048"])
def test_key_sizes_below_2048_or_irregular_are_refused(bits: object) -> None:
    with pytest.raises(InvalidInput):
        generate_private_key(bits, DeterministicRandom("small"))  # type: ignore[arg-type]


def test_a_1024_bit_modulus_is_refused_by_the_public_key() -> None:
    p = _prime_near(3 << 510)
    q = _prime_near(7 << 509)
    with pytest.raises(InvalidInput, match="at least 2048"):
        PaillierPublicKey(p * q, 4)


def test_3072_bit_keys_are_available() -> None:
    key = generate_private_key(3072, DeterministicRandom("3072"))
    assert key.public_key.bits == 3072
    assert default_exponent_bits(3072) == 512
    assert PaillierPrivateKey.from_bytes(key.to_bytes()) == key


def test_exponent_lengths_follow_the_security_strength() -> None:
    assert (security_strength(2048), security_strength(3072), security_strength(4096)) == (
        112,
        128,
        128,
    )
    assert (default_exponent_bits(2048), minimum_exponent_bits(2048)) == (448, 224)


def test_public_key_round_trip(private_key: PaillierPrivateKey) -> None:
    public = private_key.public_key
    encoded = public.to_bytes()
    assert PaillierPublicKey.from_bytes(encoded) == public
    assert PaillierPublicKey.from_bytes(encoded).to_bytes() == encoded
    label, n_bytes, h_s_bytes = decode_fields(encoded, 3)
    assert label == b"fedsilo/paillier/v1/public-key"
    assert (len(n_bytes), len(h_s_bytes)) == (256, 512)


def test_private_key_round_trip(private_key: PaillierPrivateKey) -> None:
    encoded = private_key.to_bytes()
    decoded = PaillierPrivateKey.from_bytes(
        encoded, expected_fingerprint=private_key.public_key.fingerprint
    )
    assert decoded == private_key and decoded.to_bytes() == encoded
    label, p_bytes, q_bytes, h_s_bytes = decode_fields(encoded, 4)
    assert label == b"fedsilo/paillier/v1/private-key"
    assert int.from_bytes(p_bytes, "big") == private_key.p
    assert int.from_bytes(q_bytes, "big") == private_key.q
    assert len(h_s_bytes) == 512


def test_fingerprint_is_sha256_of_the_labelled_n_and_h_s(
    private_key: PaillierPrivateKey, other_private_key: PaillierPrivateKey
) -> None:
    public = private_key.public_key
    expected = hashlib.sha256(
        encode_fields(
            [
                b"fedsilo/paillier/v1/key-fingerprint",
                public.n.to_bytes(256, "big"),
                public.h_s.to_bytes(512, "big"),
            ]
        )
    ).digest()
    assert public.fingerprint == expected
    assert PaillierPublicKey.from_bytes(public.to_bytes()).fingerprint == expected
    assert other_private_key.public_key.fingerprint != expected
    # A substituted randomizer base is a different key.
    swapped = PaillierPublicKey(public.n, public.h_s * public.h_s % public.n_squared)
    assert swapped.fingerprint != expected


def test_expected_fingerprint_is_enforced(
    private_key: PaillierPrivateKey, other_private_key: PaillierPrivateKey
) -> None:
    with pytest.raises(InvalidInput, match="expected public key"):
        PaillierPrivateKey.from_bytes(
            private_key.to_bytes(), expected_fingerprint=other_private_key.public_key.fingerprint
        )


def test_repr_shows_no_secret(private_key: PaillierPrivateKey) -> None:
    text = repr(private_key) + str(private_key)
    for secret in (private_key.p, private_key.q):
        assert str(secret) not in text and hex(secret)[2:12] not in text
    assert "bits=2048" in text


def _mutations(encoded: bytes) -> list[bytes]:
    fields = decode_fields(encoded)
    return [
        b"",
        b"garbage",
        encoded[:-1],
        encoded + b"\x00",
        encode_fields([b"fedsilo/paillier/v1/other", *fields[1:]]),
        encode_fields(fields[:-1]),
        encode_fields([*fields, b"\x01"]),
        encode_fields([fields[0], b"\x00" + fields[1], *fields[2:]]),  # leading zero byte
        encode_fields([*fields[:-1], fields[-1][1:]]),  # h_s one byte short
    ]


def test_public_key_garbage_is_rejected(private_key: PaillierPrivateKey) -> None:
    for data in _mutations(private_key.public_key.to_bytes()):
        with pytest.raises(InvalidInput):
            PaillierPublicKey.from_bytes(data)


def test_private_key_garbage_is_rejected(private_key: PaillierPrivateKey) -> None:
    encoded = private_key.to_bytes()
    label, p_bytes, q_bytes, h_s_bytes = decode_fields(encoded)
    for data in [
        *_mutations(encoded),
        encode_fields([label, q_bytes, p_bytes, h_s_bytes]),  # p > q: not canonical
        encode_fields([label, p_bytes, p_bytes, h_s_bytes]),  # p == q
        encode_fields([_PRIVATE, p_bytes[:-1], q_bytes[:-1], h_s_bytes[:-4]]),  # < 2048 bits
    ]:
        with pytest.raises(InvalidInput):
            PaillierPrivateKey.from_bytes(data)


_PRIVATE = b"fedsilo/paillier/v1/private-key"


def test_private_key_must_match_its_public_key(
    private_key: PaillierPrivateKey, other_private_key: PaillierPrivateKey
) -> None:
    with pytest.raises(InvalidInput, match="does not equal"):
        PaillierPrivateKey(private_key.p, private_key.q, other_private_key.public_key)


def test_a_key_built_again_is_not_validated_again(
    private_key: PaillierPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    tests: list[int] = []

    def counted(value: int) -> bool:
        tests.append(value)
        return is_probable_prime(value)

    monkeypatch.setattr(keys_module, "is_probable_prime", counted)
    PaillierPrivateKey.from_bytes(private_key.to_bytes())
    assert tests == []  # the fixture built this key already
    fresh = generate_private_key(2048, DeterministicRandom("validated once"))
    tests.clear()
    PaillierPrivateKey.from_bytes(fresh.to_bytes())
    assert tests == []
    public = fresh.public_key
    PaillierPublicKey(public.n, public.h_s * public.h_s % public.n_squared)
    assert tests == [public.n]  # another base: checked


def test_primes_validated_with_one_modulus_are_checked_again_with_another(
    private_key: PaillierPrivateKey, other_private_key: PaillierPrivateKey
) -> None:
    small, large = sorted([private_key, other_private_key], key=lambda k: k.public_key.n)
    # The same p, q and h_s, only the modulus differs: nothing remembered may let it through.
    lying = PaillierPublicKey(large.public_key.n, small.public_key.h_s)
    with pytest.raises(InvalidInput, match="does not equal"):
        PaillierPrivateKey(small.p, small.q, lying)


def test_private_key_refuses_a_randomizer_base_that_is_not_an_nth_residue(
    private_key: PaillierPrivateKey,
) -> None:
    public = private_key.public_key
    # (1 + n) * h_s is a unit whose "encryption of 0" decrypts to 1: every ciphertext would be off.
    wrong = PaillierPublicKey(public.n, (1 + public.n) * public.h_s % public.n_squared)
    with pytest.raises(InvalidInput, match="n-th residue"):
        PaillierPrivateKey(private_key.p, private_key.q, wrong)
    fields = decode_fields(private_key.to_bytes())
    tampered = encode_fields([*fields[:3], wrong.h_s.to_bytes(512, "big")])
    with pytest.raises(InvalidInput, match="n-th residue"):
        PaillierPrivateKey.from_bytes(tampered)


def _crt(mod_p: int, mod_q: int, p: int, q: int) -> int:
    """The x mod pq with x = mod_p (mod p) and x = mod_q (mod q)."""
    return (mod_p * q * pow(q, -1, p) + mod_q * p * pow(p, -1, q)) % (p * q)


def _with_base(private_key: PaillierPrivateKey, h: int) -> PaillierPublicKey:
    """The key's modulus with the randomizer base h^n mod n^2 (always an n-th residue)."""
    n = private_key.public_key.n
    return PaillierPublicKey(n, pow(h, n, n * n))


def _smallest_odd_factor(value: int) -> int:
    return next(d for d in range(3, 1 << 16, 2) if value % d == 0)


def test_private_key_accepts_any_base_of_the_generators_form(
    private_key: PaillierPrivateKey,
) -> None:
    p, q = private_key.p, private_key.q
    for x in (5, 12345, p + 7):
        h = -x * x % (p * q)
        PaillierPrivateKey(p, q, _with_base(private_key, h))


def test_private_key_refuses_a_randomizer_base_of_small_order(
    private_key: PaillierPrivateKey,
) -> None:
    p, q = private_key.p, private_key.q
    # -1 mod q: h_s has order 2 modulo q (its order modulo p is large, so the public key's own
    # "order 2" check passes it).
    order_two_mod_q = _crt(-9 % p, q - 1, p, q)
    # An element of small odd order l modulo p, negated: -h is still a square, as generated.
    small = _smallest_odd_factor(p - 1)
    w = next(w for g in range(2, 100) if (w := pow(g, (p - 1) // small, p)) != 1)
    order_two_l_mod_p = _crt(-w % p, -9 % q, p, q)
    for h in (order_two_mod_q, order_two_l_mod_p):
        weak = _with_base(private_key, h)
        with pytest.raises(InvalidInput, match="small order"):
            PaillierPrivateKey(p, q, weak)
        # A dealt key is decoded with from_bytes: the same check refuses it on receipt.
        encoded = encode_fields([*decode_fields(private_key.to_bytes())[:3], _h_s(weak)])
        with pytest.raises(InvalidInput, match="small order"):
            PaillierPrivateKey.from_bytes(encoded, expected_fingerprint=weak.fingerprint)


def test_private_key_refuses_a_randomizer_base_not_of_the_generators_form(
    private_key: PaillierPrivateKey,
) -> None:
    p, q = private_key.p, private_key.q
    non_residue = next(z for z in range(2, 1000) if pow(z, (p - 1) // 2, p) == p - 1)
    # -h = 9z is not a square modulo p: h is not -x^2 for any x.
    h = _crt(-9 * non_residue % p, -9 % q, p, q)
    with pytest.raises(InvalidInput, match="not of the form"):
        PaillierPrivateKey(p, q, _with_base(private_key, h))


def _h_s(public: PaillierPublicKey) -> bytes:
    return public.h_s.to_bytes(public.ciphertext_bytes, "big")


def test_private_key_refuses_a_composite_factor() -> None:
    p = _prime_near(3 << 1022)
    composite = _prime_near((1 << 512) - (1 << 500)) * _prime_near((1 << 512) - (1 << 501))
    assert composite.bit_length() == 1024
    n = p * composite
    with pytest.raises(InvalidInput, match="not prime"):
        PaillierPrivateKey(p, composite, PaillierPublicKey(n, 4))


def test_private_key_refuses_close_primes() -> None:
    p = _prime_near(3 << 1022)
    q = _prime_near(p + 2)
    with pytest.raises(InvalidInput, match="too close"):
        PaillierPrivateKey(p, q, PaillierPublicKey(p * q, 4))


def test_public_key_sanity_checks(private_key: PaillierPrivateKey) -> None:
    n, p = private_key.public_key.n, private_key.p
    h_s = private_key.public_key.h_s
    multiple_of_3 = next(n + d for d in (0, 2, 4) if (n + d) % 3 == 0)
    for modulus in (n - 1, multiple_of_3, p * p, _prime_near(n)):
        assert modulus.bit_length() == 2048
        with pytest.raises(InvalidInput, match="product of two large primes"):
            PaillierPublicKey(modulus, 4)
    for base in (0, 1, n * n, n * n + 1, n * n - 1, p, p * 12345):
        with pytest.raises(InvalidInput, match="h_s"):
            PaillierPublicKey(n, base)
    for wrong_type in (str(h_s), True, None):
        with pytest.raises(InvalidInput):
            PaillierPublicKey(n, wrong_type)  # type: ignore[arg-type]
