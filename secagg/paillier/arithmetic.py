"""Paillier number theory on gmpy2: primes, fixed-base tables, encryption and CRT decryption.

Everything here takes and returns plain Python ints (gmpy2 ``mpz`` stays inside), so the batch
functions can run in worker processes that receive nothing but integers. The batch functions
are the process entry points of :mod:`secagg.paillier.workers`:

* :func:`encrypt_short_exponent` computes ``(1 + m*n) * h_s^a mod n^2`` with a fixed-base
  window table of ``h_s`` (built once per process and key, see :func:`fixed_base_table`);
* :func:`encrypt_classic` computes ``(1 + m*n) * r^n mod n^2`` (Paillier 1999 with g = n + 1);
* :func:`decrypt_crt` decrypts modulo ``p^2`` and ``q^2`` and recombines (Paillier 1999,
  "decryption using Chinese-remaindering").

No randomness is drawn here: exponents ``a`` and randomizers ``r`` come from the caller, which
draws them from its injected source, so results do not depend on how the work is split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gmpy2  # type: ignore[import-untyped]  # gmpy2 2.3 ships no type information

__all__ = [
    "PRIME_TEST_ROUNDS",
    "decrypt_crt",
    "encrypt_classic",
    "encrypt_short_exponent",
    "fixed_base_table",
    "gcd",
    "invert",
    "is_perfect_square",
    "is_probable_prime",
    "multiply_slotwise",
    "powmod",
    "product_mod",
]

PRIME_TEST_ROUNDS = 32
"""Rounds for ``gmpy2.is_prime``: GMP runs Baillie-PSW first, then ``rounds - 24`` Miller-Rabin
rounds with random bases; no Baillie-PSW pseudoprime is known."""

_TABLE_CACHE_SIZE = 2
_tables: dict[tuple[int, int, int, int], list[list[Any]]] = {}


def is_probable_prime(value: int) -> bool:
    """Baillie-PSW plus Miller-Rabin (:data:`PRIME_TEST_ROUNDS`)."""
    return bool(gmpy2.is_prime(value, PRIME_TEST_ROUNDS))


def is_perfect_square(value: int) -> bool:
    return bool(gmpy2.is_square(value))


def gcd(a: int, b: int) -> int:
    return int(gmpy2.gcd(a, b))


def invert(value: int, modulus: int) -> int:
    """``value^-1 mod modulus``; the caller guarantees that the inverse exists."""
    return int(gmpy2.invert(value, modulus))


def powmod(base: int, exponent: int, modulus: int) -> int:
    return int(gmpy2.powmod(base, exponent, modulus))


def product_mod(values: Sequence[int], modulus: int) -> int:
    """``prod(values) mod modulus`` (1 for an empty sequence)."""
    m = gmpy2.mpz(modulus)
    total = gmpy2.mpz(1)
    for value in values:
        total = total * value % m
    return int(total)


def multiply_slotwise(columns: Sequence[Sequence[int]], modulus: int) -> list[int]:
    """``[prod(column[i] for column in columns) mod modulus for each i]``: the Paillier sum."""
    m = gmpy2.mpz(modulus)
    totals = [gmpy2.mpz(value) for value in columns[0]]
    for column in columns[1:]:
        totals = [total * value % m for total, value in zip(totals, column, strict=True)]
    return [int(total) for total in totals]


def fixed_base_table(
    base: int, modulus: int, exponent_bits: int, window_bits: int
) -> list[list[Any]]:
    """Rows ``i = 0 .. ceil(exponent_bits / w) - 1`` of ``base^(j * 2^(w*i)) mod modulus``.

    Entry ``[i][j]`` for ``j = 0 .. 2^w - 1`` (``j = 0`` is 1 and never used). Then
    ``base^a = prod_i table[i][digit_i(a)]`` where ``digit_i`` is the ``i``-th base-``2^w``
    digit of ``a``: one multiplication per non-zero digit and no squarings (fixed-base
    windowing, e.g. Menezes, van Oorschot, Vanstone, *Handbook of Applied Cryptography*, §14.6.3).
    """
    m = gmpy2.mpz(modulus)
    rows = -(-exponent_bits // window_bits)
    table: list[list[Any]] = []
    row_base = gmpy2.mpz(base) % m
    for _ in range(rows):
        row = [gmpy2.mpz(1), row_base]
        for _ in range(2, 1 << window_bits):
            row.append(row[-1] * row_base % m)
        table.append(row)
        # The next row's base is base^(2^(w*(i+1))) = row_base^(2^w) = row[-1] * row_base.
        row_base = row[-1] * row_base % m
    return table


def _cached_table(n: int, h_s: int, exponent_bits: int, window_bits: int) -> list[list[Any]]:
    key = (n, h_s, exponent_bits, window_bits)
    table = _tables.get(key)
    if table is None:
        table = fixed_base_table(h_s, n * n, exponent_bits, window_bits)
        while len(_tables) >= _TABLE_CACHE_SIZE:
            del _tables[next(iter(_tables))]
        _tables[key] = table
    return table


def encrypt_short_exponent(
    n: int,
    h_s: int,
    exponent_bits: int,
    window_bits: int,
    plaintexts: Sequence[int],
    exponents: Sequence[int],
) -> list[int]:
    """``(1 + m*n) * h_s^a mod n^2`` for each ``(m, a)``; ``0 <= m < n``, ``0 <= a < 2^bits``.

    ``1 + m*n < n^2`` needs no reduction (``(1 + n)^m = 1 + m*n mod n^2``), and ``h_s^a`` costs
    at most ``ceil(exponent_bits / window_bits)`` multiplications with the cached table.
    """
    table = _cached_table(n, h_s, exponent_bits, window_bits)
    n_mpz = gmpy2.mpz(n)
    n_squared = n_mpz * n_mpz
    mask = (1 << window_bits) - 1
    shifts = range(0, window_bits * len(table), window_bits)
    out: list[int] = []
    for plaintext, exponent in zip(plaintexts, exponents, strict=True):
        ciphertext = gmpy2.mpz(plaintext) * n_mpz + 1
        for row, shift in zip(table, shifts, strict=True):
            digit = (exponent >> shift) & mask
            if digit:
                ciphertext = ciphertext * row[digit] % n_squared
        out.append(int(ciphertext))
    return out


def encrypt_classic(n: int, plaintexts: Sequence[int], randomizers: Sequence[int]) -> list[int]:
    """``(1 + m*n) * r^n mod n^2`` for each ``(m, r)``, ``r`` in ``Z_n^*``: Paillier's original."""
    n_mpz = gmpy2.mpz(n)
    n_squared = n_mpz * n_mpz
    return [
        int((gmpy2.mpz(plaintext) * n_mpz + 1) * gmpy2.powmod(r, n_mpz, n_squared) % n_squared)
        for plaintext, r in zip(plaintexts, randomizers, strict=True)
    ]


def decrypt_crt(p: int, q: int, ciphertexts: Sequence[int]) -> list[int]:
    """Decrypt with the factors: ``m mod p`` and ``m mod q`` separately, then recombine.

    For ``c = (1 + n)^m * y`` with ``y`` an ``n``-th residue, ``c^(p-1) mod p^2 =
    1 + m*(p-1)*n mod p^2`` (``y^(p-1)`` is 1 there, ``Z*_{p^2}`` has order ``p(p-1)``), so
    ``L_p(x) = (x - 1) / p`` gives ``m*(p-1)*q mod p`` and ``h_p = ((p-1)*q)^-1 mod p`` removes
    the factor; likewise for ``q``. Exponents of half size modulo half-size squares make this
    about 4x faster than ``c^lambda mod n^2``.
    """
    p_mpz, q_mpz = gmpy2.mpz(p), gmpy2.mpz(q)
    p_squared, q_squared = p_mpz * p_mpz, q_mpz * q_mpz
    h_p = gmpy2.invert((p_mpz - 1) * q_mpz % p_mpz, p_mpz)
    h_q = gmpy2.invert((q_mpz - 1) * p_mpz % q_mpz, q_mpz)
    p_inverse = gmpy2.invert(p_mpz, q_mpz)
    out: list[int] = []
    for ciphertext in ciphertexts:
        m_p = (gmpy2.powmod(ciphertext, p_mpz - 1, p_squared) - 1) // p_mpz * h_p % p_mpz
        m_q = (gmpy2.powmod(ciphertext, q_mpz - 1, q_squared) - 1) // q_mpz * h_q % q_mpz
        out.append(int(m_p + p_mpz * ((m_q - m_p) * p_inverse % q_mpz)))
    return out
