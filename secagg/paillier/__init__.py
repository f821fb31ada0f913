"""Packed Paillier encryption for the ``paillier`` protection mode.

Requirements: docs/requirements.md#packed-paillier; design: docs/paillier.md.

Keys (:func:`generate_private_key`, canonical encodings, fingerprint), a packing codec whose
slots never carry over ``n_max`` participants (:class:`PackingLayout`), encryption with a
short-exponent randomizer and a fixed-base table or the classic ``r^n``, CRT decryption, both
spread over worker processes (:class:`PaillierWorkers`), and the slot-wise homomorphic sum
(:func:`add_ciphertexts`) of :class:`PaillierCiphertexts`, and the input tags that bind a sum to
the round it was made in (:func:`input_tag`). Pure like the rest of ``secagg``:
ints, bytes, numpy arrays and dataclasses in and out; randomness injected. Errors raised on
purpose are :class:`secagg.errors.InvalidInput`.
"""

from secagg.paillier.ceremony import (
    DealtKey,
    JobKey,
    SealedKey,
    make_job_key,
    open_private_key,
    seal_private_key,
    sign_public_key,
)
from secagg.paillier.ciphertexts import PaillierCiphertexts, add_ciphertexts, check_ciphertexts
from secagg.paillier.encryption import (
    ClassicRandomizer,
    Randomizer,
    ShortExponentRandomizer,
    decrypt_integers,
    decrypt_vector,
    encrypt_integers,
    encrypt_vector,
)
from secagg.paillier.keys import (
    DEFAULT_KEY_BITS,
    MIN_KEY_BITS,
    PaillierPrivateKey,
    PaillierPublicKey,
    default_exponent_bits,
    generate_private_key,
)
from secagg.paillier.packing import MAX_PARTICIPANTS, PackingLayout
from secagg.paillier.tags import input_tag, tag_matches, tag_weights
from secagg.paillier.workers import PaillierWorkers

__all__ = [
    "DEFAULT_KEY_BITS",
    "MAX_PARTICIPANTS",
    "MIN_KEY_BITS",
    "ClassicRandomizer",
    "DealtKey",
    "JobKey",
    "PackingLayout",
    "PaillierCiphertexts",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "PaillierWorkers",
    "Randomizer",
    "SealedKey",
    "ShortExponentRandomizer",
    "add_ciphertexts",
    "check_ciphertexts",
    "decrypt_integers",
    "decrypt_vector",
    "default_exponent_bits",
    "encrypt_integers",
    "encrypt_vector",
    "generate_private_key",
    "input_tag",
    "make_job_key",
    "open_private_key",
    "seal_private_key",
    "sign_public_key",
    "tag_matches",
    "tag_weights",
]
