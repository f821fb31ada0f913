"""A paillier round decrypts its sum once per member: when vetting, not again for the version.

docs/paillier.md, "Vetting the inputs before CONSISTENCY": a member decrypts the product of the
survivors' signed inputs, its own included, and keeps what it decrypted to. The round's version
carries exactly that product, so the member builds the version from the kept plaintexts after
every check of the version (correction replayed, count, tag) has run as before; a product it did
not vet, or a member that restarted since, decrypts the version as before. The counts below are
of the ciphertexts handed to the real ``decrypt_integers``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from paillier_harness import (
    CeremonyCoordinator,
    PaillierParticipant,
    PaillierRound,
    dealt_participants,
)
from secure_round_harness import JOB_ID

import fedsilo.paillier_inputs
import participant.service.paillier_jobs
from fedsilo.paillier_versions import PaillierVersion
from fedsilo.pki import DemoPki, make_demo_pki
from participant.domain.assignments import SecAggPhase
from participant.service.answers import AnswerStore
from participant.service.paillier_jobs import VersionRefused
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    PaillierWorkers,
    decrypt_integers,
    encrypt_integers,
)

ORGS = ("org-a", "org-b", "org-c")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), ORGS)


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
    return dealt_participants(pki, tmp_path, coordinator, paillier_key)


class Decryptions:
    """Counts the ciphertexts given to the real ``decrypt_integers`` wherever a participant
    decrypts (vetting and versions), then decrypts them with it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for module in (fedsilo.paillier_inputs, participant.service.paillier_jobs):
            monkeypatch.setattr(module, "decrypt_integers", self._decrypt)

    def _decrypt(
        self,
        private_key: PaillierPrivateKey,
        ciphertexts: Sequence[int],
        *,
        workers: PaillierWorkers | None = None,
    ) -> list[int]:
        values = list(ciphertexts)
        self.count += len(values)
        return decrypt_integers(private_key, values, workers=workers)

    def during(self, action: Callable[[], object]) -> int:
        before = self.count
        action()
        return self.count - before


def _sum_size(round_: PaillierRound, key: PaillierPrivateKey) -> int:
    """Ciphertexts of one sum: the packed plaintexts and the tag."""
    params = round_.params
    layout = PackingLayout(params.modulus_bits, params.max_participants, key.public_key.bits)
    return math.ceil(params.vector_length / layout.slots) + 1


def _run_to_version(
    round_: PaillierRound, participants: list[PaillierParticipant], decryptions: Decryptions
) -> dict[str, int]:
    """Run the round and publish its version; the ciphertexts each member decrypted."""
    decrypted = dict.fromkeys(ORGS, 0)
    for phase in SecAggPhase:
        for member in participants:
            task = round_.task_for(phase, member.org)
            decrypted[member.org] += decryptions.during(lambda m=member, t=task: m.step(t))
            round_.receive(phase, member.org, member.last())
        round_.close(phase)
    assert round_.publish() == 1
    return decrypted


def test_a_verified_round_decrypts_its_sum_once_per_member(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decryptions = Decryptions(monkeypatch)
    round_ = PaillierRound(pki, coordinator, ORGS)
    once = _sum_size(round_, paillier_key)
    # Vetting: every member decrypts the survivors' sum (its own input in it) once.
    assert _run_to_version(round_, participants, decryptions) == dict.fromkeys(ORGS, once)

    # org-a restarted since: nothing kept, it decrypts the version as before.
    restarted = participants[0].jobs()
    decrypted_again: list[tuple[int, list[np.ndarray]]] = []
    assert decryptions.during(lambda: decrypted_again.append(restarted.model(JOB_ID, 1))) == once
    version, reference = decrypted_again[0]
    assert version == 1
    # The others build version 1 from what they decrypted when vetting: no decryption, and
    # the very bits the decrypted version gives.
    for member in participants[1:]:
        built: list[tuple[int, list[np.ndarray]]] = []
        assert decryptions.during(lambda m=member: built.append(m.paillier.model(JOB_ID, 1))) == 0
        assert built[0][0] == 1
        assert all(np.array_equal(a, b) for a, b in zip(built[0][1], reference, strict=True))
        assert member.paillier.stopped(JOB_ID) == ""


def test_a_product_other_than_the_vetted_one_is_decrypted_and_checked(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The coordinator serves the vetted sum times an encryption of zero: the same plaintexts,
    other ciphertexts. Nothing kept applies to them; the member decrypts them, and the tag,
    correction and count are checked as for any version (here they verify)."""
    decryptions = Decryptions(monkeypatch)
    round_ = PaillierRound(pki, coordinator, ORGS)
    once = _sum_size(round_, paillier_key)
    _run_to_version(round_, participants, decryptions)
    public = paillier_key.public_key
    record = PaillierVersion.from_bytes(coordinator.models[1][0].tobytes())
    summed = PaillierCiphertexts.from_bytes(record.ciphertexts, public)
    zeros = encrypt_integers(public, [0] * len(summed.ciphertexts))
    rerandomized = PaillierCiphertexts(
        summed.fingerprint,
        summed.layout,
        summed.contributions,
        summed.value_count,
        tuple(c * z % public.n_squared for c, z in zip(summed.ciphertexts, zeros, strict=True)),
    )
    assert rerandomized.ciphertexts != summed.ciphertexts
    served = dataclasses.replace(record, ciphertexts=rerandomized.to_bytes())
    coordinator.models[1][0] = np.frombuffer(served.to_bytes(), dtype=np.uint8).copy()

    built: list[tuple[int, list[np.ndarray]]] = []
    assert decryptions.during(lambda: built.append(participants[0].paillier.model(JOB_ID, 1))) == (
        once
    )
    assert built[0][0] == 1 and participants[0].paillier.stopped(JOB_ID) == ""


def test_the_vetted_sum_re_served_as_another_version_is_refused_undecrypted(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 1's record served again as version 2: the kept plaintexts are those of its
    ciphertexts, but its transcript signs a round on version 0, not 1 (and its tag binds that
    base). Refused (the job stopped) without decrypting anything."""
    decryptions = Decryptions(monkeypatch)
    round_ = PaillierRound(pki, coordinator, ORGS)
    _run_to_version(round_, participants, decryptions)
    coordinator.models[2] = [array.copy() for array in coordinator.models[1]]

    def build() -> None:
        with pytest.raises(VersionRefused, match="round context"):
            participants[1].paillier.model(JOB_ID, 2)

    assert decryptions.during(build) == 0
    assert participants[1].store.model_versions(JOB_ID) == [0, 1]
    assert "version 2" in participants[1].paillier.stopped(JOB_ID)


def test_a_member_without_its_stored_input_vets_the_others_and_decrypts_the_version(
    pki: DemoPki,
    coordinator: CeremonyCoordinator,
    participants: list[PaillierParticipant],
    paillier_key: PaillierPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """org-a's stored input is gone by CONSISTENCY: it checks the others' sum alone, which is
    not the version's product, keeps nothing, and decrypts the version as before."""
    decryptions = Decryptions(monkeypatch)
    round_ = PaillierRound(pki, coordinator, ORGS)
    once = _sum_size(round_, paillier_key)
    for phase in (SecAggPhase.KEYS, SecAggPhase.SHARES, SecAggPhase.INPUTS):
        round_.run_phase(phase, participants)
    AnswerStore(participants[0].state_dir).forget(round_.round_id, SecAggPhase.INPUTS)
    for phase in (SecAggPhase.CONSISTENCY, SecAggPhase.UNMASK):
        round_.run_phase(phase, participants)
    assert round_.publish() == 1

    assert decryptions.during(lambda: participants[0].paillier.model(JOB_ID, 1)) == once
    assert decryptions.during(lambda: participants[1].paillier.model(JOB_ID, 1)) == 0
    decrypted, built = (p.store.load_model(JOB_ID, 1) for p in participants[:2])
    assert decrypted is not None and built is not None
    assert all(np.array_equal(a, b) for a, b in zip(decrypted, built, strict=True))
