"""The parameters of one secure-aggregation round, identical at the server and every participant."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg.errors import InvalidInput
from secagg.primitives.encoding import encode_fields, encode_text, encode_uint
from secagg.primitives.prg import SUPPORTED_MODULUS_BITS, mask_dtype
from secagg.primitives.shamir import MAX_X

__all__ = ["RoundConfig", "default_threshold"]

_FINGERPRINT_LABEL = b"fedsilo/secagg/v1/round-config"
CONTEXT_BYTES = 32


def default_threshold(cohort_size: int) -> int:
    """A strict majority of the cohort: the smallest ``t`` a ``RoundConfig`` accepts.

    See docs/requirements.md#pairwise-masking; rounds should use ``secure_threshold``
    (docs/threat-model.md), which participants' default ``CohortPolicy`` requires.
    """
    return cohort_size // 2 + 1


@dataclass(frozen=True)
class RoundConfig:
    """Job and round ids, the cohort (sorted), the threshold ``t``, vector length and ``k``.

    Participants are ordered by their id (``str`` order); the Shamir ``x`` coordinate of a
    participant is its 1-based position in the sorted cohort. ``t`` must satisfy
    ``n/2 < t <= n``: with a strict majority, two disjoint groups of ``t`` cannot both exist, so a
    server cannot get both shares of one secret from two different groups of honest participants.

    ``context`` is a 32-byte digest (SHA-256) of everything outside the protocol that determines a
    participant's input, which each side computes from what it holds. It enters the fingerprint,
    so participants given different inputs' parameters cannot verify each other's signed keys.
    """

    job_id: str
    round_id: str
    cohort: tuple[str, ...]
    threshold: int
    vector_length: int
    modulus_bits: int = 32
    context: bytes = field(kw_only=True)

    def __post_init__(self) -> None:
        for name in ("job_id", "round_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"{name} must be a non-empty string")
        cohort = tuple(self.cohort)
        if not all(isinstance(member, str) and member for member in cohort):
            raise InvalidInput("cohort members must be non-empty strings")
        if len(set(cohort)) != len(cohort):
            raise InvalidInput("cohort members must be distinct")
        if not 2 <= len(cohort) <= MAX_X:
            raise InvalidInput(f"a cohort has 2..{MAX_X} members, got {len(cohort)}")
        object.__setattr__(self, "cohort", tuple(sorted(cohort)))
        n = len(cohort)
        if not isinstance(self.threshold, int) or not n < 2 * self.threshold <= 2 * n:
            raise InvalidInput(
                f"threshold must satisfy n/2 < t <= n for n={n}, got t={self.threshold}"
            )
        if not isinstance(self.vector_length, int) or self.vector_length < 1:
            raise InvalidInput("vector_length must be a positive integer")
        if self.modulus_bits not in SUPPORTED_MODULUS_BITS:
            raise InvalidInput(
                f"modulus_bits must be one of {SUPPORTED_MODULUS_BITS}, got {self.modulus_bits}"
            )
        if not isinstance(self.context, bytes) or len(self.context) != CONTEXT_BYTES:
            raise InvalidInput(f"context must be {CONTEXT_BYTES} bytes (a SHA-256 digest)")

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """uint32 or uint64: numpy wrap-around is arithmetic modulo ``R = 2^modulus_bits``."""
        return mask_dtype(self.modulus_bits)

    def x_coordinate(self, participant: str) -> int:
        """The Shamir ``x`` of ``participant``: its 1-based position in the sorted cohort."""
        try:
            return self.cohort.index(participant) + 1
        except ValueError:
            raise InvalidInput(f"participant {participant!r} is not in the cohort") from None

    @functools.cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 of the canonical encoding; signed with the keys, it binds every parameter."""
        encoded = encode_fields(
            [
                _FINGERPRINT_LABEL,
                encode_text(self.job_id),
                encode_text(self.round_id),
                encode_fields(encode_text(member) for member in self.cohort),
                encode_uint(self.threshold, 4),
                encode_uint(self.vector_length, 8),
                encode_uint(self.modulus_bits, 1),
                self.context,
            ]
        )
        return hashlib.sha256(encoded).digest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` inverts it."""
        return {
            "job_id": self.job_id,
            "round_id": self.round_id,
            "cohort": list(self.cohort),
            "threshold": self.threshold,
            "vector_length": self.vector_length,
            "modulus_bits": self.modulus_bits,
            "context": self.context.hex(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundConfig:
        """Rebuild a config from :meth:`to_dict` output; anything malformed is InvalidInput."""
        try:
            return cls(
                job_id=data["job_id"],
                round_id=data["round_id"],
                cohort=tuple(data["cohort"]),
                threshold=data["threshold"],
                vector_length=data["vector_length"],
                modulus_bits=data["modulus_bits"],
                context=bytes.fromhex(data["context"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("malformed round config") from None
