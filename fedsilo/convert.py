"""Protobuf conversions both sides share: protection modes, training settings, round parameters.

Protobuf types never leave ``transport/`` packages and this base; services and domains use the
dataclasses. Each side keeps its own conversion module for the messages only it reads or writes
(``coordinator/transport/convert.py``, ``participant/transport/convert.py``).
"""

from __future__ import annotations

from fedsilo.protection import Protection, SecAggParameters
from fedsilo.tasks import TrainingSettings
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "protection_from_pb",
    "protection_to_pb",
    "secagg_parameters_from_pb",
    "secagg_parameters_to_pb",
    "training_settings_from_pb",
    "training_settings_to_pb",
]

_PROTECTION_TO_PB = {
    Protection.NONE: pb.PROTECTION_NONE,
    Protection.SECAGG: pb.PROTECTION_SECAGG,
    Protection.PAILLIER: pb.PROTECTION_PAILLIER,
}


def protection_to_pb(protection: Protection) -> pb.Protection.ValueType:
    return _PROTECTION_TO_PB[protection]


def protection_from_pb(value: int, unspecified: Protection | None = None) -> Protection | None:
    """The mode of a wire value; ``unspecified`` for PROTECTION_UNSPECIFIED; None if unknown."""
    if value == pb.PROTECTION_UNSPECIFIED:
        return unspecified
    for mode, wire in _PROTECTION_TO_PB.items():
        if wire == value:
            return mode
    return None


def training_settings_to_pb(settings: TrainingSettings) -> pb.TrainingSettings:
    return pb.TrainingSettings(
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
    )


def training_settings_from_pb(message: pb.TrainingSettings) -> TrainingSettings:
    return TrainingSettings(
        local_epochs=message.local_epochs,
        batch_size=message.batch_size,
        learning_rate=message.learning_rate,
        seed=message.seed,
    )


def secagg_parameters_to_pb(parameters: SecAggParameters) -> pb.SecAggParameters:
    return pb.SecAggParameters(
        threshold=parameters.threshold,
        modulus_bits=parameters.modulus_bits,
        vector_length=parameters.vector_length,
        cohort=list(parameters.cohort),
        clip=parameters.clip,
        levels_bits=parameters.levels_bits,
        max_participants=parameters.max_participants,
        max_weight=parameters.max_weight,
    )


def secagg_parameters_from_pb(message: pb.SecAggParameters) -> SecAggParameters:
    return SecAggParameters(
        threshold=message.threshold,
        modulus_bits=message.modulus_bits,
        vector_length=message.vector_length,
        cohort=tuple(message.cohort),
        clip=message.clip,
        levels_bits=message.levels_bits,
        max_participants=message.max_participants,
        max_weight=message.max_weight,
    )
