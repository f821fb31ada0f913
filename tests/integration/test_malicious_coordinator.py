"""A scripted malicious coordinator against the real participant daemons over mutual TLS.

The coordinator is the real one behind a participant API that deviates in one way per test: it
rewrites the tasks it hands out, serves other model bytes, or forges round endings; where an
honest coordinator's own checks would stop the attack first, it also skips them (it forwards
every signed key unchecked), so that what is tested is the daemons' own defence. The daemons
are the real participant daemons (threads in this process). Each test performs one attack of
docs/threat-model.md and checks the honest outcome: the daemons refuse before anything of
theirs that could be unmasked leaves them (no share, no masked input), the round aborts, and
the job releases no sum beyond the honest ones.

- isolation through per-organization settings (threat-model.md, B): another learning rate or
  base model for all but one organization in the first round (secagg and paillier), a vanishing
  learning rate, and a learning rate changed after the job was accepted;
- differencing across rounds (C): a second round from a base version already contributed to
  without one organization, a round id run again after a forged "finished", a round number
  going back;
- a threshold or cohort below the organization's own policy (A): a cohort padded with the
  coordinator's own organizations at a strict majority, a cohort of two.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job
from integration_shift_task import ORG_SETTINGS

import coordinator.service.engines.secure_rounds as coordinator_rounds
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.transport.convert import model_info_to_pb
from coordinator.transport.interceptors import current_identity
from coordinator.transport.server import RunningCoordinator
from coordinator.transport.servicers import ParticipantServicer
from fedsilo import chunking
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.codec import encode_tensors
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.wire import receive_model
from secagg import RoundConfig, SecAggServer

LEVELS_BITS = 12
QUANTIZATION_BOUND = math.ldexp(1.0, -(LEVELS_BITS + 1)) + 1e-5  # plus float32 storage

# Each attack waits out a phase deadline or two: seconds per test, so not in the fast suite.
pytestmark = pytest.mark.slow

VICTIM = "org-a"
"""The organization whose update the coordinator tries to isolate."""

Tamper = Callable[["ScriptedCoordinator", pb.GetTaskResponse, str], None]
Submission = tuple[str, int, str]  # organization, phase, round id


def no_tampering(coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str) -> None:
    """Hands out tasks as they are."""


@dataclass
class Script:
    """What the scripted coordinator does and what it saw (every answer before it is served).

    ``swap_model(org)`` says whether to serve ``org`` other bytes for the version it downloads.
    """

    tamper: Tamper = no_tampering
    swap_model: Callable[[str], bool] = lambda org: False
    submitted: list[Submission] = field(default_factory=list)
    keys_tasks: dict[str, pb.GetTaskResponse] = field(default_factory=dict)
    replayed: set[str] = field(default_factory=set)
    swapped: set[str] = field(default_factory=set)
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

    def DownloadModel(  # noqa: N802
        self, request: pb.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ModelChunk]:
        org = current_identity().org_id
        chunks = list(super().DownloadModel(request, context))
        if not self.script.swap_model(org):
            yield from chunks
            return
        with self.script.lock:
            self.script.swapped.add(org)
        # The same version number, other bytes: weights only this organization trains from.
        version, weights = receive_model(iter(chunks))
        other = [np.asarray(w + np.float32(1.0), dtype=w.dtype) for w in weights]
        header, payload = encode_tensors(other)
        yield model_info_to_pb(request.job_id, version, header)
        for piece in chunking.split(payload):
            yield pb.ModelChunk(data=piece)

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


def _unchecking_server(
    config: RoundConfig, *, verifying_keys: Any = None, workers: int = 1
) -> SecAggServer:
    # A malicious coordinator routes every signed key unchecked: an honest one would refuse keys
    # signed over another round context itself and leave their sender out of the round.
    return SecAggServer(config, workers=workers)


def _secure_spec(num_rounds: int, protection: int, phase_timeout: float = 3.0) -> pb.JobSpec:
    # A short INPUTS deadline too: with a defence missing, a round the coordinator cannot use
    # (a tampered base version) ends within the test's wait instead of after a minute.
    spec = shift_job_spec(num_rounds=num_rounds, round_timeout_seconds=10.0)
    spec.protection = protection  # type: ignore[assignment]
    spec.phase_timeout_seconds = phase_timeout
    spec.max_failed_rounds = 0
    spec.secagg.CopyFrom(pb.SecAggSettings(clip=2.0, levels_bits=LEVELS_BITS))
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
    protection: int = pb.PROTECTION_SECAGG,
) -> tuple[AdminClient, str, pb.JobStatus]:
    """Start the daemons and a secure job; its status once it completed or failed."""
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
    job_id = admin.create_job(_secure_spec(num_rounds, protection), initial_weights()).job_id
    admin.start_job(job_id)
    # Not only FAILED: with a defence missing the job completes, and the assertions say why.
    status = wait_for_job(
        admin,
        job_id,
        lambda s: s.state in (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED),
        "the job to end",
        60,
    )
    return admin, job_id, status


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _errors_by_org(caplog: pytest.LogCaptureFixture, reason: str) -> dict[str, list[str]]:
    """The errors logged with ``reason`` in them, by the organization that logged them."""
    found: dict[str, list[str]] = {}
    for record in caplog.records:
        if record.levelno >= logging.ERROR and reason in record.getMessage():
            found.setdefault(str(getattr(record, "org", "-")), []).append(record.getMessage())
    return found


def _honest_shift(orgs: tuple[str, ...]) -> float:
    """What one honest round over ``orgs`` moves every weight by (the shift task's FedAvg)."""
    examples = {org: int(ORG_SETTINGS[org]["examples"]) for org in orgs}
    moved = sum(float(ORG_SETTINGS[org]["offset"]) * examples[org] for org in orgs)
    return moved / sum(examples.values())


def _secret_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "participants").glob("*/secagg/*.json"))


# -- isolation through per-organization settings ------------------------------------------------


def others_train_with_a_smaller_learning_rate(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """From the first round on, all but the victim train with a learning rate 10^4 times
    smaller (inside every organization's bounds): the sum would be mostly the victim's update."""
    if _in_round(response, 1) and org != VICTIM:
        response.training.learning_rate = 1e-5


@pytest.mark.parametrize(
    ("script", "protection"),
    [
        (Script(tamper=others_train_with_a_smaller_learning_rate), pb.PROTECTION_SECAGG),
        (Script(swap_model=lambda org: org == VICTIM), pb.PROTECTION_SECAGG),
        (Script(tamper=others_train_with_a_smaller_learning_rate), pb.PROTECTION_PAILLIER),
        (Script(swap_model=lambda org: org == VICTIM), pb.PROTECTION_PAILLIER),
    ],
    ids=["learning-rate", "base-model", "paillier-learning-rate", "paillier-base-model"],
)
def test_other_settings_for_one_organization_abort_the_round_before_any_share(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    script: Script,
    protection: int,
) -> None:
    monkeypatch.setattr(coordinator_rounds, "SecAggServer", _unchecking_server)
    admin, _, status = _run(start_test_coordinator, pki, run_daemon, script, 1, protection)
    admin.close()

    (round_,) = status.rounds
    assert script.swapped == ({VICTIM} if script.swap_model(VICTIM) else set())
    # Every organization signed its keys over the round as it was shown it, and the coordinator
    # forwarded them all unchecked ...
    assert script.answered(pb.ROUND_PHASE_KEYS, round_.round_id) == list(ORGS)
    # ... but none sent a share, so nothing of any update can ever be unmasked.
    assert script.answered(pb.ROUND_PHASE_SHARES) == []
    assert script.answered(pb.ROUND_PHASE_INPUTS) == []
    assert round_.phase == pb.ROUND_PHASE_ABORTED
    assert "phase shares closed with 0 of 3 answers" in round_.abort_reason
    assert status.state == pb.JOB_STATE_FAILED and status.model_version == 0
    # The victim's keys fail to verify for the others, and theirs for the victim.
    refused = _errors_by_org(caplog, "are not signed by its organization")
    assert sorted(refused) == list(ORGS), _errors(caplog)
    for org in ORGS:
        if org != VICTIM:
            assert any(f"the keys of {VICTIM!r}" in message for message in refused[org])
    # The daemons are told that the round ended and delete its secrets.
    wait_for(lambda: _secret_files(tmp_path) == [], 20, "round secrets to be deleted")


def others_train_with_a_vanishing_learning_rate(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """1e-300 for all but the victim: their updates vanish from the sum (outside the bounds)."""
    if _in_round(response, 1) and org != VICTIM:
        response.training.learning_rate = 1e-300


def test_a_learning_rate_outside_the_organizations_bounds_is_refused_at_keys(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(others_train_with_a_vanishing_learning_rate)
    admin, _, status = _run(start_test_coordinator, pki, run_daemon, script, 1)
    admin.close()
    (round_,) = status.rounds
    # Only the victim, shown the job's own settings, advertised keys: one is not a round.
    assert script.answered(pb.ROUND_PHASE_KEYS, round_.round_id) == [VICTIM]
    assert script.answered(pb.ROUND_PHASE_INPUTS) == []
    assert round_.phase == pb.ROUND_PHASE_ABORTED
    assert status.model_version == 0
    refused = _errors_by_org(caplog, "learning_rate=1e-300 is outside this organization's")
    assert sorted(refused) == sorted(set(ORGS) - {VICTIM}), _errors(caplog)


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
    admin, _, status = _run(start_test_coordinator, pki, run_daemon, script, 2)
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


# -- differencing across rounds -----------------------------------------------------------------


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
    admin, job_id, status = _run(start_test_coordinator, pki, run_daemon, script, 2)
    first, second = status.rounds
    assert first.phase == pb.ROUND_PHASE_COMMITTED, first.abort_reason
    assert sorted(first.contributors) == list(ORGS)
    # Nothing of round 2 left org-b or org-c: no keys, so no masked input and no sum.
    assert script.answered(pb.ROUND_PHASE_KEYS, second.round_id) == []
    assert script.answered(pb.ROUND_PHASE_INPUTS, second.round_id) == []
    assert second.phase == pb.ROUND_PHASE_ABORTED and list(second.contributors) == []
    # What was released is what round 1 released, the honest mean of all three updates (each
    # organization's offset weighted by its examples), and no second sum to subtract from it.
    assert status.model_version == 1
    _, released = admin.download_model(job_id, 1)
    for got, start in zip(released, initial_weights(), strict=True):
        assert np.max(np.abs(got - (start + _honest_shift(ORGS)))) <= QUANTIZATION_BOUND
    with pytest.raises(grpc.RpcError):
        admin.download_model(job_id, 2)
    admin.close()
    refusals = [m for m in _errors(caplog) if "base_version 0 of job" in m]
    assert len(refusals) >= 2, _errors(caplog)


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
) -> None:
    script = Script(forge_the_end_and_rerun)
    admin, _, status = _run(start_test_coordinator, pki, run_daemon, script, 1)
    admin.close()
    assert script.replayed == {"org-a"}
    (round_,) = status.rounds
    # org-a advertised keys once: the re-run round was refused before a new key was made.
    assert script.answered(pb.ROUND_PHASE_KEYS, round_.round_id).count("org-a") == 1
    assert script.answered(pb.ROUND_PHASE_INPUTS, round_.round_id).count("org-a") == 1
    refusals = [m for m in _errors(caplog) if "was already taken part in" in m]
    assert refusals, _errors(caplog)
    assert round_.round_id in refusals[0]


def number_round_two_as_round_one(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """Round 2 (a new id, from version 1) is presented to everyone as round number 1 again:
    the per-round training seed, and so the update, would repeat round 1's."""
    if _in_round(response, 2):
        response.round_number = 1


def test_a_round_number_going_back_is_refused(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script = Script(number_round_two_as_round_one)
    admin, _, status = _run(start_test_coordinator, pki, run_daemon, script, 2)
    admin.close()
    first, second = status.rounds
    assert first.phase == pb.ROUND_PHASE_COMMITTED, first.abort_reason
    assert script.answered(pb.ROUND_PHASE_KEYS, second.round_id) == []
    assert script.answered(pb.ROUND_PHASE_INPUTS, second.round_id) == []
    assert second.phase == pb.ROUND_PHASE_ABORTED
    assert status.model_version == 1
    refused = _errors_by_org(caplog, "round_number 1 is not above round 1")
    assert sorted(refused) == list(ORGS), _errors(caplog)


# -- a threshold or cohort below the organization's policy --------------------------------------


def pad_the_cohort_at_a_strict_majority(
    coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str
) -> None:
    """Two organizations of the coordinator's own join the cohort; t stays a strict majority."""
    if _in_round(response, 1):
        parameters = response.secagg.parameters
        parameters.cohort.extend(["org-x", "org-y"])
        parameters.threshold = 3  # 5 // 2 + 1: one colluder could equivocate (2t - n = 1)


def cohort_of_two(coordinator: ScriptedCoordinator, response: pb.GetTaskResponse, org: str) -> None:
    """org-a and org-b alone, t = 2: each learns the other's input from the released sum."""
    if not _in_round(response, 1):
        return
    if org == "org-c":
        response.Clear()
        response.kind = pb.TASK_KIND_WAIT
        return
    parameters = response.secagg.parameters
    del parameters.cohort[:]
    parameters.cohort.extend(["org-a", "org-b"])
    parameters.threshold = 2


@pytest.mark.parametrize(
    ("script", "refusing", "reason"),
    [
        (Script(pad_the_cohort_at_a_strict_majority), ORGS, "t=3 for n=5 is below"),
        (
            Script(cohort_of_two),
            ("org-a", "org-b"),
            "the cohort has 2 members, fewer than this participant's minimum 3",
        ),
    ],
    ids=["strict-majority", "cohort-of-two"],
)
def test_a_round_below_the_cohort_policy_is_refused_before_any_key_is_sent(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: Any,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
    script: Script,
    refusing: tuple[str, ...],
    reason: str,
) -> None:
    admin, _, status = _run(start_test_coordinator, pki, run_daemon, script, 1)
    admin.close()
    # No key, hence no share and no masked input: nothing of the round exists to unmask.
    assert script.answered(pb.ROUND_PHASE_KEYS) == []
    assert script.answered(pb.ROUND_PHASE_INPUTS) == []
    (round_,) = status.rounds
    assert "phase keys closed with 0 of 3 answers" in round_.abort_reason
    assert status.model_version == 0
    refused = _errors_by_org(caplog, reason)
    assert sorted(refused) == sorted(refusing), _errors(caplog)
