"""The terms each job had when this organization first saw it, kept durably, and their checks.

One JSON file per job, ``state_dir/jobs/<job_id>.json`` (directory 0700, file 0600, atomic
writes): task, protection, training settings, differential privacy, whether version 0 comes
from the seed and, from the job's first secure round, its secure aggregation parameters. Every
round this organization trains in or answers must carry the same values and stay inside the
organization's own bounds (``AcceptPolicy``); otherwise the work is refused with
``UntrustedMessage`` naming the setting, and nothing is sent. The files survive restarts, so a
coordinator cannot change a job's settings by waiting for one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedsilo.protection import SecAggParameters
from participant.domain.assignments import Assignment
from participant.domain.policy import AcceptPolicy, JobTerms, SecureTerms
from participant.errors import LocalStateError, StateUnreadable, UntrustedMessage
from participant.service.private_files import (
    is_safe_name,
    private_directory,
    read_private_json,
    write_private,
)

__all__ = ["JobTermsStore"]

_FORMAT = "fedsilo-participant-job-terms/1"


class JobTermsStore:
    """Checks every round's values against the organization's bounds and the job's first terms."""

    def __init__(self, state_dir: Path, policy: AcceptPolicy) -> None:
        self._dir = private_directory(state_dir / "jobs")
        self._policy = policy

    @property
    def policy(self) -> AcceptPolicy:
        return self._policy

    def _path(self, job_id: str) -> Path:
        if not is_safe_name(job_id):
            raise LocalStateError("job id is not a safe file name")
        return self._dir / f"{job_id}.json"

    def load(self, job_id: str) -> JobTerms | None:
        """The recorded terms of a job, None if it was never seen; StateUnreadable if damaged."""
        damaged = StateUnreadable(f"the recorded terms of job {job_id} are damaged")
        return read_private_json(self._path(job_id), _decode, damaged)

    def _save(self, job_id: str, terms: JobTerms) -> None:
        data = {"format": _FORMAT, **terms.to_dict()}
        write_private(self._path(job_id), json.dumps(data, sort_keys=True).encode())

    def check(self, assignment: Assignment) -> None:
        """Refuse (``UntrustedMessage``) a round outside the bounds or unlike the job's terms.

        The first round seen of a job records its terms, after the bounds check passed.
        """
        problems = self._policy.settings_problems(assignment.training)
        if problems:
            raise UntrustedMessage("; ".join(problems))
        seen = JobTerms.of(
            assignment.task_name,
            assignment.protection.value,
            assignment.training,
            assignment.privacy,
            assignment.initial_weights_from_seed,
        )
        recorded = self.load(assignment.job_id)
        if recorded is None:
            self._save(assignment.job_id, seen)
            return
        changed = recorded.differences(seen)
        if changed:
            raise UntrustedMessage(
                "the job's settings changed since this organization accepted it: "
                + "; ".join(changed)
            )
        if recorded.initial_weights_from_seed is None:
            # Recorded by a release that did not pin the flag: pinned from this round on.
            self._save(
                assignment.job_id,
                replace(recorded, initial_weights_from_seed=seen.initial_weights_from_seed),
            )

    def seeded(self, job_id: str) -> tuple[str, int] | None:
        """Task and seed of a job accepted as building its version 0 from the seed, else None."""
        recorded = self.load(job_id) if is_safe_name(job_id) else None
        if recorded is None or not recorded.initial_weights_from_seed:
            return None
        return recorded.task_name, recorded.seed

    def check_secure(self, job_id: str, parameters: SecAggParameters) -> None:
        """Refuse secure-round parameters unlike the job's first secure round (recorded here)."""
        recorded = self.load(job_id)
        if recorded is None:
            # check() runs first for every round; a job without terms was never accepted.
            raise UntrustedMessage(f"no accepted terms are recorded for job {job_id}")
        if recorded.secure is None:
            self._save(job_id, replace(recorded, secure=SecureTerms.of(parameters)))
            return
        changed = recorded.secure.differences(parameters)
        if changed:
            raise UntrustedMessage(
                "the job's secure-aggregation parameters changed since this organization "
                "accepted it: " + "; ".join(changed)
            )


def _decode(data: Any) -> JobTerms:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError("unknown job terms format")
    return JobTerms.from_dict(data)
