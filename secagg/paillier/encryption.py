"""Paillier encryption with a short-exponent or classic randomizer, and CRT decryption.

A ciphertext of ``0 <= m < n`` is ``c = (1 + m*n) * rho mod n^2`` where the randomizer ``rho``
is an ``n``-th residue:

* :class:`ShortExponentRandomizer` (default): ``rho = h_s^a`` with ``a`` uniform below
  ``2^exponent_bits`` (Damgård, Jurik, Nielsen), computed with a fixed-base window table of
  ``h_s``: ``ceil(exponent_bits / window_bits)`` multiplications modulo ``n^2`` instead of a
  full exponentiation. Its security rests on DCR plus the short-exponent assumption
  (docs/paillier.md); the exponent length is configurable, 448 bits by default at 2048 bits.
* :class:`ClassicRandomizer`: ``rho = r^n`` with ``r`` uniform in ``Z_n^*`` (Paillier 1999),
  which needs DCR only and costs one full exponentiation per ciphertext.

Exponents and randomizers are drawn in this process from the injected random source
(``os.urandom`` by default), then the arithmetic is spread over worker processes
(:class:`~secagg.paillier.workers.PaillierWorkers`), so the ciphertexts do not depend on the
number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import InvalidInput
from secagg.paillier.arithmetic import decrypt_crt, encrypt_classic, encrypt_short_exponent
from secagg.paillier.ciphertexts import PaillierCiphertexts, check_ciphertexts
from secagg.paillier.keys import (
    PaillierPrivateKey,
    PaillierPublicKey,
    default_exponent_bits,
    minimum_exponent_bits,
    random_unit,
)
from secagg.paillier.packing import PackingLayout
from secagg.paillier.workers import PaillierWorkers, run_batch
from secagg.primitives.prg import MaskVector
from secagg.primitives.randomness import RandomSource, random_bytes

__all__ = [
    "ClassicRandomizer",
    "MAX_WINDOW_BITS",
    "Randomizer",
    "ShortExponentRandomizer",
    "decrypt_integers",
    "decrypt_vector",
    "encrypt_integers",
    "encrypt_vector",
]

MAX_WINDOW_BITS = 12
"""Largest table window: at 2048 bits and w = 12 the table of h_s already takes about 80 MB."""

# Batches below these sizes, about half a second of work at 2048 bits on one core, stay in the
# calling process when no pool is given: a temporary pool would spend as long starting.
_SERIAL_BELOW_SHORT_EXPONENT = 2048
_SERIAL_BELOW_CLASSIC = 64
_SERIAL_BELOW_DECRYPT = 256


@dataclass(frozen=True)
class ShortExponentRandomizer:
    """``h_s^a``, ``a`` uniform below ``2^exponent_bits``, with a ``2^window_bits``-entry table.

    ``exponent_bits=None`` takes :func:`~secagg.paillier.keys.default_exponent_bits` of the key
    (448 at 2048 bits, 512 at 3072); at least twice the key's security strength and at most
    ``bits(n)`` are accepted. The table has ``ceil(exponent_bits / window_bits)`` rows of
    ``2^window_bits`` entries of ``2 * bits(n)`` bits (7.3 MB at 2048 bits with the defaults)
    and is built once per process and key.
    """

    exponent_bits: int | None = None
    window_bits: int = 8

    def __post_init__(self) -> None:
        if (
            isinstance(self.window_bits, bool)
            or not isinstance(self.window_bits, int)
            or not 1 <= self.window_bits <= MAX_WINDOW_BITS
        ):
            raise InvalidInput(f"window_bits must be in 1..{MAX_WINDOW_BITS}")
        if self.exponent_bits is not None and (
            isinstance(self.exponent_bits, bool) or not isinstance(self.exponent_bits, int)
        ):
            raise InvalidInput("exponent_bits must be an integer or None")

    def exponent_bits_for(self, public_key: PaillierPublicKey) -> int:
        """The exponent length used with ``public_key``; too short or too long is refused."""
        bits = (
            default_exponent_bits(public_key.bits)
            if self.exponent_bits is None
            else self.exponent_bits
        )
        floor = minimum_exponent_bits(public_key.bits)
        if not floor <= bits <= public_key.bits:
            raise InvalidInput(
                f"a {public_key.bits}-bit key needs a short exponent of {floor}..{public_key.bits}"
                f" bits, got {bits}"
            )
        return bits


@dataclass(frozen=True)
class ClassicRandomizer:
    """``r^n mod n^2`` with ``r`` uniform in ``Z_n^*``: Paillier's original randomizer."""


Randomizer = ShortExponentRandomizer | ClassicRandomizer


def encrypt_integers(
    public_key: PaillierPublicKey,
    plaintexts: Sequence[int],
    *,
    random: RandomSource = os.urandom,
    randomizer: Randomizer | None = None,
    workers: PaillierWorkers | None = None,
) -> list[int]:
    """Encrypt each ``0 <= m < n``; ``randomizer`` defaults to :class:`ShortExponentRandomizer`.

    ``workers=None`` uses a temporary pool of all cores for large batches (see
    :func:`~secagg.paillier.workers.run_batch`); pass a :class:`PaillierWorkers` to reuse one.
    """
    if not isinstance(public_key, PaillierPublicKey):
        raise InvalidInput("public_key must be a PaillierPublicKey")
    n = public_key.n
    values = list(plaintexts)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise InvalidInput("a plaintext must be an integer in [0, n)")
    if not values:
        return []
    chosen = ShortExponentRandomizer() if randomizer is None else randomizer
    if isinstance(chosen, ShortExponentRandomizer):
        bits = chosen.exponent_bits_for(public_key)
        size = (bits + 7) // 8
        excess = 8 * size - bits
        # One draw per ciphertext: a = the top ``bits`` bits of ceil(bits/8) fresh bytes.
        exponents = [int.from_bytes(random_bytes(random, size), "big") >> excess for _ in values]
        return run_batch(
            workers,
            encrypt_short_exponent,
            (n, public_key.h_s, bits, chosen.window_bits),
            (values, exponents),
            serial_below=_SERIAL_BELOW_SHORT_EXPONENT,
        )
    if isinstance(chosen, ClassicRandomizer):
        randomizers = [random_unit(n, random) for _ in values]
        return run_batch(
            workers,
            encrypt_classic,
            (n,),
            (values, randomizers),
            serial_below=_SERIAL_BELOW_CLASSIC,
        )
    raise InvalidInput("randomizer must be a ShortExponentRandomizer or a ClassicRandomizer")


def decrypt_integers(
    private_key: PaillierPrivateKey,
    ciphertexts: Sequence[int],
    *,
    workers: PaillierWorkers | None = None,
) -> list[int]:
    """CRT decryption of each ciphertext, which must lie in ``[1, n^2)`` and be coprime with n."""
    if not isinstance(private_key, PaillierPrivateKey):
        raise InvalidInput("private_key must be a PaillierPrivateKey")
    values = list(ciphertexts)
    check_ciphertexts(values, private_key.public_key)
    if not values:
        return []
    return run_batch(
        workers,
        decrypt_crt,
        (private_key.p, private_key.q),
        (values,),
        serial_below=_SERIAL_BELOW_DECRYPT,
    )


def encrypt_vector(
    public_key: PaillierPublicKey,
    layout: PackingLayout,
    values: MaskVector,
    *,
    random: RandomSource = os.urandom,
    randomizer: Randomizer | None = None,
    workers: PaillierWorkers | None = None,
) -> PaillierCiphertexts:
    """Pack a uint32/uint64 vector with ``layout`` and encrypt it: one participant's input."""
    if not isinstance(layout, PackingLayout) or layout.key_bits != public_key.bits:
        raise InvalidInput("the packing layout must be made for this key's size")
    plaintexts = layout.pack(values)
    ciphertexts = encrypt_integers(
        public_key, plaintexts, random=random, randomizer=randomizer, workers=workers
    )
    return PaillierCiphertexts(
        public_key.fingerprint, layout, 1, int(values.size), tuple(ciphertexts)
    )


def decrypt_vector(
    private_key: PaillierPrivateKey,
    ciphertexts: PaillierCiphertexts,
    *,
    workers: PaillierWorkers | None = None,
) -> npt.NDArray[np.uint64]:
    """Decrypt and unpack: the per-slot integer sums (see :meth:`PackingLayout.unpack`).

    The caller removes its correction and reduces: ``(sums - M) mod R``.
    """
    if not isinstance(ciphertexts, PaillierCiphertexts):
        raise InvalidInput("ciphertexts must be PaillierCiphertexts")
    ciphertexts.check_key(private_key.public_key)
    plaintexts = run_batch(
        workers,
        decrypt_crt,
        (private_key.p, private_key.q),
        (list(ciphertexts.ciphertexts),),
        serial_below=_SERIAL_BELOW_DECRYPT,
    )
    return ciphertexts.layout.unpack(plaintexts, ciphertexts.value_count, ciphertexts.contributions)
