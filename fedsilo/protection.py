"""What the coordinator and the participants agree on for a secure-aggregation round.

A participant's contribution is its model *delta* (trained weights minus the round's base
weights), flattened in the order of the model's tensors (each C-ordered) into one float64 vector,
clipped, scaled by its weight and quantized (``secagg.QuantizationSpec``). The coordinator
dequantizes the unmasked sum into the weighted mean delta and adds it to the base weights, which
equals the FedAvg of the trained weights (docs/secagg.md).

This module has no TensorFlow, gRPC or database code; both sides import it.
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.codec import CodecError, TensorSpec
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.tasks import TrainingSettings
from secagg import EncryptedShare, QuantizationSpec, decode_fields, encode_fields, encode_text

__all__ = [
    "Protection",
    "SecAggParameters",
    "decode_share_list",
    "encode_share_list",
    "flatten",
    "round_context",
    "unflatten",
]


class Protection(enum.StrEnum):
    """How a job protects each organization's update (docs/design.md, "Protection").

    ``none`` exists for tests and comparisons only; ``secagg`` is pairwise-masked secure
    aggregation; ``paillier`` adds packed Paillier encryption on top. The values are the names
    the CLI, the configuration and the admin API's JSON use.
    """

    NONE = "none"
    SECAGG = "secagg"
    PAILLIER = "paillier"


@dataclass(frozen=True)
class SecAggParameters:
    """The parameters of one round as sent to every participant (``pb.SecAggParameters``)."""

    threshold: int
    modulus_bits: int
    vector_length: int
    cohort: tuple[str, ...]
    clip: float
    levels_bits: int
    max_participants: int
    max_weight: int

    def quantization(self) -> QuantizationSpec:
        """The quantization spec; raises secagg's BitBudgetExceeded if the sums could overflow."""
        return QuantizationSpec(
            clip=self.clip,
            levels_bits=self.levels_bits,
            modulus_bits=self.modulus_bits,
            max_participants=self.max_participants,
            max_weight=self.max_weight,
        )


_CONTEXT_LABEL = b"fedsilo/v1/round-context"


def _u64(value: int) -> bytes:
    # Fixed width, so that no two integers (or field lists) encode alike.
    return int(value).to_bytes(8, "big", signed=True)


def _f64(value: float) -> bytes:
    return struct.pack(">d", float(value))


def round_context(
    *,
    protection: Protection,
    job_id: str,
    round_number: int,
    task_name: str,
    algorithm: str,
    base_version: int,
    base_model_sha256: bytes,
    training: TrainingSettings,
    parameters: SecAggParameters,
    min_participants: int,
    paillier_key_fingerprint: bytes = b"",
    dp: DifferentialPrivacy | None = None,
) -> bytes:
    """SHA-256 of everything that determines an organization's input to one round.

    Both sides compute it from what they hold (the coordinator from the job spec and the model
    version it serves, a participant from its assignment and the model bytes it verified), and
    it enters ``secagg.RoundConfig.context``: two participants handed different values cannot
    complete a round together (docs/secagg.md, "Round context binding"). The cohort, vector length
    and round id are bound by the round config itself. A job's differential-privacy settings
    (``dp``) are bound too, so no organization can be handed a smaller clip or noise multiplier
    than its peers (docs/differential-privacy.md); a job without them encodes as before.
    """
    if len(base_model_sha256) != hashlib.sha256().digest_size:
        raise ValueError("base_model_sha256 must be a SHA-256 digest")
    encoded = encode_fields(
        [
            _CONTEXT_LABEL,
            encode_text(protection.value),
            encode_text(job_id),
            _u64(round_number),
            encode_text(task_name),
            encode_text(algorithm),
            _u64(base_version),
            base_model_sha256,
            _u64(training.local_epochs),
            _u64(training.batch_size),
            _f64(training.learning_rate),
            _u64(training.seed),
            _f64(parameters.clip),
            _u64(parameters.levels_bits),
            _u64(parameters.modulus_bits),
            _u64(parameters.max_participants),
            _u64(parameters.max_weight),
            _u64(parameters.threshold),
            _u64(min_participants),
            paillier_key_fingerprint,
        ]
        + _privacy_fields(dp)
    )
    return hashlib.sha256(encoded).digest()


def _privacy_fields(dp: DifferentialPrivacy | None) -> list[bytes]:
    if dp is None or dp == DifferentialPrivacy():
        return []
    return [
        encode_text("dp"),
        _f64(dp.clip),
        _f64(dp.noise_multiplier),
        _f64(dp.delta),
        _f64(dp.epsilon_budget),
    ]


def flatten(weights: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """One float64 vector of every tensor's C-ordered values, in tensor order."""
    if not weights:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def unflatten(
    vector: npt.NDArray[Any], specs: Sequence[TensorSpec], dtype: str = "float32"
) -> list[npt.NDArray[Any]]:
    """Split a flat vector back into tensors of the given shapes (cast to ``dtype``)."""
    sizes = [math.prod(spec.shape) for spec in specs]
    if vector.ndim != 1 or vector.size != sum(sizes):
        raise CodecError(f"a vector of {vector.size} values does not fill {sum(sizes)} weights")
    tensors: list[npt.NDArray[Any]] = []
    offset = 0
    for spec, size in zip(specs, sizes, strict=True):
        tensors.append(vector[offset : offset + size].reshape(spec.shape).astype(dtype))
        offset += size
    return tensors


def encode_share_list(shares: Sequence[EncryptedShare]) -> bytes:
    """The SHARES phase message body: the canonical fields of every encrypted share."""
    return encode_fields(share.to_bytes() for share in shares)


def decode_share_list(body: bytes) -> tuple[EncryptedShare, ...]:
    """Invert :func:`encode_share_list`; malformed bytes raise secagg's InvalidInput."""
    return tuple(EncryptedShare.from_bytes(item) for item in decode_fields(body))
