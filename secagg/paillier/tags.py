"""Input tags: a linear MAC over packed plaintexts that only holders of the private key can make.

Paillier ciphertexts are malleable: anyone with the public key multiplies an encryption of any
``delta`` into a sum, and a coordinator that watched whether organizations accept the result
could learn the aggregate bit by bit. Each participant therefore sends, beside its packed
ciphertexts ``Enc(m_1) ... Enc(m_L)``, one more ciphertext ``Enc(tag)`` with

    tag = sum_j beta_j * m_j  mod n,    beta_j = PRF(K, binding, j) mod n

where ``K`` is derived from the private key (every key holder has it, the coordinator does not)
and ``binding`` names the job, round and base version the input was made for. The tags add up
like the inputs: the product of the tag ciphertexts decrypts to ``sum_j beta_j * M_j`` for the
decrypted sums ``M_j``, whoever contributed. A sum changed by ``delta`` (or re-served under
another binding) passes only if the forger found ``sum_j beta_j * delta_j mod n`` without knowing
``beta``: probability about ``1 / min(p, q)``. See docs/paillier.md, "Authenticated versions".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from secagg.errors import InvalidInput
from secagg.paillier.keys import PaillierPrivateKey
from secagg.primitives.encoding import encode_fields
from secagg.primitives.kdf import derive_key

__all__ = ["TAG_LABEL", "input_tag", "tag_matches", "tag_weights"]

TAG_LABEL = b"fedsilo/paillier/v1/input-tag"
_KEY_LABEL = b"fedsilo/paillier/v1/tag-key"
_EXTRA_BYTES = 16
"""Bytes drawn beyond the size of ``n`` per weight: the bias of reducing modulo n is 2^-128."""


def tag_weights(private_key: PaillierPrivateKey, binding: bytes, count: int) -> list[int]:
    """``beta_1 .. beta_count`` for ``binding``: uniform in ``[0, n)`` to anyone without the key."""
    if not isinstance(private_key, PaillierPrivateKey):
        raise InvalidInput("private_key must be a PaillierPrivateKey")
    if not isinstance(binding, bytes) or count < 1:
        raise InvalidInput("a tag needs a binding and at least one plaintext")
    key = derive_key(private_key.to_bytes(), salt=b"", info=_KEY_LABEL)
    n = private_key.public_key.n
    width = (n.bit_length() + 7) // 8 + _EXTRA_BYTES
    stream = hashlib.shake_256(encode_fields([TAG_LABEL, key, binding])).digest(width * count)
    return [
        int.from_bytes(stream[index * width : (index + 1) * width], "big") % n
        for index in range(count)
    ]


def input_tag(private_key: PaillierPrivateKey, binding: bytes, plaintexts: Sequence[int]) -> int:
    """``sum_j beta_j * m_j mod n``: the tag of one participant's packed plaintexts."""
    weights = tag_weights(private_key, binding, len(plaintexts))
    n = private_key.public_key.n
    return sum(b * m for b, m in zip(weights, plaintexts, strict=True)) % n


def tag_matches(
    private_key: PaillierPrivateKey, binding: bytes, sums: Sequence[int], tag: int
) -> bool:
    """Whether the decrypted tag ``tag`` is the tag of the decrypted sums under ``binding``."""
    # Both sides are known to the key holder only; nothing about them leaks through timing.
    return input_tag(private_key, binding, sums) == tag
