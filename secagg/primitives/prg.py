"""Mask PRG: an AES-256 counter-mode keystream of a 32-byte seed, read as little-endian words.

Definition. The keystream of ``seed`` is cut into segments of 2^16 AES blocks (1 MiB). Block
``m`` of segment ``s`` is ``AES-256(seed, s || m + 2)``, where ``s`` is a 96-bit and ``m + 2`` a
32-bit big-endian integer (the counter-block layout of GCM, NIST SP 800-38D, with nonce ``s``).
``PRG(seed)[i]`` is bytes ``[i*w, (i+1)*w)`` of the keystream for words of ``w`` bytes (4 for
k=32, 8 for k=64), little-endian. All counter blocks are distinct, so this is plain CTR mode.

Why this layout: each segment is produced by OpenSSL's AES-256-GCM encryptor on a zero buffer
(``update_into``, tag never computed or used), whose stitched AES code path is markedly faster
than its stand-alone CTR mode, and segments let threads start anywhere on a segment boundary.

The seed is the AES key as is: it is never folded or truncated (a 32-bit seed could be brute
forced from one masked vector). Every seed masks one vector only, so no (key, counter) pair is
ever reused. With ``workers > 1`` the vector is cut into runs of whole segments processed by
threads (OpenSSL and numpy release the GIL); the result does not depend on ``workers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.errors import InvalidInput

__all__ = [
    "MaskVector",
    "SEED_BYTES",
    "SEGMENT_BYTES",
    "SUPPORTED_MODULUS_BITS",
    "apply_masks",
    "expand",
    "mask_dtype",
]

SEED_BYTES = 32
SUPPORTED_MODULUS_BITS = (32, 64)
SEGMENT_BYTES = 1 << 20
"""Keystream segment: 2^16 AES blocks. 1 MiB keeps one keystream segment and the matching slice
of the target close to the core's cache while each OpenSSL call stays large."""
_NONCE_BYTES = 12
_BLOCK_BYTES = 16

MaskVector = npt.NDArray[np.unsignedinteger[Any]]
"""A vector in Z_R, R = 2^k: a 1-D C-contiguous numpy uint32 (k=32) or uint64 (k=64) array."""


def mask_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger[Any]]:
    """The numpy dtype whose wrap-around arithmetic is arithmetic modulo ``2^modulus_bits``."""
    if modulus_bits == 32:
        return np.dtype(np.uint32)
    if modulus_bits == 64:
        return np.dtype(np.uint64)
    raise InvalidInput(f"modulus bits must be one of {SUPPORTED_MODULUS_BITS}, got {modulus_bits}")


def expand(seed: bytes, length: int, modulus_bits: int) -> MaskVector:
    """A fresh vector ``PRG(seed)`` of ``length`` words modulo ``2^modulus_bits``."""
    if length < 0:
        raise InvalidInput("length must not be negative")
    vector: MaskVector = np.zeros(length, dtype=mask_dtype(modulus_bits))
    apply_masks(vector, add=(seed,), subtract=())
    return vector


def apply_masks(
    target: MaskVector,
    *,
    add: Sequence[bytes],
    subtract: Sequence[bytes],
    workers: int = 1,
) -> None:
    """In place: ``target += sum(PRG(s) for s in add) - sum(PRG(s) for s in subtract) (mod R)``."""
    _check_target(target)
    for seed in (*add, *subtract):
        _check_seed(seed)
    if workers < 1:
        raise InvalidInput("workers must be at least 1")
    jobs = [(seed, True) for seed in add] + [(seed, False) for seed in subtract]
    if not jobs or target.size == 0:
        return
    ranges = _slices(target.size, target.itemsize, workers)
    if len(ranges) == 1:
        _apply_range(target, 0, target.size, jobs)
        return
    # The calling thread takes the last slice itself: one thread fewer to start and schedule.
    with ThreadPoolExecutor(max_workers=len(ranges) - 1, thread_name_prefix="secagg-prg") as pool:
        futures = [pool.submit(_apply_range, target, lo, hi, jobs) for lo, hi in ranges[:-1]]
        _apply_range(target, *ranges[-1], jobs)
        for future in futures:
            future.result()


def _check_target(target: MaskVector) -> None:
    if not isinstance(target, np.ndarray):
        raise InvalidInput("the mask target must be a numpy array")
    if target.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise InvalidInput(f"the mask target must be uint32 or uint64, not {target.dtype}")
    if target.ndim != 1 or not target.flags.c_contiguous or not target.flags.writeable:
        raise InvalidInput("the mask target must be a writable 1-D contiguous array")


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise InvalidInput(f"a PRG seed is exactly {SEED_BYTES} bytes")


def _slices(size: int, itemsize: int, workers: int) -> list[tuple[int, int]]:
    # Whole segments per worker, so every slice starts on a segment (nonce) boundary.
    segment_words = SEGMENT_BYTES // itemsize
    segments = -(-size // segment_words)
    per_worker = -(-segments // workers)
    step = per_worker * segment_words
    return [(start, min(size, start + step)) for start in range(0, size, step)]


def _apply_range(
    target: MaskVector, start: int, stop: int, jobs: Sequence[tuple[bytes, bool]]
) -> None:
    itemsize = target.itemsize
    segment_words = SEGMENT_BYTES // itemsize
    zeros = bytes(min(SEGMENT_BYTES, (stop - start) * itemsize))
    scratch = bytearray(len(zeros) + _BLOCK_BYTES - 1)
    word = np.dtype(f"<u{itemsize}")
    # Segments outside, seeds inside: the target slice stays in cache while every mask is added.
    for position in range(start, stop, segment_words):
        count = min(segment_words, stop - position)
        nonce = (position // segment_words).to_bytes(_NONCE_BYTES, "big")
        source = zeros if count * itemsize == len(zeros) else memoryview(zeros)[: count * itemsize]
        part = target[position : position + count]
        for seed, positive in jobs:
            encryptor = Cipher(algorithms.AES(seed), modes.GCM(nonce)).encryptor()
            encryptor.update_into(source, scratch)
            stream = np.frombuffer(scratch, dtype=word, count=count)
            if positive:
                np.add(part, stream, out=part)
            else:
                np.subtract(part, stream, out=part)
