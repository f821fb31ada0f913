"""Protobuf conversions both sides share: protection modes, training settings, round parameters.

Protobuf types never leave ``transport/`` packages and this base; services and domains use the
dataclasses. Each side keeps its own conversion module for the messages only it reads or writes
(``coordinator/transport/convert.py``, ``participant/transport/convert.py``).
"""

from __future__ import annotations

import dataclasses

from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection, SecAggParameters
from fedsilo.strategies import StrategyParameters
from fedsilo.tasks import TrainingSettings
from fedsilo.v1 import fedsilo_pb2 as pb

__all__ = [
    "privacy_from_pb",
    "privacy_to_pb",
    "protection_from_pb",
    "protection_to_pb",
    "secagg_parameters_from_pb",
    "secagg_parameters_to_pb",
    "strategy_parameters_from_pb",
    "strategy_parameters_to_pb",
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


def strategy_parameters_to_pb(parameters: StrategyParameters) -> pb.StrategyParameters:
    # Unset parameters stay unset on the wire (optional fields), not 0.
    return pb.StrategyParameters(
        **{k: v for k, v in dataclasses.asdict(parameters).items() if v is not None}
    )


def strategy_parameters_from_pb(message: pb.StrategyParameters) -> StrategyParameters:
    m = message
    return StrategyParameters(
        server_learning_rate=(
            m.server_learning_rate if m.HasField("server_learning_rate") else None
        ),
        server_momentum=m.server_momentum if m.HasField("server_momentum") else None,
        beta1=m.beta1 if m.HasField("beta1") else None,
        beta2=m.beta2 if m.HasField("beta2") else None,
        tau=m.tau if m.HasField("tau") else None,
        proximal_mu=m.proximal_mu if m.HasField("proximal_mu") else None,
    )


def privacy_to_pb(privacy: DifferentialPrivacy) -> pb.DifferentialPrivacy:
    return pb.DifferentialPrivacy(**privacy.to_json())


def privacy_from_pb(message: pb.DifferentialPrivacy) -> DifferentialPrivacy:
    return DifferentialPrivacy(
        clip=message.clip,
        noise_multiplier=message.noise_multiplier,
        delta=message.delta,
        epsilon_budget=message.epsilon_budget,
    )
