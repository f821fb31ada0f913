"""What the coordinator asks of a participant, as plain data the daemon checks before acting."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from fedsilo.tasks import TrainingSettings

__all__ = ["Assignment", "AssignmentKind", "SubmissionReceipt"]


class AssignmentKind(enum.StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"


@dataclass(frozen=True)
class Assignment:
    """One unit of work: train for a round from a model version, or evaluate a version."""

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


@dataclass(frozen=True)
class SubmissionReceipt:
    acknowledgement_id: str
    duplicate: bool
