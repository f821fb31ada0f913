"""What an organization accepts of a job: cohort policy, setting bounds, the job's terms."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedsilo.config import AcceptSection
from fedsilo.privacy import DifferentialPrivacy
from fedsilo.protection import SecAggParameters
from fedsilo.tasks import TrainingSettings
from secagg import CohortPolicy, secure_threshold

__all__ = ["AcceptPolicy", "JobTerms", "SecureTerms"]


@dataclass(frozen=True)
class AcceptPolicy:
    """The organization's own limits (``accept:`` in docs/configuration.md).

    ``cohort`` is checked at KEYS of every secure round; ``min_paillier_key_bits`` at every
    key-ceremony step of a paillier job; the inclusive ``[low, high]`` ranges are checked for the
    training settings of every round this organization trains in.
    """

    cohort: CohortPolicy = field(default_factory=CohortPolicy)
    min_paillier_key_bits: int = 2048
    learning_rate: tuple[float, float] = (1e-6, 1.0)
    local_epochs: tuple[int, int] = (1, 100)
    batch_size: tuple[int, int] = (1, 4096)

    @classmethod
    def from_config(cls, accept: AcceptSection) -> AcceptPolicy:
        """The policy of a validated ``accept:`` section of the participant's configuration."""
        return cls(
            cohort=CohortPolicy(accept.threshold_fraction(), accept.min_cohort),
            min_paillier_key_bits=accept.min_paillier_key_bits,
            learning_rate=accept.learning_rate,
            local_epochs=accept.local_epochs,
            batch_size=accept.batch_size,
        )

    def settings_problems(self, training: TrainingSettings) -> list[str]:
        """Why ``training`` is outside this organization's bounds (empty: it is inside)."""
        problems: list[str] = []
        for name in ("learning_rate", "local_epochs", "batch_size"):
            low, high = getattr(self, name)
            value = getattr(training, name)
            if not (
                isinstance(value, int | float) and math.isfinite(value) and low <= value <= high
            ):
                problems.append(f"{name}={value!r} is outside this organization's [{low}, {high}]")
        return problems


@dataclass(frozen=True)
class SecureTerms:
    """The job-level parameters of its secure rounds, as this organization first saw them.

    ``threshold_floor`` is the job's own threshold when the first round showed one above the
    default ``secure_threshold(n)`` (0 otherwise): later rounds must not go below it.
    """

    modulus_bits: int
    clip: float
    levels_bits: int
    max_participants: int
    max_weight: int
    vector_length: int
    threshold_floor: int

    @classmethod
    def of(cls, parameters: SecAggParameters) -> SecureTerms:
        n, t = len(parameters.cohort), parameters.threshold
        return cls(
            modulus_bits=parameters.modulus_bits,
            clip=float(parameters.clip),
            levels_bits=parameters.levels_bits,
            max_participants=parameters.max_participants,
            max_weight=parameters.max_weight,
            vector_length=parameters.vector_length,
            threshold_floor=t if n and t > secure_threshold(n) else 0,
        )

    def differences(self, parameters: SecAggParameters) -> list[str]:
        """What ``parameters`` change of these terms, one sentence each (empty: nothing)."""
        found: list[str] = []
        seen = SecureTerms.of(parameters)
        for name in ("modulus_bits", "clip", "levels_bits", "max_participants", "max_weight"):
            if getattr(seen, name) != getattr(self, name):
                found.append(
                    f"secagg {name} is {getattr(seen, name)!r}, the job was accepted with "
                    f"{getattr(self, name)!r}"
                )
        if seen.vector_length != self.vector_length:
            found.append(
                f"the model has {seen.vector_length} coordinates, the job was accepted with "
                f"{self.vector_length}"
            )
        if parameters.threshold < self.threshold_floor:
            found.append(
                f"threshold t={parameters.threshold} is below the job's t="
                f"{self.threshold_floor} this organization accepted"
            )
        return found


@dataclass(frozen=True)
class JobTerms:
    """A job as this organization first saw it: task, protection and training settings.

    Every later round of the job must carry the same values; a coordinator that changes them for
    one organization (e.g. a vanishing learning rate for all but one, to isolate its update) is
    refused. ``secure`` is filled at the job's first secure round. ``dp_clip`` and
    ``dp_noise_multiplier`` are the job's differential privacy (0: none): a coordinator cannot
    lower every organization's noise after the job was accepted (docs/differential-privacy.md).
    ``initial_weights_from_seed``: version 0 is built from ``seed`` by the organizations, so the
    check of a served version 0 survives restarts and cannot be switched off later (None: terms
    recorded by a release without the flag, taken from the job's next round).
    """

    task_name: str
    protection: str
    learning_rate: float
    local_epochs: int
    batch_size: int
    seed: int
    secure: SecureTerms | None = None
    dp_clip: float = 0.0
    dp_noise_multiplier: float = 0.0
    initial_weights_from_seed: bool | None = False

    @classmethod
    def of(
        cls,
        task_name: str,
        protection: str,
        training: TrainingSettings,
        privacy: DifferentialPrivacy | None = None,
        initial_weights_from_seed: bool = False,
    ) -> JobTerms:
        privacy = privacy or DifferentialPrivacy()
        return cls(
            task_name=task_name,
            protection=protection,
            learning_rate=float(training.learning_rate),
            local_epochs=training.local_epochs,
            batch_size=training.batch_size,
            seed=training.seed,
            dp_clip=float(privacy.clip),
            dp_noise_multiplier=float(privacy.noise_multiplier),
            initial_weights_from_seed=bool(initial_weights_from_seed),
        )

    def differences(self, other: JobTerms) -> list[str]:
        """Which of ``other``'s task, protection and training settings differ from these."""
        return [
            f"{name} is {getattr(other, name)!r}, the job was accepted with {getattr(self, name)!r}"
            for name in (
                "task_name",
                "protection",
                "learning_rate",
                "local_epochs",
                "batch_size",
                "seed",
                "dp_clip",
                "dp_noise_multiplier",
                "initial_weights_from_seed",
            )
            if getattr(other, name) != getattr(self, name) and getattr(self, name) is not None
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobTerms:
        secure = data.get("secure")
        return cls(
            task_name=str(data["task_name"]),
            protection=str(data["protection"]),
            learning_rate=float(data["learning_rate"]),
            local_epochs=int(data["local_epochs"]),
            batch_size=int(data["batch_size"]),
            seed=int(data["seed"]),
            secure=None if secure is None else SecureTerms(**secure),
            # Terms recorded before differential privacy existed: a job without it.
            dp_clip=float(data.get("dp_clip", 0.0)),
            dp_noise_multiplier=float(data.get("dp_noise_multiplier", 0.0)),
            # Terms recorded before the flag was pinned: not known yet (None).
            initial_weights_from_seed=(
                None
                if data.get("initial_weights_from_seed") is None
                else bool(data["initial_weights_from_seed"])
            ),
        )
