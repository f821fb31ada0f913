"""The daemon loop around secure rounds: held rounds, clean-up, refusals and plain rounds."""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from secure_round_harness import (
    ORGS,
    TASK_NAME,
    TRAINING,
    Coordinator,
    FakeTransport,
    base_weights,
    identity_files,
    local_data,
    membership_store,
    parameters,
)

from examples.synthetic.task import task
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.privacy import DifferentialPrivacy, clip_to_norm, noise_share_std
from fedsilo.protection import Protection, flatten
from participant.domain.assignments import (
    Assignment,
    AssignmentKind,
    EndedRound,
    SubmissionReceipt,
    TaskReply,
)
from participant.domain.policy import AcceptPolicy
from participant.errors import CallStatus, RequestRefused, Revoked, Stopped
from participant.metrics import (
    PARTICIPANT_METRIC_NAMES,
    ParticipantMetrics,
    serve_participant_metrics,
)
from participant.service.answers import AnswerStore
from participant.service.identity import IdentityFiles
from participant.service.job_terms import JobTermsStore
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore
from participant.service.runner import ParticipantDaemon
from participant.service.secagg_state import SecAggStateStore
from participant.service.version_zero import VersionZero

T = TypeVar("T")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


class _Refusal(RequestRefused):
    def __init__(self) -> None:
        super().__init__(CallStatus.FAILED_PRECONDITION, "the phase is over")


class ScriptedClient(FakeTransport):
    """A CoordinatorClient stand-in that hands out scripted replies, then stops the daemon."""

    def __init__(self, replies: list[TaskReply], stop: threading.Event) -> None:
        super().__init__(base_weights())
        self.replies = replies
        self.stop = stop
        self.held: list[list[str]] = []
        self.pauses = 0
        self.renewal_pending = False
        self.refuse_messages = False
        self.initial: list[tuple[str, PayloadHeader, bytes]] = []
        self.metrics: list[tuple[str, int]] = []

    def retrying(self, call: Callable[[], T]) -> T:
        return call()

    def pause(self) -> bool:
        self.pauses += 1
        return False

    def certificate_renewal_pending(self) -> bool:
        return self.renewal_pending

    def get_assignment(
        self, wait_seconds: float, held_round_ids: list[str], membership_serial: int = 0
    ) -> TaskReply:
        self.held.append(list(held_round_ids))
        if not self.replies:
            self.stop.set()
            raise Stopped()
        return self.replies.pop(0)

    def submit_message(self, assignment: Assignment, body: bytes) -> SubmissionReceipt:
        if self.refuse_messages:
            raise _Refusal()
        return super().submit_message(assignment, body)

    def submit_initial_weights(
        self, job_id: str, header: PayloadHeader, payload: bytes
    ) -> SubmissionReceipt:
        self.initial.append((job_id, header, payload))
        return SubmissionReceipt(f"initial-{len(self.initial)}", False)

    def report_metrics(
        self, job_id: str, version: int, num_examples: int, loss: float, accuracy: float
    ) -> bool:
        self.metrics.append((job_id, version))
        return False


def _no_ca() -> x509.Certificate:
    raise AssertionError("a daemon without TLS checks no membership list")


def _daemon(
    tmp_path: Path,
    pki: DemoPki | None,
    replies: list[TaskReply],
    observer: ParticipantMetrics | None = None,
) -> tuple[ParticipantDaemon, ScriptedClient]:
    stop = threading.Event()
    client = ScriptedClient(replies, stop)
    daemon = ParticipantDaemon(
        client,  # type: ignore[arg-type]
        AnswerStore(tmp_path),
        SecAggStateStore(tmp_path),
        IdentityFiles(identity_files(pki, "org-a")) if pki is not None else None,
        {TASK_NAME: "examples.synthetic.task:task"},
        {"partition": 0, "num_partitions": 3, "seed": 0},
        stop,
        poll_seconds=0.0,
        # Bounds wider than any configuration allows (local_epochs from 0): what a task does with
        # settings it rejects is tested here, not the organization's own bounds.
        job_terms=JobTermsStore(tmp_path, AcceptPolicy(local_epochs=(0, 1000))),
        ledger=ContributionLedger(tmp_path),
        membership=(
            membership_store(tmp_path, pki)
            if pki is not None
            else MembershipStore(tmp_path, _no_ca, required=False)
        ),
        observer=observer,
    )
    return daemon, client


def _plain_train() -> Assignment:
    return Assignment(
        AssignmentKind.TRAIN,
        job_id="job-1",
        task_name=TASK_NAME,
        round_id="0a0b0c0d-0000-4000-8000-000000000000",
        round_number=1,
        phase="inputs",
        training=TRAINING,
    )


def test_a_refused_round_is_held_until_the_coordinator_says_it_ended(
    tmp_path: Path, pki: DemoPki
) -> None:
    coordinator = Coordinator(pki, parameters(max_weight=10**6))
    ended = EndedRound(coordinator.round_id, committed=False, reason="deadline")
    replies = [
        TaskReply(coordinator.keys_task()),
        TaskReply(coordinator.keys_task()),
        TaskReply(Assignment(AssignmentKind.WAIT), (ended,)),
    ]
    daemon, client = _daemon(tmp_path, pki, replies)

    daemon.run()

    assert client.held == [[], [coordinator.round_id], [coordinator.round_id], []]
    assert client.sent == []
    # One backoff step after each unanswered offer, none after WAIT.
    assert client.pauses == 2
    assert list((tmp_path / "secagg").iterdir()) == []


def test_an_answered_step_needs_no_pause(tmp_path: Path, pki: DemoPki) -> None:
    coordinator = Coordinator(pki)
    daemon, client = _daemon(tmp_path, pki, [TaskReply(coordinator.keys_task())])

    daemon.run()

    assert [s.assignment.phase for s in client.sent] == ["keys"]
    assert client.pauses == 0
    assert client.held[-1] == [coordinator.round_id]


def test_a_coordinator_refusal_of_a_secure_answer_backs_off(tmp_path: Path, pki: DemoPki) -> None:
    coordinator = Coordinator(pki)
    daemon, client = _daemon(tmp_path, pki, [TaskReply(coordinator.keys_task())])
    client.refuse_messages = True

    daemon.run()

    assert client.pauses == 1


def test_without_tls_secure_work_is_refused_but_plain_rounds_run(
    tmp_path: Path, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    replies = [TaskReply(Coordinator(pki).keys_task()), TaskReply(_plain_train())]
    daemon, client = _daemon(tmp_path, None, replies)

    with caplog.at_level(logging.ERROR, logger="participant"):
        daemon.run()

    assert "without TLS" in caplog.text
    assert client.pauses == 1
    (update,) = client.sent
    assert update.num_examples > 0 and update.header is not None
    assert [s.dtype for s in update.header.tensors] == ["float32", "float32"]
    assert SecAggStateStore(tmp_path).round_ids() == []


def test_an_unsupported_protection_is_refused(
    tmp_path: Path, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    paillier = replace(_plain_train(), protection=Protection.PAILLIER)
    daemon, client = _daemon(tmp_path, pki, [TaskReply(paillier)])

    with caplog.at_level(logging.ERROR, logger="participant"):
        daemon.run()

    assert "protection paillier is not supported" in caplog.text
    assert client.sent == [] and client.pauses == 1


def test_a_task_that_rejects_its_settings_fails_only_that_work_item(
    tmp_path: Path, pki: DemoPki, caplog: pytest.LogCaptureFixture
) -> None:
    # Another job: within one job, settings that differ from the first round are refused anyway.
    bad = replace(_plain_train(), job_id="job-0", training=replace(TRAINING, local_epochs=0))
    daemon, client = _daemon(tmp_path, pki, [TaskReply(bad), TaskReply(_plain_train())])

    with caplog.at_level(logging.ERROR, logger="participant"):
        daemon.run()

    assert "cannot run this work item: local_epochs must be >= 1, got 0" in caplog.text
    assert client.pauses == 1
    (update,) = client.sent
    assert update.num_examples > 0


def test_a_defect_is_not_taken_for_a_failed_work_item(tmp_path: Path, pki: DemoPki) -> None:
    daemon, client = _daemon(tmp_path, pki, [TaskReply(_plain_train())])

    # A ValueError outside the task's own code is a defect of the daemon, not of the work item.
    def defect(assignment: Assignment) -> None:
        raise ValueError("a bug")

    daemon._train = defect  # type: ignore[method-assign]

    with pytest.raises(ValueError, match="a bug"):
        daemon.run()
    assert client.pauses == 0


@pytest.mark.parametrize(
    ("status", "details"),
    [
        (CallStatus.PERMISSION_DENIED, "this organization's membership is revoked"),
        (CallStatus.UNAUTHENTICATED, "this certificate has been revoked"),
    ],
)
def test_a_revoked_organization_stops_instead_of_retrying(
    tmp_path: Path, pki: DemoPki, status: CallStatus, details: str
) -> None:
    daemon, client = _daemon(tmp_path, pki, [TaskReply(_plain_train())])

    def refused(wait_seconds: float, held_round_ids: list[str], serial: int = 0) -> TaskReply:
        raise RequestRefused(status, details)

    client.get_assignment = refused  # type: ignore[method-assign]
    with pytest.raises(Revoked, match="refused this organization for good"):
        daemon.run()
    assert client.pauses == 0  # no backoff and retry


def test_a_revocation_of_a_certificate_being_renewed_is_retried_with_the_renewal(
    tmp_path: Path, pki: DemoPki
) -> None:
    """Refused as revoked while renewed certificate files wait on disk: the refused certificate
    is the old one, so the daemon backs off and calls again (with the renewed files)."""
    daemon, client = _daemon(tmp_path, pki, [])
    client.renewal_pending = True
    calls: list[int] = []

    def refused(wait_seconds: float, held_round_ids: list[str], serial: int = 0) -> TaskReply:
        calls.append(1)
        if len(calls) == 3:
            client.stop.set()
            raise Stopped()
        raise RequestRefused(CallStatus.UNAUTHENTICATED, "this certificate has been revoked")

    client.get_assignment = refused  # type: ignore[method-assign]
    daemon.run()
    assert len(calls) == 3 and client.pauses == 2


def test_a_pending_organization_keeps_retrying(tmp_path: Path, pki: DemoPki) -> None:
    daemon, client = _daemon(tmp_path, pki, [])
    calls: list[int] = []

    def pending(wait_seconds: float, held_round_ids: list[str], serial: int = 0) -> TaskReply:
        calls.append(1)
        if len(calls) == 3:
            client.stop.set()
            raise Stopped()
        raise RequestRefused(CallStatus.PERMISSION_DENIED, "membership is pending approval")

    client.get_assignment = pending  # type: ignore[method-assign]
    daemon.run()
    assert client.pauses == 2


def test_a_plain_dp_round_sends_the_clipped_noisy_update_with_weight_one(
    tmp_path: Path,
) -> None:
    privacy = DifferentialPrivacy(clip=0.01, noise_multiplier=1.0, delta=1e-5)
    train = replace(_plain_train(), privacy=privacy, min_participants=2)
    daemon, client = _daemon(tmp_path, None, [TaskReply(train)])
    daemon.run()

    (update,) = client.sent
    assert update.num_examples == 1 and update.header is not None
    sent = flatten(decode_tensors(update.header, update.payload))
    base = flatten(base_weights())
    trained = flatten(
        task.train(base_weights(), local_data("org-a"), train.round_settings()).weights
    )
    assert np.linalg.norm(trained - base) > 10 * privacy.clip  # clipping matters here
    noise = (sent - base) - clip_to_norm(trained - base, privacy.clip)
    std = noise_share_std(privacy, 2)
    # 650 coordinates (variance ratio standard error ~0.055); float32 rounding is far below std.
    assert 0.75 < np.var(noise) / std**2 < 1.3


def test_a_plain_round_trains_from_the_version_it_just_evaluated_without_downloading_it_again(
    tmp_path: Path,
) -> None:
    evaluate = Assignment(
        AssignmentKind.EVALUATE, job_id="job-1", task_name=TASK_NAME, model_version=0
    )
    daemon, client = _daemon(tmp_path, None, [TaskReply(evaluate), TaskReply(_plain_train())])
    daemon.run()

    assert client.metrics == [("job-1", 0)]
    (update,) = client.sent
    assert update.header is not None
    trained = task.train(base_weights(), local_data("org-a"), _plain_train().round_settings())
    sent = decode_tensors(update.header, update.payload)
    assert all(np.array_equal(s, t) for s, t in zip(sent, trained.weights, strict=True))
    assert client.downloads == 1


# -- version 0 from the seed -------------------------------------------------------------------


def test_version_zero_is_built_from_the_job_seed_and_sent(tmp_path: Path) -> None:
    build = Assignment(
        AssignmentKind.INITIAL_WEIGHTS,
        job_id="job-1",
        task_name=TASK_NAME,
        training=replace(TRAINING, seed=3),
        initial_weights_from_seed=True,
    )
    daemon, client = _daemon(tmp_path, None, [TaskReply(build)])
    daemon.run()

    ((job_id, header, payload),) = client.initial
    expected_header, expected_payload = encode_tensors(task.initial_weights(3))
    assert job_id == "job-1" and payload == expected_payload and header == expected_header
    assert client.sent == []


def _seeded_train(seed: int) -> Assignment:
    """Round 1 of a job whose version 0 the organizations build from ``seed``."""
    return replace(
        _plain_train(), training=replace(TRAINING, seed=seed), initial_weights_from_seed=True
    )


@pytest.mark.parametrize("seed, trains", [(3, True), (7, False)])
def test_a_served_version_zero_unlike_the_own_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int, trains: bool
) -> None:
    # The coordinator serves task.initial_weights(3) as version 0 (base_weights).
    train = _seeded_train(seed)
    again = replace(train, round_id="0a0b0c0d-0000-4000-8000-000000000001")
    daemon, client = _daemon(tmp_path, None, [TaskReply(train), TaskReply(again)])

    with caplog.at_level(logging.ERROR, logger="participant"):
        daemon.run()

    if trains:
        assert len(client.sent) == 2 and "version 0" not in caplog.text
    else:
        assert client.sent == [] and client.pauses == 2
        assert caplog.text.count("is not the one this organization builds from seed 7") == 2


def test_the_seed_flag_cannot_be_dropped_later_or_across_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Accepted as building version 0 from seed 3; then, before and after a restart of the
    # daemon, the coordinator leaves the flag out (to serve a version 0 of its own choosing).
    train = _seeded_train(3)
    unflagged = replace(
        train, round_id="0a0b0c0d-0000-4000-8000-000000000001", initial_weights_from_seed=False
    )
    first, client = _daemon(tmp_path, None, [TaskReply(train), TaskReply(unflagged)])
    restarted, after_restart = _daemon(tmp_path, None, [TaskReply(unflagged)])
    with caplog.at_level(logging.ERROR, logger="participant"):
        first.run()
        restarted.run()
    assert len(client.sent) == 1 and after_restart.sent == []
    changed = "initial_weights_from_seed is False, the job was accepted with True"
    assert caplog.text.count(changed) == 2
    # Each refusal names the work item's job and round in its log fields.
    refusals = [r for r in caplog.records if changed in r.getMessage()]
    assert [(r.job, r.round) for r in refusals] == [("job-1", "1")] * 2  # type: ignore[attr-defined]


def test_a_restarted_daemon_checks_version_zero_against_the_recorded_seed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Accepted with seed 7; the coordinator serves task.initial_weights(3) as version 0. After
    # a restart it asks, without the flag, for an evaluation of that version 0.
    train = _seeded_train(7)
    evaluate = Assignment(
        AssignmentKind.EVALUATE, job_id="job-1", task_name=TASK_NAME, training=TRAINING
    )
    first, _ = _daemon(tmp_path, None, [TaskReply(train)])
    restarted, client = _daemon(tmp_path, None, [TaskReply(evaluate), TaskReply(evaluate)])
    with caplog.at_level(logging.ERROR, logger="participant"):
        first.run()
        restarted.run()
    assert client.metrics == []
    assert caplog.text.count("is not the one this organization builds from seed 7") == 3

    # Straight from the recorded terms: only version 0 of that job is checked.
    terms = JobTermsStore(tmp_path, AcceptPolicy(local_epochs=(0, 1000)))
    version_zero = VersionZero({TASK_NAME: "examples.synthetic.task:task"}, terms.seeded)
    version_zero.check("job-1", 0, task.initial_weights(7))
    version_zero.check("job-1", 1, task.initial_weights(3))
    version_zero.check("job-2", 0, task.initial_weights(3))  # a job never accepted


# -- the daemon's Prometheus metrics -----------------------------------------------------------


def test_the_daemon_reports_its_work_to_its_metrics_endpoint(tmp_path: Path, pki: DemoPki) -> None:
    metrics = ParticipantMetrics()
    replies = [
        TaskReply(Assignment(AssignmentKind.WAIT)),
        TaskReply(_plain_train()),
        TaskReply(Coordinator(pki).keys_task()),  # refused: this daemon has no TLS identity
    ]
    daemon, client = _daemon(tmp_path, None, replies, observer=metrics)
    daemon.run()
    assert len(client.sent) == 1

    server, port = serve_participant_metrics(metrics, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    work = "fedsilo_participant_work_total"
    assert samples[(work, (("kind", "wait"), ("outcome", "answered")))] == 1
    assert samples[(work, (("kind", "train"), ("outcome", "answered")))] == 1
    assert samples[(work, (("kind", "secagg_step"), ("outcome", "failed")))] == 1
    train_seconds = ("fedsilo_participant_work_duration_seconds_count", (("kind", "train"),))
    assert samples[train_seconds] == 1
    assert samples[("fedsilo_participant_last_contact_timestamp_seconds", ())] > 0
    names = {name for name, _ in samples}
    for metric in PARTICIPANT_METRIC_NAMES:
        if metric != "fedsilo_participant_coordinator_errors_total":  # no error happened
            assert any(n.startswith(metric) for n in names), metric
