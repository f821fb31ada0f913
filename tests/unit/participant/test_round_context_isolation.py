"""Isolation through per-organization settings fails: every round's context binds what
determines an organization's input (docs/secagg.md, "Round context binding").

A coordinator that hands one organization other training settings, or serves it another base
model for the same version, gets keys signed over another round context: its peers refuse them
at SHARES, so no round with that organization and the others completes, and nothing masked
leaves anyone. Real participant code against a real ``SecAggServer``; the coordinator's own
signature check is skipped here, as a malicious coordinator would skip it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from secure_round_harness import (
    ORGS,
    Coordinator,
    FakeTransport,
    Participant,
    base_weights,
    make_participant,
)

from fedsilo.pki import DemoPki, make_demo_pki
from fedsilo.privacy import DifferentialPrivacy
from participant.domain.assignments import AdvertisedKeys, SecAggPhase, StepOutcome
from secagg import SignedKeys

VICTIM, OTHERS = ORGS[0], ORGS[1:]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


def keys_of(
    coordinator: Coordinator, participants: list[Participant], tampered: str, **changes: object
) -> list[AdvertisedKeys]:
    """Every participant's signed keys for the round; ``tampered`` got a KEYS task with
    ``changes`` (a malicious coordinator's per-organization deviation)."""
    advertised = []
    for participant in participants:
        task = coordinator.keys_task()
        if participant.org == tampered:
            task = replace(task, **changes)  # type: ignore[arg-type]
        assert participant.step(task) is StepOutcome.ANSWERED
        signed = SignedKeys.from_bytes(participant.last().body)
        pem = coordinator.pki.participants[participant.org].cert_path.read_bytes()
        advertised.append(AdvertisedKeys(signed.to_bytes(), pem))
    return advertised


def assert_no_round_with_the_victim(
    coordinator: Coordinator, participants: list[Participant], keys: list[AdvertisedKeys]
) -> None:
    """Whoever got the other round context, the rest refuse its keys, and it refuses theirs."""
    sent_before = {p.org: len(p.transport.sent) for p in participants}
    outcomes = {p.org: p.step(coordinator.shares_task(keys)) for p in participants}
    assert set(outcomes.values()) == {StepOutcome.REFUSED}, outcomes
    # Nothing left anyone: no shares, hence never a masked input.
    assert {p.org: len(p.transport.sent) for p in participants} == sent_before


def test_a_different_learning_rate_for_one_organization_stops_the_round(
    pki: DemoPki, tmp_path: Path
) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    coordinator = Coordinator(pki)
    training = replace(coordinator.training, learning_rate=coordinator.training.learning_rate / 7)
    keys = keys_of(coordinator, participants, VICTIM, training=training)
    assert_no_round_with_the_victim(coordinator, participants, keys)


def test_another_base_model_for_the_same_version_stops_the_round(
    pki: DemoPki, tmp_path: Path
) -> None:
    other = [w + np.float32(0.5) for w in base_weights()]
    participants = [
        make_participant(org, tmp_path / org, pki, FakeTransport(other) if org == VICTIM else None)
        for org in ORGS
    ]
    coordinator = Coordinator(pki)
    keys = keys_of(coordinator, participants, tampered="")
    assert_no_round_with_the_victim(coordinator, participants, keys)


@pytest.mark.parametrize(
    "changes",
    [
        {"task_name": "another-task"},
        {"min_participants": 2},
        {"round_number": 7},
    ],
    ids=["task", "min-participants", "round-number"],
)
def test_other_round_terms_for_one_organization_stop_the_round(
    pki: DemoPki, tmp_path: Path, changes: dict[str, object]
) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    coordinator = Coordinator(pki)
    keys = keys_of(coordinator, participants, VICTIM, **changes)
    assert_no_round_with_the_victim(coordinator, participants, keys)


def test_a_base_model_swapped_after_the_keys_is_not_trained_on(
    pki: DemoPki, tmp_path: Path
) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    coordinator = Coordinator(pki)
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES):
        coordinator.run_phase(phase, participants)
    # The daemon restarted after SHARES, so it has to download the base again, and the
    # coordinator serves other bytes for the same version.
    swapped = FakeTransport([w + np.float32(0.5) for w in base_weights()])
    victim = make_participant(VICTIM, tmp_path / VICTIM, pki, swapped)

    assert victim.step(coordinator.inputs_task(victim.org)) is StepOutcome.REFUSED
    assert swapped.downloads == 1
    assert swapped.sent == []  # no masked input from the swapped model


def test_a_running_daemon_trains_from_the_bytes_it_signed_for(pki: DemoPki, tmp_path: Path) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    coordinator = Coordinator(pki)
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES):
        coordinator.run_phase(phase, participants)
    victim = participants[0]
    downloads = victim.transport.downloads
    victim.transport.weights = [w + np.float32(0.5) for w in base_weights()]

    assert victim.step(coordinator.inputs_task(victim.org)) is StepOutcome.ANSWERED
    assert victim.transport.downloads == downloads  # kept from KEYS, never fetched again


def test_less_noise_for_one_organization_stops_the_round(pki: DemoPki, tmp_path: Path) -> None:
    # A coordinator that hands one organization a smaller noise multiplier (or a larger clip)
    # would weaken the sum's noise: the round context binds both.
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    privacy = DifferentialPrivacy(clip=0.1, noise_multiplier=1.0, delta=1e-5)
    coordinator = Coordinator(pki, privacy=privacy)
    quieter = replace(privacy, noise_multiplier=0.5)
    keys = keys_of(coordinator, participants, VICTIM, privacy=quieter)
    assert_no_round_with_the_victim(coordinator, participants, keys)


def test_a_round_without_the_jobs_noise_for_one_organization_stops_the_round(
    pki: DemoPki, tmp_path: Path
) -> None:
    participants = [make_participant(org, tmp_path / org, pki) for org in ORGS]
    coordinator = Coordinator(
        pki, privacy=DifferentialPrivacy(clip=0.1, noise_multiplier=1.0, delta=1e-5)
    )
    keys = keys_of(coordinator, participants, VICTIM, privacy=DifferentialPrivacy())
    assert_no_round_with_the_victim(coordinator, participants, keys)
