"""What this organization contributed to each job's secure rounds, kept durably across restarts.

Training is deterministic (same base model, same data, a seed derived from the round number), so
two released aggregates from one base version whose contributors differ by one organization
reveal that organization's update by subtraction. The coordinator could also re-run a round id
after telling the participant it had ended. The ledger is the participant's own memory against
both: one JSON file per job, ``state_dir/ledger/<job_id>.json`` (directory 0700, file 0600,
atomic writes), recording for every round it started: its number, its base version and how far
this organization went (keys sent, masked input sent, unmask shares revealed), and how the
coordinator said it ended.

The rules (docs/threat-model.md explains them):

- a round id is taken part in once: the same id is refused after its state was deleted;
- round numbers strictly increase and base versions never decrease within a job;
- at most one masked input per (job, base version) whose aggregate can have been released. A
  second round from the same base version is accepted only when the earlier round was reported
  aborted and this organization never revealed its unmask shares in it: that is how the honest
  coordinator retries a failed round, and refusing it would stall every job after a dropout.

The masked input is recorded before it is stored or sent (``record_input``), the unmask answer
before it is sent (``record_reveal``): a crash after sending can never lead to a second
contribution.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from participant.errors import LocalStateError, StateUnreadable, UntrustedMessage
from participant.service.private_files import (
    is_safe_name,
    private_directory,
    read_private_json,
    write_private,
)

__all__ = ["ContributionLedger", "RoundEntry", "Stage"]

_FORMAT = "fedsilo-participant-ledger/1"


class Stage(enum.StrEnum):
    """How far this organization went in a round (each stage includes the ones before)."""

    KEYS = "keys"  # round keys advertised: nothing about the update left
    INPUT = "input"  # masked input recorded (and possibly sent)
    REVEALED = "revealed"  # unmask shares recorded (and possibly sent)


class Ending(enum.StrEnum):
    """How the coordinator said a round ended."""

    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class RoundEntry:
    """One round of a job as this organization took part in it."""

    number: int
    base_version: int
    stage: Stage
    ending: Ending = Ending.OPEN

    def may_be_released(self) -> bool:
        """Whether an aggregate including this organization's input can have been released.

        Only a round this organization sent a masked input to counts. It counts unless the
        coordinator reported it aborted and this organization never revealed its unmask shares
        (a malicious coordinator can still have released it with the shares of ``t`` others:
        docs/threat-model.md, "Retries from the same base version").
        """
        if self.stage is Stage.KEYS:
            return False
        return self.stage is Stage.REVEALED or self.ending is not Ending.ABORTED


@dataclass(frozen=True)
class _JobLedger:
    rounds: dict[str, RoundEntry]

    def last_number(self) -> int:
        return max((entry.number for entry in self.rounds.values()), default=0)

    def last_base(self) -> int:
        return max((entry.base_version for entry in self.rounds.values()), default=-1)

    def released_from(self, base_version: int, round_id: str) -> tuple[str, RoundEntry] | None:
        """Another round from ``base_version`` whose released aggregate can hold our input."""
        for other_id, entry in sorted(self.rounds.items(), key=lambda item: item[1].number):
            if (
                other_id != round_id
                and entry.base_version == base_version
                and entry.may_be_released()
            ):
                return other_id, entry
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "rounds": {round_id: asdict(entry) for round_id, entry in self.rounds.items()},
        }


class ContributionLedger:
    """Per job: the rounds this organization started and how far it went in each (see module)."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = private_directory(state_dir / "ledger")

    def _path(self, job_id: str) -> Path:
        if not is_safe_name(job_id):
            raise LocalStateError("job id is not a safe file name")
        return self._dir / f"{job_id}.json"

    def rounds(self, job_id: str) -> dict[str, RoundEntry]:
        """The recorded rounds of a job by round id (empty if none); StateUnreadable if damaged."""
        return self._load(job_id).rounds

    def _load(self, job_id: str) -> _JobLedger:
        damaged = StateUnreadable(f"the contribution ledger of job {job_id} is damaged")
        loaded = read_private_json(self._path(job_id), _decode, damaged)
        return loaded if loaded is not None else _JobLedger({})

    def _save(self, job_id: str, ledger: _JobLedger) -> None:
        write_private(self._path(job_id), json.dumps(ledger.to_dict(), sort_keys=True).encode())

    def start(self, job_id: str, round_id: str, number: int, base_version: int) -> None:
        """Record a new round before its keys are sent; UntrustedMessage if it is refused.

        Refused: a round id seen before (unless only recorded, with nothing sent beyond keys and
        no end reported: a crash between this record and the round's state), a round number not
        above every earlier one, a base version below an earlier one, and a base version this
        organization already contributed to in a round whose aggregate can have been released.
        """
        ledger = self._load(job_id)
        seen = ledger.rounds.get(round_id)
        if seen == RoundEntry(number, base_version, Stage.KEYS):
            # Recorded, then the daemon stopped before the round's state was saved: nothing but
            # a key could have left, and no end was reported, so the round may start again.
            return
        if seen is not None:
            raise UntrustedMessage(
                f"round_id {round_id} was already taken part in (round {seen.number}, "
                f"{seen.stage.value} sent, {seen.ending.value}): a round is never run twice"
            )
        if number <= ledger.last_number():
            raise UntrustedMessage(
                f"round_number {number} is not above round {ledger.last_number()} this "
                "organization already took part in"
            )
        if base_version < ledger.last_base():
            raise UntrustedMessage(
                f"base_version {base_version} is below version {ledger.last_base()} an earlier "
                "round of this job was trained from"
            )
        _refuse_second_input(ledger, job_id, round_id, base_version)
        rounds = {**ledger.rounds, round_id: RoundEntry(number, base_version, Stage.KEYS)}
        self._save(job_id, _JobLedger(rounds))

    def record_input(self, job_id: str, round_id: str, number: int, base_version: int) -> None:
        """Record the masked input of a round before it is stored or sent (refused as above)."""
        ledger = self._load(job_id)
        entry = ledger.rounds.get(round_id) or RoundEntry(number, base_version, Stage.KEYS)
        if entry.base_version != base_version:
            raise UntrustedMessage(
                f"base_version {base_version} is not the version {entry.base_version} the round "
                "was started with"
            )
        # Checked again here: two rounds from one base version can both pass KEYS before either
        # has an input, and only one of them may get it.
        _refuse_second_input(ledger, job_id, round_id, base_version)
        if entry.stage is Stage.KEYS:
            self._save(job_id, _JobLedger({**ledger.rounds, round_id: _at(entry, Stage.INPUT)}))

    def record_reveal(self, job_id: str, round_id: str, number: int, base_version: int) -> None:
        """Record that this organization's unmask shares of a round are about to be sent."""
        ledger = self._load(job_id)
        entry = ledger.rounds.get(round_id) or RoundEntry(number, base_version, Stage.INPUT)
        if entry.stage is not Stage.REVEALED:
            self._save(job_id, _JobLedger({**ledger.rounds, round_id: _at(entry, Stage.REVEALED)}))

    def record_ending(self, round_id: str, committed: bool) -> None:
        """Record the coordinator's word that a round ended (its job is found by its id).

        Only the first word counts: a round reported aborted and later committed (or the other
        way round) keeps the first, and ``may_be_released`` never trusts an abort after a reveal.
        """
        for path in sorted(self._dir.glob("*.json")):
            job_id = path.stem
            ledger = self._load(job_id)
            entry = ledger.rounds.get(round_id)
            if entry is None or entry.ending is not Ending.OPEN:
                continue
            ending = Ending.COMMITTED if committed else Ending.ABORTED
            self._save(
                job_id, _JobLedger({**ledger.rounds, round_id: replace(entry, ending=ending)})
            )


def _at(entry: RoundEntry, stage: Stage) -> RoundEntry:
    return replace(entry, stage=stage)


def _refuse_second_input(ledger: _JobLedger, job_id: str, round_id: str, base: int) -> None:
    earlier = ledger.released_from(base, round_id)
    if earlier is None:
        return
    other_id, entry = earlier
    raise UntrustedMessage(
        f"base_version {base} of job {job_id} already has this organization's masked input "
        f"(round {entry.number}, {other_id}, {entry.stage.value} sent, {entry.ending.value}): "
        "a second one from the same base version would reveal it by difference"
    )


def _decode(data: Any) -> _JobLedger:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("unknown ledger format")
    rounds: dict[str, RoundEntry] = {}
    for round_id, entry in data["rounds"].items():
        rounds[str(round_id)] = RoundEntry(
            number=int(entry["number"]),
            base_version=int(entry["base_version"]),
            stage=Stage(entry["stage"]),
            ending=Ending(entry["ending"]),
        )
    return _JobLedger(rounds)
