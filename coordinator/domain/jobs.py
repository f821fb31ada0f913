"""Jobs, participants, submissions, model versions and metrics as plain frozen dataclasses."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from coordinator.domain.privacy import epsilon_after
from coordinator.errors import InvalidRequest
from fedsilo.codec import TensorSpec
from fedsilo.privacy import DifferentialPrivacy, noise_share_std
from fedsilo.protection import Protection
from fedsilo.strategies import StrategyError, StrategyParameters, load_strategy, strategy_names
from fedsilo.tasks import TrainingSettings
from secagg import SecAggError, check_bit_budget, secure_threshold

__all__ = [
    "Job",
    "JobMessage",
    "JobSpec",
    "JobState",
    "MetricReport",
    "ModelVersion",
    "Participant",
    "ParticipantStatus",
    "PhaseMessage",
    "SecAggSettings",
    "Submission",
]


class JobState(enum.StrEnum):
    """Lifecycle of a job. CREATED -> RUNNING -> COMPLETED | FAILED.

    An admin may pause a running job (PAUSED <-> RUNNING: an open round finishes, no new one
    opens) and abort any job that has not ended (ABORTED, for good). An ended job (COMPLETED,
    FAILED, ABORTED) may be deleted: DELETED jobs are found by no use case, and only their
    rounds' and submissions' bookkeeping rows remain (what the coordinator's counters count).
    The state column is a plain string, so these states need no schema revision.
    """

    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"
    ABORTED = "aborted"
    DELETED = "deleted"


class ParticipantStatus(enum.StrEnum):
    """Membership of an organization."""

    ACTIVE = "active"
    PENDING = "pending"
    REVOKED = "revoked"


@dataclass(frozen=True)
class SecAggSettings:
    """Secure-aggregation parameters of a job (docs/secagg.md).

    ``threshold`` is the minimum number of survivors ``t`` (0: the secure default); a round uses
    ``max(threshold, secure_threshold(n))`` for its cohort of ``n``, with
    ``secure_threshold(n) = max(ceil(2n/3), n // 2 + 1)`` (docs/threat-model.md), and needs
    ``n >= t``. A cohort has at
    most ``max_participants`` members and a participant's weight (its example count) is capped at
    ``max_weight``: together with ``clip`` and ``levels_bits`` they must pass the bit budget
    ``max_participants * max_weight * rint(clip * 2^levels_bits) < 2^(modulus_bits - 1)``.
    The defaults fit 16 organizations of up to 8192 examples each in 32-bit words, with a mean
    error of at most ``2^-14`` per coordinate of the update.
    """

    threshold: int = 0
    modulus_bits: int = 32
    clip: float = 1.0
    levels_bits: int = 13
    max_participants: int = 16
    max_weight: int = 8192

    def threshold_for(self, cohort_size: int) -> int:
        """``t`` for a cohort of ``cohort_size``: the configured minimum or ``secure_threshold``.

        Participants refuse rounds below their own policy, by default ``ceil(2n/3)``: a lower
        default would have every round refused.
        """
        return max(self.threshold, secure_threshold(cohort_size))

    def problems(self) -> list[str]:
        found: list[str] = []
        if not 0 <= self.threshold <= self.max_participants:
            found.append(
                f"secagg.threshold must be between 0 and the cohort limit {self.max_participants}"
            )
        if not 2 <= self.max_participants <= 10_000:
            found.append("secagg.max_participants must be between 2 and 10000")
        if not found:
            try:
                check_bit_budget(
                    self.max_participants,
                    self.max_weight,
                    self.clip,
                    self.levels_bits,
                    self.modulus_bits,
                )
            except SecAggError as exc:
                found.append(f"secagg: {exc}")
        return found


@dataclass(frozen=True)
class JobSpec:
    """What an admin asks for. ``validate`` names the bad field and the reason.

    ``algorithm`` names the federated optimization strategy (docs/strategies.md), a built-in or
    one installed at the coordinator; ``strategy`` holds its parameters.

    ``secagg`` is the default protection; ``none`` exists for tests and comparisons only.
    """

    name: str
    task_name: str
    protection: Protection = Protection.SECAGG
    algorithm: str = "fedavg"
    num_rounds: int = 5
    min_participants: int = 2
    round_timeout_seconds: float = 300.0
    max_failed_rounds: int = 3
    training: TrainingSettings = field(default_factory=TrainingSettings)
    task_config_json: str = "{}"
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    phase_timeout_seconds: float = 60.0
    paillier_key_bits: int = 2048
    strategy: StrategyParameters = field(default_factory=StrategyParameters)
    """Parameters of the strategy ``algorithm`` names (docs/strategies.md)."""
    dp: DifferentialPrivacy = field(default_factory=DifferentialPrivacy)
    """Differential privacy of the released model (docs/differential-privacy.md)."""
    initial_weights_from_seed: bool = False
    """Version 0 is built by the participants from ``training.seed`` with the task's model and
    committed once ``min_participants`` organizations sent the same bytes (docs/design.md,
    "Version 0 from the seed"); False: the admin supplied version 0 with the job."""

    def validate(self) -> None:
        problems: list[str] = []
        if not self.name or len(self.name) > 200:
            problems.append("name must be 1-200 characters")
        if not self.task_name or len(self.task_name) > 200:
            problems.append("task_name must be 1-200 characters")
        if self.algorithm not in strategy_names():
            problems.append(
                f"algorithm {self.algorithm!r} is neither built in nor installed here "
                f"(known: {', '.join(strategy_names())})"
            )
        else:
            try:
                load_strategy(self.algorithm, self.strategy)
            except StrategyError as exc:
                problems.append(f"strategy: {exc}")
        if self.protection in (Protection.SECAGG, Protection.PAILLIER):
            problems.extend(self.secagg.problems())
            if self.min_participants < 2:
                problems.append("secure aggregation needs min_participants of at least 2")
            limit = self.secagg.max_participants
            if 2 <= limit < self.min_participants:
                problems.append(f"min_participants must not exceed the secagg cohort limit {limit}")
        problems.extend(self._privacy_problems())
        if self.protection is Protection.PAILLIER and self.paillier_key_bits not in (2048, 3072):
            problems.append("paillier_key_bits must be 2048 or 3072")
        if not 1.0 <= self.phase_timeout_seconds <= 24 * 3600:
            problems.append("phase_timeout_seconds must be between 1 and 86400")
        if not 1 <= self.num_rounds <= 100_000:
            problems.append("num_rounds must be between 1 and 100000")
        if not 1 <= self.min_participants <= 10_000:
            problems.append("min_participants must be between 1 and 10000")
        if not 1.0 <= self.round_timeout_seconds <= 7 * 24 * 3600:
            problems.append("round_timeout_seconds must be between 1 and 604800")
        if not 0 <= self.max_failed_rounds <= 1000:
            problems.append("max_failed_rounds must be between 0 and 1000")
        plan = self.training
        if not 1 <= plan.local_epochs <= 1000:
            problems.append("training.local_epochs must be between 1 and 1000")
        if not 1 <= plan.batch_size <= 1_000_000:
            problems.append("training.batch_size must be between 1 and 1000000")
        if not 0.0 < plan.learning_rate <= 10.0:
            problems.append("training.learning_rate must be in (0, 10]")
        try:
            if not isinstance(json.loads(self.task_config_json or "{}"), dict):
                problems.append("task_config_json must be a JSON object")
        except ValueError:
            problems.append("task_config_json is not valid JSON")
        if problems:
            raise InvalidRequest("invalid job: " + "; ".join(problems))

    def min_contributors(self) -> int:
        """The fewest contributions any round of this job can complete with: the secure
        threshold of its smallest cohort, or ``min_participants`` without secure aggregation."""
        if self.protection is Protection.NONE:
            return self.min_participants
        return self.secagg.threshold_for(self.min_participants)

    def _privacy_problems(self) -> list[str]:
        dp = self.dp
        found = dp.problems()
        if found or not dp.enabled:
            return found
        if self.protection is not Protection.NONE:
            # Each organization's noisy update must fit the quantization box, or its noise
            # would be clipped too (docs/differential-privacy.md, "Quantization").
            needed = dp.clip + 4.0 * noise_share_std(dp, self.min_contributors())
            if self.secagg.clip < needed:
                found.append(
                    f"secagg.clip {self.secagg.clip:g} is too small for dp.clip {dp.clip:g} with "
                    f"its noise: it must be at least {needed:.4g} (clip + 4 noise deviations)"
                )
        # Also refuses a job whose epsilon this coordinator could not report (no dp extra).
        first = epsilon_after(dp, 1)
        if dp.epsilon_budget > 0.0:
            if first > dp.epsilon_budget:
                found.append(
                    f"dp.epsilon_budget {dp.epsilon_budget:g} is spent by the first round "
                    f"alone (epsilon {first:.4g} at delta {dp.delta:g})"
                )
        return found


@dataclass(frozen=True)
class Job:
    """A job as persisted: its spec, state, latest committed model version and weight layout."""

    job_id: str
    spec: JobSpec
    state: JobState
    model_version: int
    weight_specs: tuple[TensorSpec, ...]
    created_at: float
    failed_rounds: int = 0
    failure_reason: str | None = None


@dataclass(frozen=True)
class Participant:
    """An organization known to the coordinator, identified by its certificate's org id.

    ``certificate_sha256`` is the hex SHA-256 of the certificate (DER) it last called with, what
    an admin compares before approving it ("" when not known).
    """

    org_id: str
    status: ParticipantStatus
    first_seen: float
    last_seen: float
    certificate_sha256: str = ""


@dataclass(frozen=True)
class Submission:
    """One accepted payload, unique on (round, participant, phase), with its content hash."""

    round_id: str
    org_id: str
    phase: str
    content_sha256: bytes
    size_bytes: int
    num_examples: int
    acknowledgement_id: str
    created_at: float


@dataclass(frozen=True)
class PhaseMessage:
    """The body of an accepted small secure-aggregation message (keys, shares, signatures,
    unmask shares), with the sender's certificate for KEYS (what peers verify the keys against).
    """

    round_id: str
    org_id: str
    phase: str
    body: bytes
    certificate_pem: bytes = b""


@dataclass(frozen=True)
class JobMessage:
    """An accepted message of a job's key ceremony (docs/paillier.md, "In the service").

    ``kind`` is ``job_key``, ``dealt_key``, ``sealed:<receiver>`` or ``confirm`` (prefixed
    ``g<n>/`` in key generation ``n`` >= 1), ``stopped``, or ``rotate:<n>`` (no organization: key
    generation ``n`` starts); job keys keep the sender's certificate from the TLS handshake, which
    peers verify them against.
    """

    job_id: str
    org_id: str
    kind: str
    body: bytes
    certificate_pem: bytes
    acknowledgement_id: str
    created_at: float


@dataclass(frozen=True)
class ModelVersion:
    """A committed global model: version N is the result of the N-th committed round.

    ``optimizer_state_ref`` is the blob of the strategy's optimizer state after this version,
    None when there is none at the coordinator (docs/strategies.md).
    """

    job_id: str
    version: int
    blob_ref: str
    round_id: str | None
    created_at: float
    optimizer_state_ref: str | None = None


@dataclass(frozen=True)
class MetricReport:
    """One participant's evaluation of one model version on its held-out data."""

    job_id: str
    version: int
    org_id: str
    num_examples: int
    loss: float
    accuracy: float
    created_at: float
