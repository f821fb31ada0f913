"""Participants enforce their own acceptance policy against a scripted malicious coordinator.

The real coordinator runs behind a participant API that deviates in one way (like the evil
coordinators of test_secure_rounds_grpc.py); the daemons are the real participant daemons over
mutual TLS. Each test checks that the honest daemons refuse before anything of theirs leaves:
a round below their cohort policy, a job whose learning rate changed after it was accepted, a
second round trained from a base version they already contributed to, and a round id run again
after a forged "finished" (docs/threat-model.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job

from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.transport.interceptors import current_identity
from coordinator.transport.server import RunningCoordinator
from coordinator.transport.servicers import ParticipantServicer
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb

Tamper = Callable[["ScriptedCoordinator", pb.GetTaskResponse, str], None]
Submission = tuple[str, int, str]  # organization, phase, round id


@dataclass
class Script:
    """What the scripted coordinator does and what it saw (every answer before it is served)."""

    tamper: Tamper
    submitted: list[Submission] = field(default_factory=list)
    keys_tasks: dict[str, pb.GetTaskResponse] = field(default_factory=dict)
    replayed: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, phase: int, round_id: str | None = None) -> list[str]:
        with self.lock:
            return sorted(
                org
                for org, p, r in self.submitted
                if p == phase and (round_id is None or r == round_id)
            )


class ScriptedCoordinator(ParticipantServicer):
    """The real participant API with ``script.tamper`` applied to every task it hands out."""

    def __init__(
        self, service: CoordinatorService, membership: MembershipService, script: Script
    ) -> None:
        super().__init__(service, membership)
        self.script = script

    def GetTask(  # noqa: N802
        self, request: pb.GetTaskRequest, context: grpc.ServicerContext
    ) -> pb.GetTaskResponse:
        response = super().GetTask(request, context)
        self.script.tamper(self, response, current_identity().org_id)
        return response

    def SubmitMessage(  # noqa: N802
        self, request: pb.SubmitMessageRequest, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        self._record(request.phase, request.round_id)
        return super().SubmitMessage(request, context)

    def SubmitUpdate(  # noqa: N802
        self, request_iterator: Any, context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        # The header is the first message of the stream: who sent a masked input to which round.
        first = next(request_iterator)
        self._record(pb.ROUND_PHASE_INPUTS, first.header.round_id)
        return super().SubmitUpdate(_chain(first, request_iterator), context)

    def _record(self, phase: int, round_id: str) -> None:
        with self.script.lock:
            self.script.submitted.append((current_identity().org_id, phase, round_id))


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _secure_spec(num_rounds: int, phase_timeout: float = 3.0) -> pb.JobSpec:
    # A short INPUTS deadline too: with a defence missing, a round the coordinator cannot use
    # (a tampered base version) ends within the test's wait instead of after a minute.
    spec = shift_job_spec(num_rounds=num_rounds, round_timeout_seconds=10.0)
    spec.protection = pb.PROTECTION_SECAGG
    spec.phase_timeout_seconds = phase_timeout
    spec.max_failed_rounds = 0
    spec.secagg.CopyFrom(pb.SecAggSettings(clip=2.0, levels_bits=12))
    return spec


def _in_round(response: pb.GetTaskResponse, number: int) -> bool:
    secure = response.kind in (pb.TASK_KIND_SECAGG_STEP, pb.TASK_KIND_TRAIN)
    return secure and response.round_number == number


def _run(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    script: Script,
    num_rounds: int,
    until: Callable[[pb.JobStatus], bool],
    what: str,
) -> tuple[AdminClient, str, pb.JobStatus]:
    running = start_test_coordinator(
        0, participant_servicer=lambda s, m: ScriptedCoordinator(s, m, script)
    )
    target = f"127.0.0.1:{running.port}"
    admin = AdminClient(target, pki.admin_tls())
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5)
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    job_id = admin.create_job(_secure_spec(num_rounds), initial_weights()).job_id
    admin.start_job(job_id)
    return admin, job_id, wait_for_job(admin, job_id, until, what, 60)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _ended(status: pb.JobStatus) -> bool:
    # Not only FAILED: with a defence missing the job completes, and the assertions say why.
    return status.state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED)


# -- (1) a threshold below the cohort policy ----------------------------------------------------


def pad_the_cohort_at_a_strict_majority(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """Two organizations of the coordinator's own join the cohort; t stays a strict majority."""
    if _in_round(response, 1):
        parameters = response.secagg.parameters
        parameters.cohort.extend(["org-x", "org-y"])
        parameters.threshold = 3  # 5 // 2 + 1: one colluder could equivocate (2t - n = 1)


def test_a_round_below_the_cohort_policy_is_refused_before_any_key_is_sent(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(pad_the_cohort_at_a_strict_majority)
    admin, _, status = _run(
        start_test_coordinator, pki, run_daemon, script, 1, _ended, "the job to end"
    )
    admin.close()
    assert script.answered(pb.ROUND_PHASE_KEYS) == []
    (round_,) = status.rounds
    assert "phase keys closed with 0 of 3 answers" in round_.abort_reason
    assert status.model_version == 0
    refusals = [m for m in _errors(caplog) if "t=3 for n=5 is below" in m]
    assert len(refusals) >= len(ORGS), _errors(caplog)


# -- (2) a learning rate changed after the job was accepted -------------------------------------


def vanish_the_others_learning_rate(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """From round 2 on, all but org-a train with a learning rate 10^4 times smaller."""
    if _in_round(response, 2) and org != "org-a":
        response.training.learning_rate = 1e-5  # inside the bounds: only the pinned terms catch it


def test_a_learning_rate_changed_in_round_two_is_refused(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(vanish_the_others_learning_rate)
    admin, _, status = _run(
        start_test_coordinator, pki, run_daemon, script, 2, _ended, "the job to end"
    )
    admin.close()
    first, second = status.rounds
    assert first.phase == pb.ROUND_PHASE_COMMITTED, first.abort_reason
    assert second.phase == pb.ROUND_PHASE_ABORTED
    # Only org-a, which was shown the job's own settings, advertised keys in round 2.
    assert script.answered(pb.ROUND_PHASE_KEYS, second.round_id) == ["org-a"]
    assert script.answered(pb.ROUND_PHASE_INPUTS, second.round_id) == []
    assert status.model_version == 1
    refusals = [m for m in _errors(caplog) if "learning_rate is 1e-05" in m]
    assert len(refusals) >= 2, _errors(caplog)
    assert all("the job was accepted with 0.1" in m for m in refusals)


# -- (3) the same base version served for a second round ----------------------------------------


def rerun_from_version_zero_without_org_a(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """Round 2 trains from version 0 again, and org-a is kept out of it: the difference of the
    two sums would be org-a's update."""
    if not _in_round(response, 2):
        return
    if org == "org-a":
        response.Clear()
        response.kind = pb.TASK_KIND_WAIT
        return
    response.model_version = 0


def test_a_second_round_from_a_base_version_already_contributed_to_is_refused(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(rerun_from_version_zero_without_org_a)
    admin, job_id, status = _run(
        start_test_coordinator, pki, run_daemon, script, 2, _ended, "the job to end"
    )
    first, second = status.rounds
    assert first.phase == pb.ROUND_PHASE_COMMITTED, first.abort_reason
    assert sorted(first.contributors) == list(ORGS)
    # Nothing of round 2 left org-b or org-c: no keys, so no masked input and no sum.
    assert script.answered(pb.ROUND_PHASE_KEYS, second.round_id) == []
    assert script.answered(pb.ROUND_PHASE_INPUTS, second.round_id) == []
    assert second.phase == pb.ROUND_PHASE_ABORTED and list(second.contributors) == []
    # What was released is what round 1 released: no second sum to subtract from the first.
    assert status.model_version == 1
    with pytest.raises(grpc.RpcError):
        admin.download_model(job_id, 2)
    admin.close()
    refusals = [m for m in _errors(caplog) if "base_version 0 of job" in m]
    assert len(refusals) >= 2, _errors(caplog)


# -- (4) a round id run again after a forged "finished" -----------------------------------------


def forge_the_end_and_rerun(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """Once org-a has sent its masked input, tell it the round ended and start it again."""
    script = coordinator.script
    if org != "org-a":
        return
    with script.lock:
        if _in_round(response, 1) and response.phase == pb.ROUND_PHASE_KEYS:
            kept = pb.GetTaskResponse()
            kept.CopyFrom(response)
            script.keys_tasks.setdefault(org, kept)
            return
        sent_input = any(o == org and p == pb.ROUND_PHASE_INPUTS for o, p, _ in script.submitted)
        if not sent_input or org in script.replayed or org not in script.keys_tasks:
            return
        script.replayed.add(org)
        keys = script.keys_tasks[org]
    response.Clear()
    response.CopyFrom(keys)
    response.finished_rounds.append(
        pb.RoundOutcome(round_id=keys.round_id, phase=pb.ROUND_PHASE_COMMITTED)
    )


def test_a_round_id_run_again_after_a_forged_end_is_refused(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    script = Script(forge_the_end_and_rerun)
    admin, _, status = _run(
        start_test_coordinator,
        pki,
        run_daemon,
        script,
        1,
        _ended,
        "the job to end",
    )
    admin.close()
    assert script.replayed == {"org-a"}
    (round_,) = status.rounds
    # org-a advertised keys once: the re-run round was refused before a new key was made.
    assert script.answered(pb.ROUND_PHASE_KEYS, round_.round_id).count("org-a") == 1
    refusals = [m for m in _errors(caplog) if "was already taken part in" in m]
    assert refusals, _errors(caplog)
    assert round_.round_id in refusals[0]
