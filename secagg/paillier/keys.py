"""Paillier keys: generation, fingerprint, canonical encodings with strict validation.

The public key is ``(n, h_s)``: the modulus ``n = p*q`` (generator ``g = n + 1`` implied) and
the base ``h_s = h^n mod n^2`` of the short-exponent randomizer (Damgård, Jurik, Nielsen), with
``h = -x^2 mod n`` for a random unit ``x`` drawn at key generation. The private key is
``(p, q)`` together with the public key. Both travel as ``fields(...)`` of fixed-width big-endian
integers (docs/paillier.md); decoding rejects anything non-canonical or inconsistent.

The fingerprint is SHA-256 over a labelled encoding of ``n`` *and* ``h_s``: a substituted
``h_s`` (``h_s = 1`` would leave ``1 + m*n`` unrandomized) changes the fingerprint, so
participants that compare fingerprints with the dealer's detect it.

Randomness comes from the injected source (``os.urandom`` by default). Keys are not generated
with ``phe.generate_paillier_keypair``, which draws from ``random.SystemRandom`` (not injectable)
and starts ``next_prime`` at a random point; here every prime candidate is a fresh random odd
integer with its two top bits set, so ``n`` has exactly the requested length.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

from phe import paillier as phe_paillier

from secagg.errors import InvalidInput
from secagg.paillier.arithmetic import (
    gcd,
    is_perfect_square,
    is_probable_prime,
    powmod,
)
from secagg.primitives.encoding import decode_fields, encode_fields, encode_uint
from secagg.primitives.randomness import RandomSource, random_bytes

__all__ = [
    "DEFAULT_KEY_BITS",
    "FINGERPRINT_BYTES",
    "MAX_KEY_BITS",
    "MIN_KEY_BITS",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "check_key_bits",
    "default_exponent_bits",
    "generate_private_key",
    "minimum_exponent_bits",
    "random_unit",
    "security_strength",
]

DEFAULT_KEY_BITS = 2048
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192
_KEY_BITS_STEP = 256
FINGERPRINT_BYTES = 32

_PUBLIC_LABEL = b"fedsilo/paillier/v1/public-key"
_PRIVATE_LABEL = b"fedsilo/paillier/v1/private-key"
_FINGERPRINT_LABEL = b"fedsilo/paillier/v1/key-fingerprint"

# NIST SP 800-57 Part 1 Rev. 5, Table 2: bits of security of an RSA-type modulus of this size.
_STRENGTH = ((15360, 256), (7680, 192), (3072, 128), (2048, 112))
# |p - q| > 2^(bits/2 - 100), as FIPS 186 asks of RSA primes: Fermat's method factors close ones.
_PRIME_DISTANCE_SLACK = 100
# 2 * 3 * 5 * ... * 997: one gcd with it finds any prime factor below 1000.
_SMALL_PRIMES_PRODUCT = math.prod(
    v for v in range(2, 1000) if all(v % d for d in range(2, math.isqrt(v) + 1))
)
# A base h_s whose order modulo p (or q) has no prime factor of at least 2^16 is refused: its
# powers h_s^a take few enough values to be enumerated, which would strip the randomizer.
_ORDER_FACTOR_BITS = 16


def security_strength(key_bits: int) -> int:
    """Bits of security of a ``key_bits`` modulus (NIST SP 800-57: 2048 -> 112, 3072 -> 128)."""
    for bits, strength in _STRENGTH:
        if key_bits >= bits:
            return strength
    raise InvalidInput(f"Paillier keys need at least {MIN_KEY_BITS} bits, got {key_bits}")


def default_exponent_bits(key_bits: int) -> int:
    """Short-exponent length by default: 4x the key's security strength (448 bits at 2048).

    The best known attack on a short exponent ``a`` (Pollard's lambda method) costs about
    ``2^(bits/2)``, so ``2 * strength`` bits is the floor (:func:`minimum_exponent_bits`);
    the default doubles it as a margin (docs/paillier.md).
    """
    return 4 * security_strength(key_bits)


def minimum_exponent_bits(key_bits: int) -> int:
    """The shortest exponent accepted: twice the security strength (224 bits at 2048)."""
    return 2 * security_strength(key_bits)


def check_key_bits(bits: int) -> None:
    """Refuse key sizes below 2048 bits, above 8192, or not a multiple of 256."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise InvalidInput("the key size must be an integer number of bits")
    if bits < MIN_KEY_BITS:
        raise InvalidInput(f"Paillier keys need at least {MIN_KEY_BITS} bits, got {bits}")
    if bits > MAX_KEY_BITS or bits % _KEY_BITS_STEP:
        raise InvalidInput(
            f"the key size must be a multiple of {_KEY_BITS_STEP} bits up to {MAX_KEY_BITS}, "
            f"got {bits}"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def random_unit(modulus: int, random: RandomSource) -> int:
    """A uniform element of ``Z_modulus^*`` by rejection sampling over ``bits(modulus)`` bits."""
    size = (modulus.bit_length() + 7) // 8
    excess = 8 * size - modulus.bit_length()
    while True:
        candidate = int.from_bytes(random_bytes(random, size), "big") >> excess
        if 0 < candidate < modulus and gcd(candidate, modulus) == 1:
            return candidate


# Digests of keys that passed validation in this process. A participant builds its job key
# from its state directory for every round and every version it checks, and the primality
# tests dominate that; a key seen before is not checked again. Only digests are kept, so no
# secret outlives the key objects that hold it; a key that fails is never remembered.
_VALIDATED: dict[bytes, None] = {}
_VALIDATED_LIMIT = 256


def _validation_digest(kind: bytes, *values: int) -> bytes:
    digest = hashlib.sha256(b"fedsilo/paillier/validated/" + kind)
    for value in values:
        encoded = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
        digest.update(encode_uint(len(encoded), 4) + encoded)
    return digest.digest()


def _remember_validated(digest: bytes) -> None:
    if len(_VALIDATED) >= _VALIDATED_LIMIT:
        _VALIDATED.pop(next(iter(_VALIDATED)), None)
    _VALIDATED[digest] = None


def _random_prime(bits: int, random: RandomSource) -> int:
    """A uniform probable prime among odd ``bits``-bit integers whose two top bits are set."""
    top = 0b11 << (bits - 2)
    while True:
        candidate = int.from_bytes(random_bytes(random, bits // 8), "big") | top | 1
        if is_probable_prime(candidate):
            return candidate


@dataclass(frozen=True)
class PaillierPublicKey:
    """``n`` (``g = n + 1``) and the randomizer base ``h_s``; checked for sanity on creation.

    The checks cannot prove that ``n`` is a product of two large primes (only the private key
    holder can); they refuse moduli of the wrong size, even, square, prime or with a small
    factor, and bases ``h_s`` out of range, not a unit, or of order 1 or 2.
    """

    n: int = field(repr=False)
    h_s: int = field(repr=False)

    def __post_init__(self) -> None:
        if not _is_int(self.n) or not _is_int(self.h_s):
            raise InvalidInput("a Paillier public key holds two integers")
        check_key_bits(self.n.bit_length())
        digest = _validation_digest(b"public", self.n, self.h_s)
        if digest in _VALIDATED:
            return
        self._validate()
        _remember_validated(digest)

    def _validate(self) -> None:
        if (
            gcd(self.n, _SMALL_PRIMES_PRODUCT) != 1
            or is_perfect_square(self.n)
            or is_probable_prime(self.n)
        ):
            raise InvalidInput("the Paillier modulus is not a product of two large primes")
        n_squared = self.n * self.n
        if not 1 < self.h_s < n_squared or gcd(self.h_s, self.n) != 1:
            raise InvalidInput("the randomizer base h_s is not a unit modulo n^2 other than 1")
        if self.h_s * self.h_s % n_squared == 1:
            raise InvalidInput("the randomizer base h_s has order 2")

    def __repr__(self) -> str:
        return f"PaillierPublicKey(bits={self.bits}, fingerprint={self.fingerprint.hex()[:16]})"

    @property
    def bits(self) -> int:
        """Bit length of ``n`` (2048, 3072, ...)."""
        return self.n.bit_length()

    @functools.cached_property
    def n_squared(self) -> int:
        return self.n * self.n

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of one encoded ciphertext: ``2 * bits / 8`` bytes (512 at 2048)."""
        return self.bits // 4

    @functools.cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 of ``fields("fedsilo/paillier/v1/key-fingerprint", n, h_s)``."""
        encoded = encode_fields([_FINGERPRINT_LABEL, *self._fields()])
        return hashlib.sha256(encoded).digest()

    def _fields(self) -> list[bytes]:
        return [encode_uint(self.n, self.bits // 8), encode_uint(self.h_s, self.ciphertext_bytes)]

    def to_bytes(self) -> bytes:
        """``fields("fedsilo/paillier/v1/public-key", n, h_s)``: bits/8 and bits/4 bytes."""
        return encode_fields([_PUBLIC_LABEL, *self._fields()])

    @classmethod
    def from_bytes(cls, data: bytes) -> PaillierPublicKey:
        """Invert :meth:`to_bytes`; wrong label, widths, a leading zero byte or bad values fail."""
        label, n_bytes, h_s_bytes = decode_fields(data, 3)
        if label != _PUBLIC_LABEL:
            raise InvalidInput("not an encoded Paillier public key")
        n = _decode_modulus(n_bytes)
        if len(h_s_bytes) != 2 * len(n_bytes):
            raise InvalidInput("the randomizer base has the wrong width")
        return cls(n, int.from_bytes(h_s_bytes, "big"))

    def to_phe(self) -> Any:
        """The same key as a ``phe.PaillierPublicKey`` (``g = n + 1``), e.g. for comparisons."""
        return phe_paillier.PaillierPublicKey(self.n)


def _decode_modulus(data: bytes) -> int:
    if len(data) * 8 < MIN_KEY_BITS or len(data) * 8 > MAX_KEY_BITS:
        raise InvalidInput(f"a Paillier modulus of {len(data) * 8} bits is out of range")
    n = int.from_bytes(data, "big")
    if n.bit_length() != 8 * len(data):
        raise InvalidInput("the Paillier modulus is not canonically encoded")
    return n


@dataclass(frozen=True)
class PaillierPrivateKey:
    """The primes ``p < q`` and the public key they belong to; validated on creation.

    Creation checks that ``p`` and ``q`` are distinct probable primes of ``bits/2`` bits each,
    far enough apart, that ``p*q = n``, that ``gcd(n, (p-1)(q-1)) = 1``, and that ``h_s`` is an
    ``n``-th residue (``h_s^(p-1) = 1 mod p^2`` and ``h_s^(q-1) = 1 mod q^2``), i.e. an
    encryption of 0: otherwise every ciphertext would decrypt to a wrong value. It also checks
    that ``h_s`` has the form the generator gives it and not a small order modulo ``p`` or ``q``
    (``_check_randomizer_order``). ``p`` and ``q`` are never shown by ``repr``.
    """

    p: int = field(repr=False)
    q: int = field(repr=False)
    public_key: PaillierPublicKey

    def __post_init__(self) -> None:
        if not _is_int(self.p) or not _is_int(self.q):
            raise InvalidInput("a Paillier private key holds two primes")
        if not isinstance(self.public_key, PaillierPublicKey):
            raise InvalidInput("a Paillier private key needs its PaillierPublicKey")
        if self.p > self.q:
            p, q = self.q, self.p
            object.__setattr__(self, "p", p)
            object.__setattr__(self, "q", q)
        digest = _validation_digest(
            b"private", self.p, self.q, self.public_key.n, self.public_key.h_s
        )
        if digest in _VALIDATED:
            return
        self._validate()
        _remember_validated(digest)

    def _validate(self) -> None:
        p, q, n = self.p, self.q, self.public_key.n
        half = self.public_key.bits // 2
        if p * q != n:
            raise InvalidInput("p * q does not equal the public modulus n")
        if p.bit_length() != half or q.bit_length() != half:
            raise InvalidInput(f"p and q must have {half} bits each")
        if q - p < 1 << (half - _PRIME_DISTANCE_SLACK):
            raise InvalidInput("p and q are too close to each other")
        if not is_probable_prime(p) or not is_probable_prime(q):
            raise InvalidInput("p or q is not prime")
        if gcd(n, (p - 1) * (q - 1)) != 1:
            raise InvalidInput("gcd(n, (p-1)(q-1)) must be 1")
        h_s = self.public_key.h_s
        if powmod(h_s, p - 1, p * p) != 1 or powmod(h_s, q - 1, q * q) != 1:
            raise InvalidInput("the randomizer base h_s is not an n-th residue modulo n^2")
        _check_randomizer_order(h_s % n, p, q)

    def __repr__(self) -> str:
        return f"PaillierPrivateKey(public_key={self.public_key!r})"

    def to_bytes(self) -> bytes:
        """``fields("fedsilo/paillier/v1/private-key", p, q, h_s)``: bits/16, bits/16, bits/4 bytes.

        This is the secret key: encrypt it (AES-GCM) before it leaves the process, never log it.
        """
        half_bytes = self.public_key.bits // 16
        return encode_fields(
            [
                _PRIVATE_LABEL,
                encode_uint(self.p, half_bytes),
                encode_uint(self.q, half_bytes),
                encode_uint(self.public_key.h_s, self.public_key.ciphertext_bytes),
            ]
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, *, expected_fingerprint: bytes | None = None
    ) -> PaillierPrivateKey:
        """Invert :meth:`to_bytes` with every check of the constructor, and ``p < q``.

        With ``expected_fingerprint`` the key must also belong to that public key.
        """
        label, p_bytes, q_bytes, h_s_bytes = decode_fields(data, 4)
        if label != _PRIVATE_LABEL:
            raise InvalidInput("not an encoded Paillier private key")
        if len(p_bytes) != len(q_bytes) or len(h_s_bytes) != 4 * len(p_bytes):
            raise InvalidInput("the private key fields have inconsistent widths")
        if not MIN_KEY_BITS <= 16 * len(p_bytes) <= MAX_KEY_BITS:
            raise InvalidInput(f"a Paillier key of {16 * len(p_bytes)} bits is out of range")
        p, q = int.from_bytes(p_bytes, "big"), int.from_bytes(q_bytes, "big")
        if not p < q:
            raise InvalidInput("the private key is not canonically encoded (p < q)")
        public_key = PaillierPublicKey(p * q, int.from_bytes(h_s_bytes, "big"))
        if public_key.bits != 16 * len(p_bytes):
            raise InvalidInput("p * q does not have the encoded key size")
        key = cls(p, q, public_key)
        if expected_fingerprint is not None and public_key.fingerprint != expected_fingerprint:
            raise InvalidInput("the private key does not belong to the expected public key")
        return key

    def to_phe(self) -> Any:
        """The same key as a ``phe.PaillierPrivateKey``, e.g. to compare decryptions."""
        return phe_paillier.PaillierPrivateKey(self.public_key.to_phe(), self.p, self.q)


def _small_primes_below(bound: int) -> list[int]:
    sieve = bytearray([1]) * bound
    sieve[:2] = b"\x00\x00"
    for value in range(2, math.isqrt(bound) + 1):
        if sieve[value]:
            sieve[value * value :: value] = bytes(len(range(value * value, bound, value)))
    return [value for value in range(bound) if sieve[value]]


@functools.cache
def _order_factor_primes_product() -> int:
    return math.prod(_small_primes_below(1 << _ORDER_FACTOR_BITS))


def _smooth_part(value: int) -> int:
    """The largest divisor of ``value`` whose prime factors are all below ``2^16``."""
    primes = _order_factor_primes_product()
    smooth, rest = 1, value
    while True:
        common = gcd(rest, primes % rest)
        if common == 1:
            return smooth
        smooth *= common
        rest //= common


def _check_randomizer_order(base: int, p: int, q: int) -> None:
    """Refuse a base ``h_s`` (``base = h_s mod n``) not of the form the generator makes, or of
    small order; only the private key holder can check either (docs/paillier.md, Validation).

    ``h_s = h^n mod n^2`` has the order of ``h_s mod n`` (raising to ``n`` permutes ``Z_n^*``
    since ``gcd(n, phi(n)) = 1``). The generator draws ``h = -x^2``, so ``-h_s mod n`` must be a
    square modulo ``p`` and ``q`` (Euler's criterion). The order of ``h_s`` modulo each prime must
    have a prime factor of at least ``2^16``: ``h_s^S != 1`` where ``S`` is the part of
    ``p - 1`` (or ``q - 1``) made of smaller primes. A random base fails this with probability
    about ``S / (p - 1)``: never, in practice.
    """
    for prime in (p, q):
        if powmod(-base % prime, (prime - 1) // 2, prime) != 1:
            raise InvalidInput("the randomizer base h_s is not of the form (-x^2)^n modulo n^2")
        if powmod(base, _smooth_part(prime - 1), prime) == 1:
            raise InvalidInput(
                f"the randomizer base h_s has a small order: no prime factor of at least "
                f"2^{_ORDER_FACTOR_BITS} modulo p or q"
            )


def generate_private_key(
    bits: int = DEFAULT_KEY_BITS, random: RandomSource = os.urandom
) -> PaillierPrivateKey:
    """A fresh key of ``bits`` bits (2048 by default, 3072 for 128-bit security; < 2048 refused).

    ``p`` and ``q`` are random ``bits/2``-bit primes with their two top bits set (so ``n`` has
    exactly ``bits`` bits) and ``|p - q| > 2^(bits/2 - 100)``; ``h = -x^2 mod n`` for a random
    unit ``x`` and ``h_s = h^n mod n^2`` (Damgård–Jurik–Nielsen).
    """
    check_key_bits(bits)
    half = bits // 2
    p = _random_prime(half, random)
    while True:
        q = _random_prime(half, random)
        if abs(p - q) >= 1 << (half - _PRIME_DISTANCE_SLACK):
            break
    n = p * q
    x = random_unit(n, random)
    h = (-x * x) % n
    public_key = PaillierPublicKey(n, powmod(h, n, n * n))
    return PaillierPrivateKey(p, q, public_key)
