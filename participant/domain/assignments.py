"""What the coordinator asks of a participant, as plain data the daemon checks before acting."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import Protection, SecAggParameters
from fedsilo.strategies import StrategyChoice
from fedsilo.tasks import TrainingSettings

__all__ = [
    "AdvertisedKeys",
    "Assignment",
    "AssignmentKind",
    "EndedRound",
    "KeyCeremonyStepData",
    "RevokedKeyHolder",
    "SecAggPhase",
    "SecAggStepData",
    "StepOutcome",
    "SubmissionReceipt",
    "TaskReply",
]


class AssignmentKind(enum.StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    SECAGG_STEP = "secagg_step"
    """A small secure-aggregation phase (keys, shares, consistency, unmask); INPUTS is TRAIN."""
    KEY_CEREMONY = "key_ceremony"
    """A step of a paillier job's key ceremony (no round: ``job_id`` and ``ceremony`` only)."""
    INITIAL_WEIGHTS = "initial_weights"
    """Build the job's version 0 from its seed with the task's model and send it (no round)."""


class SecAggPhase(enum.StrEnum):
    """The phases of a secure-aggregation round, as ``Assignment.phase`` names them."""

    KEYS = "keys"
    SHARES = "shares"
    INPUTS = "inputs"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"


@dataclass(frozen=True)
class AdvertisedKeys:
    """A peer's signed keys and the PEM certificate to check them with: its round keys
    (``secagg.SignedKeys`` bytes) in a secure round, its job key (``JobKey`` bytes) in a key
    ceremony."""

    signed_keys: bytes
    certificate_pem: bytes


@dataclass(frozen=True)
class SecAggStepData:
    """What a secure-aggregation phase carries; only the fields of the current phase are set.

    SHARES: ``keys`` (U1); INPUTS: ``shares`` (``secagg.EncryptedShare`` bytes addressed to this
    participant); CONSISTENCY: ``survivors`` (U3); UNMASK: ``unmask_request``
    (``secagg.UnmaskRequest`` bytes). CONSISTENCY of a paillier round also announces the signed
    encrypted inputs to vet (``round_inputs``: size and digest of the
    ``fedsilo.paillier_inputs.RoundInputs`` the participant downloads in chunks).
    """

    parameters: SecAggParameters
    keys: tuple[AdvertisedKeys, ...] = ()
    shares: tuple[bytes, ...] = ()
    survivors: tuple[str, ...] = ()
    unmask_request: bytes = b""
    round_inputs: RoundInputsInfo | None = None


@dataclass(frozen=True)
class RevokedKeyHolder:
    """A holder of a paillier job's key of ``generation`` that was revoked: the job key it
    signed for that generation (``JobKey`` bytes) and its certificate."""

    generation: int
    job_key: AdvertisedKeys


@dataclass(frozen=True)
class KeyCeremonyStepData:
    """One step of a paillier job's key ceremony (docs/paillier.md, "In the service").

    ``action`` is ``advertise``, ``deal``, ``seal`` or ``receive``. ``job_keys`` are signed job
    keys (``secagg.paillier.ceremony.JobKey`` bytes) with the certificates their senders
    presented: every holder for ``deal``, the receivers for ``seal``, the sender of
    ``sealed_key`` for ``receive``. ``dealt_key`` is the dealer's signed public key
    (``DealtKey`` bytes) and ``dealer_certificate_pem`` the dealer's certificate. ``parameters``
    are the job's quantization settings (no round: threshold and cohort are unset).
    ``generation`` is the job's key generation the step belongs to (docs/paillier.md, "Key
    rotation"); ``revoked_holders`` are why each rotation happened.
    """

    action: str
    dealer: str = ""
    key_bits: int = 0
    job_keys: tuple[AdvertisedKeys, ...] = ()
    dealt_key: bytes = b""
    dealer_certificate_pem: bytes = b""
    sealed_key: bytes = b""
    parameters: SecAggParameters | None = None
    generation: int = 0
    revoked_holders: tuple[RevokedKeyHolder, ...] = ()


@dataclass(frozen=True)
class Assignment:
    """One unit of work: train for a round from a model version, evaluate a version, answer
    one phase of a secure-aggregation round, or take one step of a job's key ceremony."""

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
    ceremony: KeyCeremonyStepData | None = None
    strategy: StrategyChoice = field(default_factory=StrategyChoice)
    min_participants: int = 0
    privacy: DifferentialPrivacy = field(default_factory=DifferentialPrivacy)
    """The job's differential privacy: clip and noise applied to every update it trains."""
    initial_weights_from_seed: bool = False
    """The job's version 0 is built from ``training.seed`` with the task's model: the served
    version 0 must be the one this organization builds itself."""

    def round_settings(self) -> TrainingSettings:
        """The training settings with this round's seed and the strategy's client term.

        A per-round seed keeps training reproducible, so a retry after a crash can match what
        was answered before (for secure aggregation it must: docs/secagg.md).
        """
        return replace(
            self.training,
            seed=self.training.seed * 1_000_003 + self.round_number,
            proximal_mu=self.strategy.parameters.proximal_mu or 0.0,
        )


@dataclass(frozen=True)
class EndedRound:
    """The coordinator's word that a round this participant holds state for has ended:
    committed, or aborted for ``reason``."""

    round_id: str
    committed: bool
    reason: str = ""


@dataclass(frozen=True)
class TaskReply:
    """One answer to a request for work: the next assignment, the rounds that ended, and the
    consortium's signed membership list when the coordinator holds a newer one (else empty)."""

    assignment: Assignment
    finished_rounds: tuple[EndedRound, ...] = ()
    membership_list: bytes = field(default=b"", repr=False)


class StepOutcome(enum.StrEnum):
    """What the daemon did with one secure-aggregation or key-ceremony task."""

    ANSWERED = "answered"
    """The phase's answer was sent (or sent again, byte-identical)."""
    REFUSED = "refused"
    """The request is one an honest coordinator never makes: this participant left the round."""
    LEFT = "left"
    """This participant refused or left the round earlier: nothing is sent, ever."""
    DROPPED = "dropped"
    """No usable state for a round past KEYS (secrets lost): it acts as dropped."""
    SKIPPED = "skipped"
    """Nothing sent this time (the coordinator served another model version); may be retried."""


@dataclass(frozen=True)
class SubmissionReceipt:
    acknowledgement_id: str
    duplicate: bool
