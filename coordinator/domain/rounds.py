"""Round state machine: phases, events and the one transition table (docs/design.md)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from fedsilo.protection import Protection

__all__ = [
    "IllegalTransition",
    "Phase",
    "Round",
    "RoundEvent",
    "TERMINAL_PHASES",
    "transition",
]


class Phase(enum.StrEnum):
    """Persisted phase of a round."""

    CREATED = "created"
    """Cohort chosen. Next: KEYS (secagg, paillier) or INPUTS (none); ABORTED."""
    KEYS = "keys"
    """Collecting signed public keys. Next: SHARES; ABORTED."""
    SHARES = "shares"
    """Collecting encrypted key shares. Next: INPUTS; ABORTED."""
    INPUTS = "inputs"
    """Collecting (masked) inputs. Next: CONSISTENCY (secagg, paillier) or AGGREGATED; ABORTED."""
    CONSISTENCY = "consistency"
    """Collecting signatures on the survivor set. Next: UNMASK; ABORTED."""
    UNMASK = "unmask"
    """Collecting unmasking shares. Next: AGGREGATED; ABORTED."""
    AGGREGATED = "aggregated"
    """Aggregate computed and stored. Next: COMMITTED; ABORTED."""
    COMMITTED = "committed"
    """Terminal: the new global model version exists."""
    ABORTED = "aborted"
    """Terminal: nothing released; the reason is recorded."""


TERMINAL_PHASES = frozenset({Phase.COMMITTED, Phase.ABORTED})


class RoundEvent(enum.StrEnum):
    """What can happen to a round."""

    PHASE_COMPLETE = "phase_complete"
    ABORT = "abort"


_PHASE_SEQUENCES: dict[Protection, tuple[Phase, ...]] = {
    Protection.NONE: (Phase.CREATED, Phase.INPUTS, Phase.AGGREGATED, Phase.COMMITTED),
    Protection.SECAGG: (
        Phase.CREATED,
        Phase.KEYS,
        Phase.SHARES,
        Phase.INPUTS,
        Phase.CONSISTENCY,
        Phase.UNMASK,
        Phase.AGGREGATED,
        Phase.COMMITTED,
    ),
}
_PHASE_SEQUENCES[Protection.PAILLIER] = _PHASE_SEQUENCES[Protection.SECAGG]


def _build_table() -> dict[tuple[Protection, Phase, RoundEvent], Phase]:
    table: dict[tuple[Protection, Phase, RoundEvent], Phase] = {}
    for mode, phases in _PHASE_SEQUENCES.items():
        for current, following in zip(phases, phases[1:], strict=False):
            table[(mode, current, RoundEvent.PHASE_COMPLETE)] = following
            table[(mode, current, RoundEvent.ABORT)] = Phase.ABORTED
    return table


TRANSITIONS: dict[tuple[Protection, Phase, RoundEvent], Phase] = _build_table()
"""Every legal (mode, phase, event) and the phase it leads to; anything else is illegal."""


class IllegalTransition(Exception):
    """The event is not allowed in the round's current phase."""


@dataclass(frozen=True)
class Round:
    """One round of a job, as persisted. ``row_version`` guards compare-and-set updates."""

    round_id: str
    job_id: str
    number: int
    protection: Protection
    phase: Phase
    row_version: int
    base_version: int
    cohort: tuple[str, ...]
    deadline_at: float
    created_at: float
    finished_at: float | None = None
    contributors: tuple[str, ...] = ()
    total_weight: int = 0
    train_loss_sum: float = 0.0
    accumulator_ref: str | None = None
    result_ref: str | None = None
    abort_reason: str | None = None

    @property
    def train_loss(self) -> float | None:
        """Contributors' mean training loss, weighted by examples; None when it is not known.

        Only plain rounds carry it: a secure round's organizations report no loss (it would
        leak), and a round without contributions has none.
        """
        if self.protection is not Protection.NONE or self.total_weight == 0:
            return None
        return self.train_loss_sum / self.total_weight

    @property
    def is_terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


def transition(round_: Round, event: RoundEvent, *, now: float, reason: str | None = None) -> Round:
    """Return the round after ``event``; raise IllegalTransition if the table does not allow it."""
    try:
        following = TRANSITIONS[(round_.protection, round_.phase, event)]
    except KeyError:
        raise IllegalTransition(
            f"{event.value} is not allowed in phase {round_.phase.value} "
            f"({round_.protection.value})"
        ) from None
    finished = now if following in TERMINAL_PHASES else round_.finished_at
    return dataclasses.replace(
        round_,
        phase=following,
        row_version=round_.row_version + 1,
        finished_at=finished,
        abort_reason=reason if following is Phase.ABORTED else round_.abort_reason,
    )
