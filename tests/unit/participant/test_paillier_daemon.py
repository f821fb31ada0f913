"""Paillier jobs around the daemon: its loop, the state files, and exporting a model."""

from __future__ import annotations

import json
import logging
import stat
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from paillier_harness import (
    ORGS4,
    CeremonyCoordinator,
    Crash,
    PaillierParticipant,
    PaillierRound,
    PaillierTransport,
    exportable_task,
    initial_weights,
    make_participants,
    run_ceremony,
)
from secure_round_harness import (
    JOB_ID,
    TASK_NAME,
    TRAINING,
    identity_files,
    membership_store,
    parameters,
)

from fedsilo import cli
from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.protection import Protection
from participant import main as participant_main
from participant.domain.assignments import Assignment, AssignmentKind, TaskReply
from participant.domain.policy import AcceptPolicy
from participant.errors import ModelUnavailable, PaillierStateUnreadable, Stopped
from participant.main import export_model
from participant.service.answers import AnswerStore
from participant.service.identity import IdentityFiles
from participant.service.job_terms import JobTermsStore
from participant.service.ledger import ContributionLedger
from participant.service.paillier_jobs import PaillierJobs
from participant.service.paillier_state import (
    OutgoingMessage,
    PaillierJobState,
    PaillierStateStore,
    SealedFor,
)
from participant.service.runner import ParticipantDaemon
from participant.service.secagg_state import SecAggStateStore
from secagg import AgreementKeyPair
from secagg.paillier import PaillierPrivateKey

T = TypeVar("T")
JOB_UUID = "2b0c4c1e-7f55-4a43-9b1e-0d6c8f3f2a10"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS4)


@pytest.fixture
def coordinator(pki: DemoPki) -> CeremonyCoordinator:
    return CeremonyCoordinator(pki)


@pytest.fixture
def participants(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    paillier_key: PaillierPrivateKey,
) -> list[PaillierParticipant]:
    return make_participants(pki, tmp_path, coordinator, lambda bits: paillier_key)


def _after_one_round(
    pki: DemoPki, coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    run_ceremony(coordinator, participants)
    round_ = PaillierRound(pki, coordinator, [p.org for p in participants])
    round_.run(participants)


# -- the daemon loop ----------------------------------------------------------------------------


class ScriptedClient(PaillierTransport):
    """A CoordinatorClient stand-in over the harness coordinator, with scripted tasks."""

    def __init__(
        self, coordinator: CeremonyCoordinator, org: str, replies: list[TaskReply]
    ) -> None:
        super().__init__(coordinator, org)
        self.replies = replies
        self.stop = threading.Event()
        self.pauses = 0
        self.renewal_pending = False
        self.metrics: list[tuple[str, int, int]] = []
        self.asked = 0

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
        self.asked += 1
        if not self.replies:
            self.stop.set()
            raise Stopped()
        return self.replies.pop(0)

    def report_metrics(
        self, job_id: str, version: int, num_examples: int, loss: float, accuracy: float
    ) -> bool:
        self.metrics.append((job_id, version, num_examples))
        return False


def _daemon(
    pki: DemoPki,
    state_dir: Path,
    client: ScriptedClient,
    paillier_key: PaillierPrivateKey | None = None,
    *,
    paillier: bool = True,
) -> ParticipantDaemon:
    return ParticipantDaemon(
        client,  # type: ignore[arg-type]
        AnswerStore(state_dir),
        SecAggStateStore(state_dir),
        IdentityFiles(identity_files(pki, client.org)),
        {TASK_NAME: "examples.synthetic.task:task"},
        {"partition": ORGS4.index(client.org), "num_partitions": 4, "seed": 0},
        client.stop,
        poll_seconds=0.0,
        job_terms=JobTermsStore(state_dir, AcceptPolicy()),
        ledger=ContributionLedger(state_dir),
        membership=membership_store(state_dir, pki),
        paillier_states=PaillierStateStore(state_dir) if paillier else None,
        generate_paillier_key=(lambda bits: paillier_key) if paillier_key else None,
    )


def _job_task(kind: AssignmentKind, version: int, protection: Protection) -> Assignment:
    return Assignment(
        kind,
        job_id=JOB_ID,
        task_name=TASK_NAME,
        round_id="0a0b0c0d-0000-4000-8000-000000000000" if kind is AssignmentKind.TRAIN else "",
        round_number=version + 1,
        phase="inputs" if kind is AssignmentKind.TRAIN else "",
        model_version=version,
        training=TRAINING,
        protection=protection,
    )


def test_the_daemon_takes_ceremony_steps(
    pki: DemoPki, tmp_path: Path, coordinator: CeremonyCoordinator
) -> None:
    client = ScriptedClient(coordinator, "org-b", [])
    client.replies = [TaskReply(coordinator.task("org-b"))]
    _daemon(pki, tmp_path, client).run()

    assert [action for action, _ in coordinator.sent_by("org-b")] == ["job_key"]
    assert client.pauses == 0


def test_a_refused_ceremony_step_is_not_asked_for_in_a_tight_loop(
    pki: DemoPki, tmp_path: Path, coordinator: CeremonyCoordinator
) -> None:
    first = coordinator.step_data("org-b")
    assert first is not None
    bad = coordinator.task("org-b", replace(first, key_bits=1024))
    client = ScriptedClient(coordinator, "org-b", [TaskReply(bad), TaskReply(bad)])
    _daemon(pki, tmp_path, client).run()

    assert coordinator.received == []
    assert client.pauses == 2


def test_a_restarted_daemon_sends_the_ceremony_messages_left_over(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    for participant in participants:
        participant.step(coordinator.task(participant.org))
    dealer = participants[0]
    dealer.transport.fail_ceremony_after = dealer.transport.ceremony_calls + 1
    with pytest.raises(Crash):
        dealer.step(coordinator.task("org-a"))

    client = ScriptedClient(coordinator, "org-a", [])
    _daemon(pki, dealer.state_dir, client).run()

    assert [action for action, _ in coordinator.sent_by("org-a")][-2:] == ["sealed", "confirm"]
    assert client.asked == 1


def test_the_daemon_evaluates_the_decrypted_model(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    _after_one_round(pki, coordinator, participants)
    client = ScriptedClient(
        coordinator,
        "org-c",
        [TaskReply(_job_task(AssignmentKind.EVALUATE, 1, Protection.PAILLIER))],
    )
    _daemon(pki, participants[2].state_dir, client).run()

    assert len(client.metrics) == 1 and client.metrics[0][:2] == (JOB_ID, 1)
    assert client.pauses == 0


def test_a_round_without_protection_in_a_paillier_job_is_refused(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_ceremony(coordinator, participants)
    client = ScriptedClient(
        coordinator, "org-b", [TaskReply(_job_task(AssignmentKind.TRAIN, 0, Protection.NONE))]
    )
    with caplog.at_level(logging.ERROR, logger="participant"):
        _daemon(pki, participants[1].state_dir, client).run()

    assert "without protection in a paillier job" in caplog.text
    assert client.sent == [] and client.pauses == 1


def test_a_daemon_without_paillier_state_refuses_paillier_work(
    pki: DemoPki, tmp_path: Path, coordinator: CeremonyCoordinator, caplog: pytest.LogCaptureFixture
) -> None:
    client = ScriptedClient(coordinator, "org-a", [TaskReply(coordinator.task("org-a"))])
    with caplog.at_level(logging.ERROR, logger="participant"):
        _daemon(pki, tmp_path, client, paillier=False).run()

    assert "protection paillier is not supported" in caplog.text
    assert coordinator.received == [] and client.pauses == 1


# -- exporting ----------------------------------------------------------------------------------


def test_export_writes_the_decrypted_model(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    _after_one_round(pki, coordinator, participants)
    participant = participants[1]
    written: list[tuple[list[Any], Path]] = []

    result = export_model(
        participant.transport,
        participant.paillier,
        JOB_ID,
        -1,
        lambda weights, path: written.append((weights, path)),
        tmp_path / "model.keras",
    )

    assert result.version == 1 and result.decrypted
    ((weights, path),) = written
    assert path == tmp_path / "model.keras"
    expected = participants[0].paillier.model(JOB_ID, 1)[1]
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))
    assert all(w.dtype == np.float32 for w in weights)


def test_export_of_a_plain_job_downloads_the_model(
    tmp_path: Path, coordinator: CeremonyCoordinator
) -> None:
    transport = PaillierTransport(coordinator, "org-a")
    written: list[list[Any]] = []

    result = export_model(
        transport,
        PaillierJobs(PaillierStateStore(tmp_path), transport),
        JOB_ID,
        0,
        lambda weights, path: written.append(weights),
        tmp_path / "model.keras",
    )

    assert result.version == 0 and not result.decrypted
    assert all(np.array_equal(a, b) for a, b in zip(written[0], initial_weights(), strict=True))


def test_export_of_an_encrypted_model_without_the_key_is_an_error(
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
) -> None:
    _after_one_round(pki, coordinator, participants)
    outsider = PaillierTransport(coordinator, "org-d")

    with pytest.raises(ValueError, match="holds no key"):
        export_model(
            outsider,
            PaillierJobs(PaillierStateStore(tmp_path / "org-d"), outsider),
            JOB_ID,
            1,
            lambda weights, path: pytest.fail("nothing to export"),
            tmp_path / "model.keras",
        )


@pytest.mark.parametrize(
    "command",
    [["participant", "export", "--config"], ["model", "export", "--participant-config"]],
    ids=["participant-export", "model-export"],
)
def test_participant_export_cli_rebuilds_the_model_from_the_state_directory(
    command: list[str],
    pki: DemoPki,
    tmp_path: Path,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _after_one_round(pki, coordinator, participants)
    participant = participants[2]
    config = tmp_path / "org-c.yaml"
    config.write_text(
        json.dumps(
            {
                "coordinator": "127.0.0.1:1",
                "state_dir": str(participant.state_dir),
                # The organization's files: the CA checks the certificates of each version's
                # transcript before it is decrypted.
                "tls": {
                    "ca_cert": str(pki.ca_cert),
                    "cert": str(pki.participants["org-c"].cert_path),
                    "key": str(pki.participants["org-c"].key_path),
                },
                "tasks": {"exportable": "paillier_harness:exportable_task"},
            }
        )
    )
    # The coordinator is the harness's: the command's client is replaced by this transport.
    monkeypatch.setattr(
        participant_main,
        "build_client",
        lambda config, stop, give_up_after=None: (participant.transport, _Channels()),
    )
    monkeypatch.setattr(participant_main, "configure", lambda level, **_: None)
    out = tmp_path / "model.keras"
    exportable_task.exported.clear()

    code = cli.main(
        [*command, str(config), JOB_ID, "--task", "exportable", "--out", str(out), "--json"]
    )

    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"job_id": JOB_ID, "version": 1, "path": str(out)}
    ((weights, path),) = exportable_task.exported
    assert path == out and out.read_bytes() == b"keras"
    expected = participants[0].paillier.model(JOB_ID, 1)[1]
    assert all(np.array_equal(a, b) for a, b in zip(weights, expected, strict=True))


class _Channels:
    def close(self) -> None:
        pass


def test_participant_export_cli_refuses_a_task_without_a_keras_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "org.yaml"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "state"), "tls": {"insecure": True}}))
    monkeypatch.setattr(participant_main, "configure", lambda level, **_: None)

    code = cli.main(
        ["participant", "export", "--config", str(config), JOB_ID, "--task", "digits-linear"]
        + ["--out", str(tmp_path / "m.keras")]
    )

    assert code == 2
    assert "has no Keras model to export" in capsys.readouterr().out


# -- the state files ----------------------------------------------------------------------------


def _state() -> PaillierJobState:
    return PaillierJobState(
        parameters=parameters(threshold=0, cohort=(), vector_length=0),
        key_bits=2048,
        job_key_pair=AgreementKeyPair(b"\x01" * 32, b"\x02" * 32),
        job_key=b"job-key",
        dealt_key=b"dealt",
        private_key=b"secret",
        sealed={"org-b": SealedFor(b"their-key", b"sealed")},
        outbox=(OutgoingMessage("confirm", b"\xff\x00"),),
        refused_step=b"\x07" * 32,
        refusal="why",
    )


def test_a_job_state_survives_the_round_trip_in_private_files(tmp_path: Path) -> None:
    store = PaillierStateStore(tmp_path)
    store.save(JOB_UUID, _state())

    assert store.load(JOB_UUID) == _state()
    assert PaillierStateStore(tmp_path).job_ids() == [JOB_UUID]
    assert stat.S_IMODE((tmp_path / "paillier").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "paillier" / JOB_UUID).stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "paillier" / JOB_UUID / "job.json").stat().st_mode) == 0o600
    assert store.load("0a0b0c0d-0000-4000-8000-000000000000") is None
    assert "secret" not in repr(store.load(JOB_UUID)) and "736563726574" not in repr(_state())


@pytest.mark.parametrize("job_id", ["../escape", "a/b", "", "x" * 65, "job.json"])
def test_unsafe_job_ids_never_reach_the_file_system(tmp_path: Path, job_id: str) -> None:
    store = PaillierStateStore(tmp_path)
    with pytest.raises(ValueError, match="safe file name"):
        store.save(job_id, _state())
    with pytest.raises(ValueError, match="safe file name"):
        store.load(job_id)


def test_a_damaged_job_state_is_unreadable_without_echoing_it(
    tmp_path: Path, coordinator: CeremonyCoordinator
) -> None:
    store = PaillierStateStore(tmp_path)
    store.save(JOB_UUID, _state())
    path = tmp_path / "paillier" / JOB_UUID / "job.json"
    path.write_text(path.read_text().replace('"key_bits": 2048', '"key_bits": "x"'))

    with pytest.raises(PaillierStateUnreadable) as raised:
        store.load(JOB_UUID)
    assert "736563726574" not in str(raised.value)
    # A job whose state is damaged is still treated as a paillier job: no weaker rounds.
    jobs = PaillierJobs(store, PaillierTransport(coordinator, "org-a"))
    assert jobs.is_paillier_job(JOB_UUID)


def test_kept_models_round_trip_and_a_damaged_one_counts_as_absent(tmp_path: Path) -> None:
    store = PaillierStateStore(tmp_path)
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]
    store.save_model(JOB_UUID, 4, weights)
    store.save_model(JOB_UUID, 0, weights)

    assert store.model_versions(JOB_UUID) == [0, 4]
    loaded = store.load_model(JOB_UUID, 4)
    assert loaded is not None
    assert all(np.array_equal(a, b) for a, b in zip(loaded, weights, strict=True))
    payload = tmp_path / "paillier" / JOB_UUID / "models" / "4.bin"
    assert stat.S_IMODE(payload.stat().st_mode) == 0o600
    payload.write_bytes(b"\x00" * len(payload.read_bytes()))
    assert store.load_model(JOB_UUID, 4) is None
    assert store.load_model(JOB_UUID, 5) is None
    with pytest.raises(ValueError):
        store.load_model(JOB_UUID, -1)


def test_a_version_the_coordinator_mislabels_is_refused(
    pki: DemoPki, coordinator: CeremonyCoordinator, participants: list[PaillierParticipant]
) -> None:
    _after_one_round(pki, coordinator, participants)
    participant = participants[0]
    original = participant.transport.download_model
    participant.transport.download_model = (  # type: ignore[method-assign]
        lambda job_id, version: (version + 1, original(job_id, version)[1])
    )
    with pytest.raises(ModelUnavailable, match="asked for model version"):
        participant.paillier.model(JOB_ID, 1)
