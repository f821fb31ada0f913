"""Packing of mask words into Paillier plaintexts, BatchCrypt-style, with slots that never carry.

A value is a word ``y`` of ``Z_R``, ``R = 2^k`` (``k`` = 32 or 64: the uint32/uint64 vectors of
:mod:`secagg.masking`). Up to ``n_max`` encrypted vectors are summed slot by slot, and the
*integer* sum of each slot must stay inside its slot. With ``c = ceil(log2 n_max)``::

    slot_bits = k + c + 1                        (k value bits, c carry bits, 1 guard bit)
    slots     = floor((bits(n) - 1) / slot_bits) (values per plaintext)
    plaintext = sum_j y_j * 2^(j * slot_bits)    (slot 0 in the least significant bits)

No carry: a slot sum is at most ``n_max * (2^k - 1) < 2^k * 2^c = 2^(slot_bits - 1)``, so it fits
below the guard bit. No reduction modulo ``n``: every slot is below ``2^slot_bits``, so the whole
sum is below ``2^(slots * slot_bits) <= 2^(bits(n) - 1) <= n`` (the top bit of ``n`` is set); the
one-bit margin is what makes this hold for every ``n`` of that length. The sum is therefore
the exact integer ``sum_j S_j * 2^(j * slot_bits)`` with ``0 <= S_j < 2^slot_bits``, whose base
``2^slot_bits`` digits are the ``S_j``.

The guard bit: up to ``2^(c+1) - 1 >= 2 * n_max - 1`` contributions still cannot carry into the
next slot, so a sum of more than ``n_max`` vectors (refused by the sum API anyway) shows up as
a slot above ``contributions * (R - 1)`` when unpacking instead of silently corrupting its
neighbour. :meth:`PackingLayout.unpack` checks every slot against that bound, and checks that
padding slots are zero and no bit is set above the last slot.

Example: 2048-bit ``n``, ``k = 32``, ``n_max = 16``: slots of 37 bits, 55 values per plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.errors import InvalidInput
from secagg.paillier.keys import check_key_bits
from secagg.primitives.prg import SUPPORTED_MODULUS_BITS, MaskVector, mask_dtype

__all__ = ["MAX_PARTICIPANTS", "PackingLayout"]

MAX_PARTICIPANTS = 65535
"""Largest ``n_max``: the container encodes counts in 4 bytes; cross-silo cohorts are small."""

_WORD_BITS = 64
_CHUNK_PLAINTEXTS = 2048
"""Plaintexts converted per numpy pass: bounds the temporary bit arrays to a few tens of MB."""


@dataclass(frozen=True)
class PackingLayout:
    """Slot layout for ``k``-bit words summed over at most ``n_max`` participants under a key."""

    modulus_bits: int
    max_participants: int
    key_bits: int

    def __post_init__(self) -> None:
        if self.modulus_bits not in SUPPORTED_MODULUS_BITS:
            raise InvalidInput(
                f"modulus_bits must be one of {SUPPORTED_MODULUS_BITS}, got {self.modulus_bits}"
            )
        if (
            isinstance(self.max_participants, bool)
            or not isinstance(self.max_participants, int)
            or not 1 <= self.max_participants <= MAX_PARTICIPANTS
        ):
            raise InvalidInput(
                f"max_participants must be an integer in 1..{MAX_PARTICIPANTS}, "
                f"got {self.max_participants!r}"
            )
        check_key_bits(self.key_bits)

    @property
    def carry_bits(self) -> int:
        """``ceil(log2 n_max)``: room for the sum of ``n_max`` words."""
        return (self.max_participants - 1).bit_length()

    @property
    def slot_bits(self) -> int:
        """``k + ceil(log2 n_max) + 1`` (37 for k=32, n_max=16)."""
        return self.modulus_bits + self.carry_bits + 1

    @property
    def slots(self) -> int:
        """Values per plaintext: ``floor((key_bits - 1) / slot_bits)`` (55 at 2048, k=32, 16)."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def packed_bits(self) -> int:
        """Bits of a plaintext that carry slots: ``slots * slot_bits <= key_bits - 1``."""
        return self.slots * self.slot_bits

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """uint32 or uint64, the dtype of the vectors this layout packs."""
        return mask_dtype(self.modulus_bits)

    def ciphertext_count(self, value_count: int) -> int:
        """Plaintexts (= ciphertexts) for ``value_count`` values: ``ceil(value_count / slots)``."""
        return -(-value_count // self.slots)

    def sum_bound(self, contributions: int) -> int:
        """The largest possible slot sum of ``contributions`` vectors: ``contributions*(R-1)``."""
        return contributions * ((1 << self.modulus_bits) - 1)

    @property
    def _row_bytes(self) -> int:
        return (self.packed_bits + 7) // 8

    def pack(self, values: MaskVector) -> list[int]:
        """Pack a 1-D uint32 (k=32) or uint64 (k=64) vector into plaintext integers.

        The last plaintext is padded with zero slots.
        """
        if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype != self.dtype:
            raise InvalidInput(f"values must be a 1-D {self.dtype} numpy array")
        if values.size == 0:
            raise InvalidInput("cannot pack an empty vector")
        k, slots, slot_bits = self.modulus_bits, self.slots, self.slot_bits
        out: list[int] = []
        step = _CHUNK_PLAINTEXTS * slots
        for start in range(0, values.size, step):
            chunk = values[start : start + step]
            rows = -(-chunk.size // slots)
            words = np.zeros(rows * slots, dtype="<u8")
            words[: chunk.size] = chunk
            word_bits = np.unpackbits(
                words.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little"
            ).reshape(rows, slots, _WORD_BITS)
            slot_grid = np.zeros((rows, slots, slot_bits), dtype=np.uint8)
            slot_grid[:, :, :k] = word_bits[:, :, :k]
            row_grid = np.zeros((rows, self._row_bytes * 8), dtype=np.uint8)
            row_grid[:, : self.packed_bits] = slot_grid.reshape(rows, self.packed_bits)
            packed = np.packbits(row_grid, axis=1, bitorder="little").tobytes()
            width = self._row_bytes
            out.extend(
                int.from_bytes(packed[row * width : (row + 1) * width], "little")
                for row in range(rows)
            )
        return out

    def unpack(
        self, plaintexts: Sequence[int], value_count: int, contributions: int
    ) -> npt.NDArray[np.uint64]:
        """The per-slot integer sums of ``contributions`` packed vectors, as uint64.

        The sums are *not* reduced modulo ``R``: for k = 32 each is the exact integer sum (below
        ``2^(32 + ceil(log2 n_max))``); for k = 64, where a sum may need more than 64 bits, it is
        the sum modulo ``2^64 = R``, which is all ``(S - M) mod R`` needs. Every slot is checked
        against ``contributions * (R - 1)`` (exactly, before any wrap-around), padding slots
        must be zero and no bit may be set above the last slot; otherwise ``InvalidInput``
        (more contributions than declared, or ciphertexts that are not sums of packed vectors).
        """
        if isinstance(value_count, bool) or not isinstance(value_count, int) or value_count < 1:
            raise InvalidInput("value_count must be a positive integer")
        if (
            isinstance(contributions, bool)
            or not isinstance(contributions, int)
            or not 1 <= contributions <= self.max_participants
        ):
            raise InvalidInput(
                f"a sum holds 1..{self.max_participants} contributions, got {contributions!r}"
            )
        if len(plaintexts) != self.ciphertext_count(value_count):
            raise InvalidInput(
                f"{value_count} values need {self.ciphertext_count(value_count)} plaintexts, "
                f"got {len(plaintexts)}"
            )
        limit = self.sum_bound(contributions)
        limit_high, limit_low = limit >> _WORD_BITS, limit & ((1 << _WORD_BITS) - 1)
        slots, slot_bits, width = self.slots, self.slot_bits, self._row_bytes
        low_bits = min(slot_bits, _WORD_BITS)
        out = np.empty(len(plaintexts) * slots, dtype=np.uint64)
        for start in range(0, len(plaintexts), _CHUNK_PLAINTEXTS):
            chunk = plaintexts[start : start + _CHUNK_PLAINTEXTS]
            for plaintext in chunk:
                if (
                    isinstance(plaintext, bool)
                    or not isinstance(plaintext, int)
                    or not 0 <= plaintext < 1 << self.packed_bits
                ):
                    raise InvalidInput("a plaintext has bits outside the packed slots")
            rows = len(chunk)
            raw = b"".join(plaintext.to_bytes(width, "little") for plaintext in chunk)
            grid = np.unpackbits(
                np.frombuffer(raw, dtype=np.uint8).reshape(rows, width), axis=1, bitorder="little"
            )[:, : self.packed_bits].reshape(rows * slots, slot_bits)
            low = _words(grid[:, :low_bits])
            high = _words(grid[:, _WORD_BITS:]) if slot_bits > _WORD_BITS else np.zeros_like(low)
            over = (high > limit_high) | ((high == limit_high) & (low > limit_low))
            if over.any():
                raise InvalidInput(
                    f"a slot exceeds the sum of {contributions} words below 2^{self.modulus_bits}:"
                    " more contributions than declared or a corrupted ciphertext"
                )
            first_padding = max(value_count - start * slots, 0)
            if low[first_padding:].any() or high[first_padding:].any():
                raise InvalidInput("a padding slot is not zero: a corrupted ciphertext")
            out[start * slots : (start + rows) * slots] = low
        return out[:value_count].copy()


def _words(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """Rows of at most 64 little-endian bits to uint64 words."""
    padded = np.zeros((bits.shape[0], _WORD_BITS), dtype=np.uint8)
    padded[:, : bits.shape[1]] = bits
    packed = np.packbits(padded, axis=1, bitorder="little")
    return packed.view(np.dtype("<u8")).reshape(-1).astype(np.uint64, copy=False)
