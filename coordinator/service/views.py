"""What the coordinator's use cases take and return: plain dataclasses that transport/ converts."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coordinator.domain.jobs import Job, MetricReport
from coordinator.domain.privacy import PrivacySpent
from coordinator.domain.rounds import Phase, Round
from coordinator.service.engines.paillier_ceremony import CeremonyStep
from coordinator.service.engines.secure_rounds import SecAggStep
from fedsilo.codec import PayloadHeader

__all__ = [
    "Acknowledgement",
    "JobDeletion",
    "JobView",
    "MessageSubmission",
    "MetricsSummary",
    "RoundOutcomeView",
    "UpdateSubmission",
    "WorkItem",
    "WorkKind",
]


class WorkKind(enum.StrEnum):
    WAIT = "wait"
    TRAIN = "train"
    EVALUATE = "evaluate"
    SECAGG_STEP = "secagg_step"
    KEY_CEREMONY = "key_ceremony"
    INITIAL_WEIGHTS = "initial_weights"
    """Build the job's version 0 from its seed and send it (docs/design.md)."""


@dataclass(frozen=True)
class WorkItem:
    """What a participant should do next."""

    kind: WorkKind
    job: Job | None = None
    round: Round | None = None
    model_version: int = 0
    seconds_left: float = 0.0
    secagg: SecAggStep | None = None
    ceremony: CeremonyStep | None = None


@dataclass(frozen=True)
class RoundOutcomeView:
    """How a round a participant asked about ended (COMMITTED or ABORTED)."""

    round_id: str
    phase: Phase
    reason: str


@dataclass(frozen=True)
class MessageSubmission:
    """A small secure-aggregation message (KEYS, SHARES, CONSISTENCY, UNMASK) as received."""

    job_id: str
    round_id: str
    phase: Phase
    body: bytes


@dataclass(frozen=True)
class UpdateSubmission:
    """A participant's update for one round, as received (payload checked separately)."""

    job_id: str
    round_id: str
    phase: Phase
    base_version: int
    num_examples: int
    train_loss: float
    header: PayloadHeader


@dataclass(frozen=True)
class Acknowledgement:
    acknowledgement_id: str
    duplicate: bool


@dataclass(frozen=True)
class MetricsSummary:
    """Evaluation of one model version, weighted by each reporter's number of examples."""

    version: int
    reports: int
    num_examples: int
    loss: float
    accuracy: float
    organizations: tuple[MetricReport, ...] = ()
    """Each organization's own report, by org id."""


@dataclass(frozen=True)
class JobView:
    """A job with its rounds and per-version metrics, for status displays.

    ``thresholds`` holds, per round, the number of survivors it needs (0 without secure
    aggregation) and ``threshold`` the job's: its latest round's, or for a job without rounds
    what a cohort of ``min_participants`` would need; ``waiting_reason`` says why no round is
    open ("" when one is or the job ended); ``privacy`` is what a job with
    differential privacy has spent (docs/differential-privacy.md).
    """

    job: Job
    rounds: tuple[Round, ...]
    metrics: tuple[MetricsSummary, ...]
    thresholds: tuple[int, ...] = ()
    waiting_reason: str = ""
    threshold: int = 0
    privacy: PrivacySpent | None = None


@dataclass(frozen=True)
class JobDeletion:
    """A deleted job as it was, and how many blobs went with it (shared ones stay)."""

    job: Job
    blobs_removed: int
