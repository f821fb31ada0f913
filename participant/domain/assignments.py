"""What the coordinator asks of a participant, as plain data the daemon checks before acting."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from fedsilo.protection import SecAggParameters
from fedsilo.tasks import TrainingSettings

__all__ = [
    "AdvertisedKeys",
    "Assignment",
    "AssignmentKind",
    "Protection",
    "RoundOutcome",
    "SecAggPhase",
    "SecAggStepData",
    "SubmissionReceipt",
    "TaskReply",
]


class AssignmentKind(enum.StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    SECAGG_STEP = "secagg_step"
    """A small secure-aggregation phase (keys, shares, consistency, unmask); INPUTS is TRAIN."""


class Protection(enum.StrEnum):
    """How the round protects each participant's update (DESIGN §4)."""

    NONE = "none"
    SECAGG = "secagg"
    PAILLIER = "paillier"


class SecAggPhase(enum.StrEnum):
    """The phases of a secure-aggregation round, as ``Assignment.phase`` names them."""

    KEYS = "keys"
    SHARES = "shares"
    INPUTS = "inputs"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


@dataclass(frozen=True)
class AdvertisedKeys:
    """A peer's signed round keys (``secagg.SignedKeys`` bytes) and the PEM certificate to check
    them with."""

    signed_keys: bytes
    certificate_pem: bytes


@dataclass(frozen=True)
class SecAggStepData:
    """What a secure-aggregation phase carries; only the fields of the current phase are set.

    SHARES: ``keys`` (U1); INPUTS: ``shares`` (``secagg.EncryptedShare`` bytes addressed to this
    participant); CONSISTENCY: ``survivors`` (U3); UNMASK: ``unmask_request``
    (``secagg.UnmaskRequest`` bytes).
    """

    parameters: SecAggParameters
    keys: tuple[AdvertisedKeys, ...] = ()
    shares: tuple[bytes, ...] = ()
    survivors: tuple[str, ...] = ()
    unmask_request: bytes = b""


@dataclass(frozen=True)
class Assignment:
    """One unit of work: train for a round from a model version, evaluate a version, or answer
    one phase of a secure-aggregation round."""

    kind: AssignmentKind
    job_id: str = ""
    task_name: str = ""
    round_id: str = ""
    round_number: int = 0
    phase: str = ""
    model_version: int = 0
    training: TrainingSettings = field(default_factory=TrainingSettings)
    task_config: dict[str, Any] = field(default_factory=dict)
    seconds_left: float = 0.0
    protection: Protection = Protection.NONE
    secagg: SecAggStepData | None = None

    def round_settings(self) -> TrainingSettings:
        """The training settings with this round's seed.

        A per-round seed keeps training reproducible, so a retry after a crash can match what
        was answered before (for secure aggregation it must: TEST-MATRIX R17).
        """
        return replace(self.training, seed=self.training.seed * 1_000_003 + self.round_number)


@dataclass(frozen=True)
class RoundOutcome:
    """The coordinator's word that a round this participant holds state for has ended."""

    round_id: str
    committed: bool
    reason: str = ""


@dataclass(frozen=True)
class TaskReply:
    """One answer to a request for work: the next assignment and the rounds that ended."""

    assignment: Assignment
    finished_rounds: tuple[RoundOutcome, ...] = ()


@dataclass(frozen=True)
class SubmissionReceipt:
    acknowledgement_id: str
    duplicate: bool
