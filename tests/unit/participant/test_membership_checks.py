"""The consortium CA's membership list at the participant: held durably, never going back, and
checked for every peer of a secure round and every step of a paillier key ceremony.

The coordinator here is scripted (``secure_round_harness``, ``paillier_harness``); it offers
rounds and ceremony steps with organizations the CA's newest list no longer admits.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from paillier_harness import (
    KEY_BITS,
    ORGS4,
    CeremonyCoordinator,
    PaillierParticipant,
    PaillierRound,
    job_settings,
    make_participants,
    run_ceremony,
)
from secure_round_harness import (
    JOB_ID,
    ORGS,
    Coordinator,
    Participant,
    make_participant,
)

from fedsilo.membership import certificate_sha256, sign_membership_list
from fedsilo.pki import (
    CLOCK_SKEW_ALLOWANCE,
    DemoPki,
    create_ca,
    load_ca,
    load_certificate,
    make_demo_pki,
)
from participant.domain.assignments import KeyCeremonyStepData, SecAggPhase, StepOutcome
from participant.errors import (
    MembershipStale,
    MembershipUnavailable,
    StateUnreadable,
    UntrustedMessage,
)
from participant.service.membership import MembershipStore
from secagg.paillier import PaillierPrivateKey


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS4)


def signed_list(
    pki: DemoPki,
    serial: int,
    members: Sequence[str] = ORGS4,
    revoked: Sequence[str] = (),
    certificate_of: dict[str, str] | None = None,
    issued_at: dt.datetime | None = None,
) -> bytes:
    """A list signed by the demo consortium's CA (now, or at ``issued_at``); ``certificate_of``
    lists another org's certificate for a member (not the one the member presents)."""
    ca = load_ca(pki.ca_cert, pki.ca_key)
    named = certificate_of or {}
    prints = {
        org: [certificate_sha256(load_certificate(pki.participants[named.get(org, org)].cert_path))]
        for org in members
    }
    return sign_membership_list(ca.cert, ca.key, prints, revoked, serial, issued_at=issued_at)


def _store(tmp_path: Path, pki: DemoPki, *, required: bool = True) -> MembershipStore:
    ca = load_certificate(pki.ca_cert)
    return MembershipStore(tmp_path, lambda: ca, required=required)


# -- the list held -------------------------------------------------------------------------------


def test_a_newer_list_is_taken_and_survives_a_restart(pki: DemoPki, tmp_path: Path) -> None:
    store = _store(tmp_path, pki)
    assert store.serial == 0
    assert store.offer(signed_list(pki, 3, revoked=["org-d"], members=ORGS4[:3])) is True
    assert store.serial == 3
    restarted = _store(tmp_path, pki)
    assert restarted.serial == 3
    current = restarted.current()
    assert current is not None and current.revoked == frozenset({"org-d"})
    mode = (tmp_path / "membership" / "list.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_a_lower_serial_is_refused_also_after_a_restart(pki: DemoPki, tmp_path: Path) -> None:
    _store(tmp_path, pki).offer(signed_list(pki, 5, members=ORGS4[:3], revoked=["org-d"]))
    restarted = _store(tmp_path, pki)
    # The list from before org-d's revocation: a coordinator must not bring it back.
    with pytest.raises(UntrustedMessage, match="already holds list 5"):
        restarted.offer(signed_list(pki, 4))
    current = restarted.current()
    assert current is not None and current.serial == 5 and "org-d" in current.revoked


def test_another_list_under_the_held_serial_is_refused(pki: DemoPki, tmp_path: Path) -> None:
    store = _store(tmp_path, pki)
    first = signed_list(pki, 5, members=ORGS4[:3], revoked=["org-d"])
    store.offer(first)
    assert store.offer(first) is False  # the same list again: nothing changes
    with pytest.raises(UntrustedMessage, match="same serial"):
        store.offer(signed_list(pki, 5))
    current = store.current()
    assert current is not None and current.document == first


def test_a_list_not_signed_by_the_consortium_ca_is_refused(pki: DemoPki, tmp_path: Path) -> None:
    other = create_ca("a coordinator's own CA")
    forged = sign_membership_list(other.cert, other.key, {"org-a": ["0" * 64]}, [], 99)
    store = _store(tmp_path, pki)
    with pytest.raises(UntrustedMessage, match="not signed by the consortium CA"):
        store.offer(forged)
    assert store.serial == 0
    assert not (tmp_path / "membership" / "list.json").exists()


def test_a_damaged_stored_list_is_not_replaced_by_the_coordinators(
    pki: DemoPki, tmp_path: Path
) -> None:
    _store(tmp_path, pki).offer(signed_list(pki, 5, members=ORGS4[:3], revoked=["org-d"]))
    path = tmp_path / "membership" / "list.json"
    path.write_bytes(path.read_bytes().replace(b'"serial', b'"serail'))
    damaged = path.read_bytes()
    store = _store(tmp_path, pki)
    assert store.serial == 0  # asks for the coordinator's list, which is then refused
    with pytest.raises(StateUnreadable, match="repaired or deleted"):
        store.offer(signed_list(pki, 4))
    with pytest.raises(StateUnreadable):
        store.check_peers("org-a", {"org-d": None})
    assert path.read_bytes() == damaged


# -- secure rounds -------------------------------------------------------------------------------


@pytest.fixture
def participants(pki: DemoPki, tmp_path: Path) -> list[Participant]:
    return [make_participant(org, tmp_path / org, pki) for org in ORGS]


def _offer(participant: Participant, document: bytes) -> None:
    assert participant.membership is not None
    participant.membership.offer(document)


@pytest.mark.parametrize(
    ("members", "revoked", "reason"),
    [
        (("org-a", "org-b", "org-d"), ("org-c",), "'org-c' is revoked"),
        (("org-a", "org-b", "org-d"), (), "'org-c' is not a member"),
    ],
)
def test_a_round_with_a_revoked_or_unlisted_org_is_refused_before_any_key_leaves(
    pki: DemoPki,
    participants: list[Participant],
    caplog: pytest.LogCaptureFixture,
    members: tuple[str, ...],
    revoked: tuple[str, ...],
    reason: str,
) -> None:
    honest = participants[0]
    _offer(honest, signed_list(pki, 2, members=members, revoked=revoked))
    coordinator = Coordinator(pki)  # cohort org-a, org-b, org-c
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert honest.step(coordinator.keys_task()) is StepOutcome.REFUSED
    assert reason in caplog.text
    assert "organization org-c is not admitted by the membership list" in caplog.text
    assert honest.transport.sent == []
    # Refused for good: the round is not answered later either.
    assert honest.step(coordinator.keys_task()) is StepOutcome.LEFT
    assert honest.transport.sent == []


def test_a_peer_revoked_during_the_round_ends_it_at_the_next_phase(
    pki: DemoPki, participants: list[Participant], caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    honest = participants[0]
    sent = len(honest.transport.sent)
    _offer(honest, signed_list(pki, 2, members=("org-a", "org-b", "org-d"), revoked=["org-c"]))
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert honest.step(coordinator.shares_task()) is StepOutcome.REFUSED
    assert "'org-c' is revoked" in caplog.text
    # No share of this organization's keys reached anyone, org-c included.
    assert len(honest.transport.sent) == sent
    # A participant without the newer list answers: the list is what made the difference.
    assert participants[1].step(coordinator.shares_task()) is StepOutcome.ANSWERED


def test_a_peer_presenting_another_certificate_than_listed_is_refused(
    pki: DemoPki, participants: list[Participant], caplog: pytest.LogCaptureFixture
) -> None:
    # org-b's listed certificate is another one (say, its re-issued certificate after the old
    # one was compromised); the coordinator hands on the old, still CA-valid certificate.
    honest = participants[0]
    _offer(honest, signed_list(pki, 2, certificate_of={"org-b": "org-d"}))
    coordinator = Coordinator(pki)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    sent = len(honest.transport.sent)
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert honest.step(coordinator.shares_task()) is StepOutcome.REFUSED
    assert "certificate presented for 'org-b' is not the one listed" in caplog.text
    assert len(honest.transport.sent) == sent


def test_without_a_list_no_secure_work_is_answered_until_one_arrives(
    pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = _store(tmp_path / "empty", pki)
    participant = make_participant("org-a", tmp_path / "org-a", pki, membership=empty)
    coordinator = Coordinator(pki)
    with caplog.at_level(logging.WARNING, logger="participant"):
        assert participant.step(coordinator.keys_task()) is StepOutcome.SKIPPED
    assert "no membership list signed by the consortium CA" in caplog.text
    assert participant.transport.sent == []
    assert participant.rounds.held_round_ids() == []  # nothing recorded: not a refusal
    empty.offer(pki.membership_list.read_bytes())
    assert participant.step(coordinator.keys_task()) is StepOutcome.ANSWERED


def test_without_a_list_and_none_required_peers_are_checked_against_the_ca_only(
    pki: DemoPki, tmp_path: Path
) -> None:
    none_held = _store(tmp_path / "empty", pki, required=False)
    participant = make_participant("org-a", tmp_path / "org-a", pki, membership=none_held)
    assert participant.step(Coordinator(pki).keys_task()) is StepOutcome.ANSWERED


# -- the paillier key ceremony and the job key -------------------------------------------------


@pytest.fixture
def ceremony(pki: DemoPki) -> CeremonyCoordinator:
    return CeremonyCoordinator(pki)


@pytest.fixture
def holders(
    pki: DemoPki,
    tmp_path: Path,
    ceremony: CeremonyCoordinator,
    generate: Callable[[int], PaillierPrivateKey],
) -> list[PaillierParticipant]:
    return make_participants(pki, tmp_path, ceremony, generate, orgs=ORGS4)


@pytest.fixture
def generate(paillier_key: PaillierPrivateKey) -> Callable[[int], PaillierPrivateKey]:
    return lambda bits: paillier_key


def _advertise(ceremony: CeremonyCoordinator, participants: list[PaillierParticipant]) -> None:
    for participant in participants:
        assert participant.step(ceremony.task(participant.org)) is StepOutcome.ANSWERED


def test_the_dealer_seals_the_key_for_no_revoked_org(
    pki: DemoPki,
    ceremony: CeremonyCoordinator,
    holders: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _advertise(ceremony, holders)
    dealer = holders[0]
    dealer.membership.offer(signed_list(pki, 2, members=ORGS4[:3], revoked=["org-d"]))
    with caplog.at_level(logging.ERROR, logger="participant"):
        # The deal step lists org-d's job key among the key holders.
        assert dealer.step(ceremony.task("org-a")) is StepOutcome.REFUSED
    assert "'org-d' is revoked" in caplog.text
    assert "organization org-d is not admitted by the membership list" in caplog.text
    assert ceremony.dealt is None and ceremony.sealed == {}
    assert [action for action, _ in ceremony.sent_by("org-a")] == ["job_key"]


def test_a_key_dealt_by_a_revoked_org_is_not_received(
    pki: DemoPki,
    ceremony: CeremonyCoordinator,
    holders: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _advertise(ceremony, holders)
    assert holders[0].step(ceremony.task("org-a")) is StepOutcome.ANSWERED  # org-a deals
    receiver = holders[1]
    receiver.membership.offer(signed_list(pki, 2, members=ORGS4[1:], revoked=["org-a"]))
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert receiver.step(ceremony.task("org-b")) is StepOutcome.REFUSED
    assert "'org-a' is revoked" in caplog.text
    assert receiver.private_key() is None
    assert "confirm" not in [action for action, _ in ceremony.sent_by("org-b")]


def test_a_key_dealt_by_a_revoked_org_is_not_received_from_another_holder(
    pki: DemoPki,
    ceremony: CeremonyCoordinator,
    holders: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    early, late = holders[:3], holders[3]
    run_ceremony(ceremony, early)  # org-a dealt the key to org-b and org-c
    assert late.step(ceremony.task("org-d")) is StepOutcome.ANSWERED  # advertises
    assert ceremony.dealt is not None
    seal = KeyCeremonyStepData(
        "seal",
        dealer="org-a",
        key_bits=KEY_BITS,
        job_keys=ceremony.advertised(["org-d"]),
        dealt_key=ceremony.dealt[1],
        parameters=job_settings(),
    )
    # org-b, a member in good standing, seals the key for org-d; the key is org-a's.
    assert early[1].step(ceremony.task("org-b", seal)) is StepOutcome.ANSWERED
    late.membership.offer(signed_list(pki, 2, members=ORGS4[1:], revoked=["org-a"]))
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert late.step(ceremony.task("org-d")) is StepOutcome.REFUSED
    assert "'org-a' is revoked" in caplog.text
    assert late.private_key() is None


def test_a_job_key_a_now_revoked_org_holds_is_not_used_for_another_round(
    pki: DemoPki,
    ceremony: CeremonyCoordinator,
    holders: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_ceremony(ceremony, holders)  # org-a dealt the key and sealed it for b, c and d
    dealer = holders[0]
    dealer.membership.offer(signed_list(pki, 2, members=ORGS4[:3], revoked=["org-d"]))
    # The coordinator leaves org-d out of the round, but org-d can still decrypt under the key.
    round_ = PaillierRound(pki, ceremony, ["org-a", "org-b", "org-c"])
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert dealer.step(round_.keys_task()) is StepOutcome.REFUSED
    assert "Paillier key was dealt or sealed to 'org-d'" in caplog.text
    assert "needs a new key ceremony" in caplog.text
    assert not any(sent.assignment.round_id == round_.round_id for sent in dealer.transport.sent)
    # The other holders, without the newer list, would still answer: the list is the defence.
    assert holders[1].step(round_.keys_task()) is StepOutcome.ANSWERED


def test_a_round_cohort_is_remembered_as_key_holders(
    pki: DemoPki,
    ceremony: CeremonyCoordinator,
    holders: list[PaillierParticipant],
) -> None:
    run_ceremony(ceremony, holders)
    receiver = holders[1]
    # From the ceremony it knows the dealer (who also sealed its key) and itself.
    assert receiver.paillier.key_holders(JOB_ID) == {"org-a", "org-b"}
    round_ = PaillierRound(pki, ceremony, ["org-b", "org-c", "org-d"])
    assert receiver.step(round_.keys_task()) is StepOutcome.ANSWERED
    # Every cohort member decrypts the round's sum: each holds the key.
    assert receiver.paillier.key_holders(JOB_ID) == {"org-a", "org-b", "org-c", "org-d"}
    assert PaillierParticipant(
        "org-b", receiver.state_dir, receiver.transport, pki, receiver.generate
    ).paillier.key_holders(JOB_ID) == {"org-a", "org-b", "org-c", "org-d"}


# -- the list's age --------------------------------------------------------------------------------

ISSUED = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
MONTH = dt.timedelta(days=30)


class Clock:
    """This organization's clock, moved by the test."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _aged_store(
    state_dir: Path, pki: DemoPki, clock: Clock, *, required: bool = True
) -> MembershipStore:
    ca = load_certificate(pki.ca_cert)
    return MembershipStore(state_dir, lambda: ca, required=required, max_age=MONTH, clock=clock)


def test_a_list_past_its_age_limit_holds_back_secure_work_until_a_newer_one_arrives(
    pki: DemoPki, tmp_path: Path
) -> None:
    clock = Clock(ISSUED)
    store = _aged_store(tmp_path, pki, clock)
    store.offer(signed_list(pki, 7, issued_at=ISSUED))
    store.ready()
    # The limit, plus the clock skew allowed for certificates: a clock minutes ahead of the
    # CA's does not stop a consortium that re-signs on the day.
    clock.now = ISSUED + MONTH + CLOCK_SKEW_ALLOWANCE
    store.ready()
    clock.now += dt.timedelta(seconds=1)
    with pytest.raises(MembershipStale) as stale:
        store.ready()
    assert str(stale.value).startswith(
        "membership list 7 (issued 2026-11-01T00:00:00Z) is 30d 5m 1s old, older than "
        "accept.max_membership_age=30d: no secure round or key-ceremony step is answered"
    )
    assert isinstance(stale.value, MembershipUnavailable)  # waited out, never recorded
    # The age is the list's own: a restart does not make it younger.
    with pytest.raises(MembershipStale):
        _aged_store(tmp_path, pki, clock).ready()
    # Nor does not requiring a list: from the first list on, it is enforced.
    with pytest.raises(MembershipStale):
        _aged_store(tmp_path, pki, clock, required=False).ready()
    # The CA re-issues the same membership: work resumes in this very process.
    store.offer(signed_list(pki, 8, issued_at=clock.now - dt.timedelta(hours=1)))
    store.ready()


def test_a_list_from_a_ca_clock_ahead_of_this_one_is_not_refused(
    pki: DemoPki, tmp_path: Path
) -> None:
    clock = Clock(ISSUED - dt.timedelta(minutes=4))
    store = _aged_store(tmp_path, pki, clock)
    store.offer(signed_list(pki, 7, issued_at=ISSUED))
    store.ready()


def test_the_operator_is_warned_once_before_the_list_ages_out(
    pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(ISSUED + dt.timedelta(days=22))
    store = _aged_store(tmp_path, pki, clock)
    store.offer(signed_list(pki, 7, issued_at=ISSUED))
    with caplog.at_level(logging.WARNING, logger="participant"):
        store.ready()
        assert "reaches" not in caplog.text  # at 22 of 30 days: not yet
        clock.now = ISSUED + dt.timedelta(days=23)
        store.ready()
        store.ready()
    warnings = [r.getMessage() for r in caplog.records if "reaches" in r.getMessage()]
    assert warnings == [
        "membership list 7 (issued 2026-11-01T00:00:00Z) reaches accept.max_membership_age=30d "
        "in 7d: ask the CA to re-issue it ('fedsilo pki membership sign --renew')"
    ]


def test_a_stale_list_holds_back_every_round_phase_and_the_round_goes_on_once_renewed(
    pki: DemoPki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(dt.datetime.now(dt.UTC))
    stores = [_aged_store(tmp_path / org / "membership-store", pki, clock) for org in ORGS]
    for store in stores:
        store.offer(signed_list(pki, 2, issued_at=clock.now - MONTH - dt.timedelta(days=1)))
    participants = [
        make_participant(org, tmp_path / org, pki, membership=store)
        for org, store in zip(ORGS, stores, strict=True)
    ]
    honest = participants[0]
    coordinator = Coordinator(pki)
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert honest.step(coordinator.keys_task()) is StepOutcome.SKIPPED
    assert "membership list 2 (issued " in caplog.text
    assert "older than accept.max_membership_age=30d" in caplog.text
    assert honest.transport.sent == []
    assert honest.rounds.held_round_ids() == []  # nothing recorded: answered once renewed

    renewed = signed_list(pki, 3, issued_at=clock.now)
    for store in stores:
        store.offer(renewed)
    coordinator.run_phase(SecAggPhase.KEYS, participants)
    # The list ages out mid-round (the coordinator withholds the next one): the round waits.
    clock.now += MONTH + CLOCK_SKEW_ALLOWANCE + dt.timedelta(seconds=1)
    sent = len(honest.transport.sent)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert honest.step(coordinator.shares_task()) is StepOutcome.SKIPPED
    assert "membership list 3 (issued " in caplog.text
    assert len(honest.transport.sent) == sent
    stores[0].offer(signed_list(pki, 4, issued_at=clock.now))
    assert honest.step(coordinator.shares_task()) is StepOutcome.ANSWERED


def test_a_stale_list_holds_back_the_key_ceremony_until_renewed(
    pki: DemoPki,
    ceremony: CeremonyCoordinator,
    holders: list[PaillierParticipant],
    caplog: pytest.LogCaptureFixture,
) -> None:
    late = holders[1]
    now = dt.datetime.now(dt.UTC)
    late.membership.offer(signed_list(pki, 2, issued_at=now - MONTH - dt.timedelta(days=1)))
    with caplog.at_level(logging.ERROR, logger="participant"):
        assert late.step(ceremony.task(late.org)) is StepOutcome.SKIPPED
    assert "older than accept.max_membership_age=30d" in caplog.text
    assert ceremony.sent_by(late.org) == []
    late.membership.offer(signed_list(pki, 3, issued_at=now))
    assert late.step(ceremony.task(late.org)) is StepOutcome.ANSWERED
    assert [action for action, _ in ceremony.sent_by(late.org)] == ["job_key"]
