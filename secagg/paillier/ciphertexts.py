"""A vector of packed Paillier ciphertexts bound to its key, and the slot-wise homomorphic sum.

``PaillierCiphertexts`` carries the key fingerprint, the packing layout (``k``, ``n_max``; the
key size comes from the key), how many participants' vectors it sums (``contributions``), how
many values are packed, and one ciphertext per plaintext. Its encoding is::

    fields("fedsilo/paillier/v1/ciphertexts", fingerprint (32), k (1), n_max (4),
           contributions (4), value_count (8), c_0 || c_1 || ...)

with every ``c_i`` big-endian in exactly ``2 * bits(n) / 8`` bytes (512 at 2048 bits). Decoding
needs the public key and rejects (docs/fault-matrix.md S17) another key's fingerprint, a ciphertext
outside ``[1, n^2)`` or sharing a factor with ``n`` (not in ``Z*_{n^2}``: a multiple of ``p``
would also be a handle on the factorization), wrong counts and widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from secagg.errors import InvalidInput
from secagg.paillier.arithmetic import gcd, multiply_slotwise, product_mod
from secagg.paillier.keys import FINGERPRINT_BYTES, PaillierPublicKey
from secagg.paillier.packing import PackingLayout
from secagg.primitives.encoding import decode_fields, decode_uint, encode_fields, encode_uint

__all__ = ["PaillierCiphertexts", "add_ciphertexts", "check_ciphertexts"]

_LABEL = b"fedsilo/paillier/v1/ciphertexts"


def check_ciphertexts(ciphertexts: Sequence[int], public_key: PaillierPublicKey) -> None:
    """Every ciphertext must be an int in ``[1, n^2)`` coprime with ``n``, else InvalidInput.

    Coprimality is checked once for the whole batch: ``gcd(prod c_i mod n, n) = 1`` exactly
    when no ``c_i`` shares a prime factor with ``n``.
    """
    n, n_squared = public_key.n, public_key.n_squared
    for index, value in enumerate(ciphertexts):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < n_squared:
            raise InvalidInput(f"ciphertext {index} is outside [1, n^2)")
    if gcd(product_mod(ciphertexts, n), n) != 1:
        index = next(i for i, value in enumerate(ciphertexts) if gcd(value, n) != 1)
        raise InvalidInput(f"ciphertext {index} shares a factor with n")


@dataclass(frozen=True)
class PaillierCiphertexts:
    """Ciphertexts of ``value_count`` packed values summed over ``contributions`` participants.

    The constructor checks the structure; :meth:`check_key` (run by :meth:`from_bytes`,
    :func:`add_ciphertexts` and decryption) checks it against a key.
    """

    fingerprint: bytes
    layout: PackingLayout
    contributions: int
    value_count: int
    ciphertexts: tuple[int, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.fingerprint, bytes) or len(self.fingerprint) != FINGERPRINT_BYTES:
            raise InvalidInput(f"a key fingerprint is {FINGERPRINT_BYTES} bytes")
        if not isinstance(self.layout, PackingLayout):
            raise InvalidInput("layout must be a PackingLayout")
        for name in ("contributions", "value_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be a positive integer")
        if self.contributions > self.layout.max_participants:
            raise InvalidInput(
                f"{self.contributions} contributions exceed max_participants = "
                f"{self.layout.max_participants}"
            )
        ciphertexts = tuple(self.ciphertexts)
        expected = self.layout.ciphertext_count(self.value_count)
        if len(ciphertexts) != expected:
            raise InvalidInput(
                f"{self.value_count} values need {expected} ciphertexts, got {len(ciphertexts)}"
            )
        object.__setattr__(self, "ciphertexts", ciphertexts)

    def check_key(self, public_key: PaillierPublicKey) -> None:
        """Refuse another key's ciphertexts, a layout for another key size, or invalid values."""
        if self.fingerprint != public_key.fingerprint:
            raise InvalidInput("the ciphertexts were made under another key (fingerprint)")
        if self.layout.key_bits != public_key.bits:
            raise InvalidInput("the packing layout is for another key size")
        check_ciphertexts(self.ciphertexts, public_key)

    def to_bytes(self) -> bytes:
        width = self.layout.key_bits // 4
        return encode_fields(
            [
                _LABEL,
                self.fingerprint,
                encode_uint(self.layout.modulus_bits, 1),
                encode_uint(self.layout.max_participants, 4),
                encode_uint(self.contributions, 4),
                encode_uint(self.value_count, 8),
                b"".join(value.to_bytes(width, "big") for value in self.ciphertexts),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes, public_key: PaillierPublicKey) -> PaillierCiphertexts:
        """Invert :meth:`to_bytes` and run :meth:`check_key` with ``public_key``."""
        fields = decode_fields(data)
        if len(fields) != 7 or fields[0] != _LABEL:
            raise InvalidInput("not encoded Paillier ciphertexts")
        _, fingerprint, k, n_max, contributions, value_count, blob = fields
        if fingerprint != public_key.fingerprint:
            raise InvalidInput("the ciphertexts were made under another key (fingerprint)")
        layout = PackingLayout(decode_uint(k, 1), decode_uint(n_max, 4), public_key.bits)
        width = public_key.ciphertext_bytes
        if len(blob) % width:
            raise InvalidInput(f"the ciphertext block is not a multiple of {width} bytes")
        values = tuple(
            int.from_bytes(blob[start : start + width], "big")
            for start in range(0, len(blob), width)
        )
        ciphertexts = cls(
            fingerprint, layout, decode_uint(contributions, 4), decode_uint(value_count, 8), values
        )
        ciphertexts.check_key(public_key)
        return ciphertexts


def add_ciphertexts(
    public_key: PaillierPublicKey, items: Sequence[PaillierCiphertexts]
) -> PaillierCiphertexts:
    """Slot-wise homomorphic sum: the product of the ciphertexts modulo ``n^2``, position-wise.

    All items must be valid under ``public_key`` with the same layout and value count, and their
    contributions together must not exceed ``max_participants`` (beyond that the slot sums could
    reach the guard bit, see :mod:`secagg.paillier.packing`). A running sum is
    ``total = add_ciphertexts(key, [total, new])``.
    """
    if not items:
        raise InvalidInput("nothing to add")
    first = items[0]
    for item in items:
        if not isinstance(item, PaillierCiphertexts):
            raise InvalidInput("only PaillierCiphertexts can be added")
        if item.layout != first.layout or item.value_count != first.value_count:
            raise InvalidInput("ciphertexts with different layouts or lengths cannot be added")
        item.check_key(public_key)
    total = sum(item.contributions for item in items)
    if total > first.layout.max_participants:
        raise InvalidInput(
            f"a sum of {total} contributions exceeds max_participants = "
            f"{first.layout.max_participants}"
        )
    if len(items) == 1:
        return first
    products = multiply_slotwise([item.ciphertexts for item in items], public_key.n_squared)
    return PaillierCiphertexts(
        public_key.fingerprint, first.layout, total, first.value_count, tuple(products)
    )
