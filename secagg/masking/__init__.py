"""Bonawitz et al. 2017 secure aggregation: config, messages, client, server, quantization."""

from secagg.masking.client import ClientPhase, ParticipantContext, SecAggClient
from secagg.masking.config import RoundConfig, default_threshold
from secagg.masking.messages import (
    ConsistencySignature,
    EncryptedShare,
    MaskedInput,
    RevealedShare,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.masking.policy import CohortPolicy, secure_threshold
from secagg.masking.quantize import QuantizationSpec, WeightedMean, check_bit_budget
from secagg.masking.server import SecAggServer, ServerPhase

__all__ = [
    "ClientPhase",
    "CohortPolicy",
    "ConsistencySignature",
    "EncryptedShare",
    "MaskedInput",
    "ParticipantContext",
    "QuantizationSpec",
    "RevealedShare",
    "RoundConfig",
    "SecAggClient",
    "SecAggServer",
    "ServerPhase",
    "SignedKeys",
    "UnmaskRequest",
    "UnmaskResponse",
    "WeightedMean",
    "check_bit_budget",
    "default_threshold",
    "secure_threshold",
]
