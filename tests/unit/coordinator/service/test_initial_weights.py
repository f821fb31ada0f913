"""Version 0 from the seed: asked of each organization, committed once enough agree, never before.

Driven through ``CoordinatorService`` with SQLite, a blob dir and a fake clock: the oracle is the
committed version 0 (its bytes are the agreed upload's), the job's waiting reason, and which
work each organization is handed.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from coordinator.domain.jobs import Job, JobSpec
from coordinator.errors import ConflictingSubmission, InvalidRequest, WrongRoundPhase
from coordinator.persistence.blobs import BlobStore
from coordinator.persistence.store import Store
from coordinator.service.facade import CoordinatorService
from coordinator.service.membership import MembershipService
from coordinator.service.views import WorkKind
from fedsilo.chunking import split
from fedsilo.codec import PayloadHeader, encode_tensors
from fedsilo.protection import Protection
from fedsilo.tasks import TrainingSettings

T0 = 1_700_000_000.0
ORGS = ("org-a", "org-b", "org-c")
EMPTY = PayloadHeader((), 0, bytes(32))


def weights(value: float) -> list[npt.NDArray[np.float32]]:
    return [np.full((3, 2), value, dtype=np.float32), np.full((2,), value, dtype=np.float32)]


class Coordinator:
    def __init__(self, tmp_path: Path) -> None:
        self.now = T0
        self.store = Store("sqlite://")
        self.blobs = BlobStore(tmp_path / "blobs")
        ids = itertools.count(1)
        self.service = CoordinatorService(
            self.store, self.blobs, clock=lambda: self.now, new_id=lambda: f"id-{next(ids)}"
        )
        membership = MembershipService(self.store, auto_approve=True, clock=lambda: self.now)
        for org in ORGS:
            membership.authenticate_participant(org, require_active=False)

    def seeded_job(self, **changes: Any) -> Job:
        spec = JobSpec(
            name="seeded",
            task_name="digits-linear",
            protection=Protection.NONE,
            num_rounds=1,
            min_participants=2,
            training=TrainingSettings(seed=11),
            initial_weights_from_seed=True,
        )
        job = self.service.create_job(dataclasses.replace(spec, **changes), EMPTY, b"", "admin")
        self.service.start_job(job.job_id, "admin")
        return job

    def report(self, org: str, job: Job, value: float) -> bool:
        header, payload = encode_tensors(weights(value))
        ack = self.service.receive_initial_weights(
            org, job.job_id, header, split(payload, chunk_bytes=16)
        )
        return ack.duplicate

    def reason(self, job: Job) -> str:
        return self.service.get_job(job.job_id).waiting_reason


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    made = Coordinator(tmp_path)
    yield made
    made.store.close()


def test_version_zero_is_committed_when_min_participants_agree(coordinator: Coordinator) -> None:
    job = coordinator.seeded_job()
    view = coordinator.service.get_job(job.job_id)
    assert view.rounds == () and view.job.weight_specs == ()
    assert "none reported yet" in view.waiting_reason
    for org in ORGS:
        item = coordinator.service.next_work(org)
        assert item.kind is WorkKind.INITIAL_WEIGHTS and item.job is not None
        assert item.job.job_id == job.job_id
    # Asked moments ago: not again in a loop (an organization without the task cannot answer).
    assert coordinator.service.next_work("org-c").kind is WorkKind.WAIT

    assert coordinator.report("org-a", job, 0.25) is False
    assert "1 of 2 organizations" in coordinator.reason(job)
    assert coordinator.service.get_job(job.job_id).rounds == ()
    # A reporter is not asked again; the others still are.
    assert coordinator.service.next_work("org-a").kind is WorkKind.WAIT
    assert coordinator.report("org-a", job, 0.25) is True  # the same bytes: a duplicate

    coordinator.report("org-b", job, 0.25)
    version, header, payload = coordinator.service.read_model(job.job_id, 0)
    expected_header, expected_payload = encode_tensors(weights(0.25))
    assert version == 0 and payload == expected_payload
    assert header.tensors == expected_header.tensors
    view = coordinator.service.get_job(job.job_id)
    assert view.job.weight_specs == expected_header.tensors
    # The first round opened from version 0 at once, and nobody is asked for version 0 again.
    assert len(view.rounds) == 1 and view.rounds[0].base_version == 0
    assert coordinator.service.next_work("org-c").kind is WorkKind.TRAIN
    with pytest.raises(WrongRoundPhase):
        coordinator.report("org-c", job, 0.25)
    with coordinator.store.transaction() as tx:
        assert any(e["action"] == "job.initial_weights" for e in tx.list_audit())


def test_disagreeing_digests_wait_with_a_reason(coordinator: Coordinator) -> None:
    job = coordinator.seeded_job(min_participants=2)
    coordinator.report("org-a", job, 0.25)
    coordinator.report("org-b", job, 0.5)
    reason = coordinator.reason(job)
    assert reason.startswith("version 0 disagrees: 2 different weights reported")
    assert "org-a" in reason and "org-b" in reason and "TensorFlow" in reason
    assert coordinator.service.get_job(job.job_id).rounds == ()
    # An organization cannot change its report.
    with pytest.raises(ConflictingSubmission):
        coordinator.report("org-a", job, 0.5)
    # The third organization settles it; the losing upload's blob is removed.
    coordinator.report("org-c", job, 0.5)
    _, _, payload = coordinator.service.read_model(job.job_id, 0)
    assert payload == encode_tensors(weights(0.5))[1]
    losing = encode_tensors(weights(0.25))[0].sha256.hex()
    assert losing not in coordinator.blobs.refs()


def test_seeded_job_refuses_weights_and_a_supplied_job_refuses_reports(
    coordinator: Coordinator,
) -> None:
    header, payload = encode_tensors(weights(1.0))
    spec = JobSpec(name="x", task_name="digits-linear", initial_weights_from_seed=True)
    with pytest.raises(InvalidRequest, match="takes no initial weights"):
        coordinator.service.create_job(spec, header, payload, "admin")
    supplied = coordinator.service.create_job(
        dataclasses.replace(spec, initial_weights_from_seed=False), header, payload, "admin"
    )
    coordinator.service.start_job(supplied.job_id, "admin")
    with pytest.raises(WrongRoundPhase, match="came with the job"):
        coordinator.report("org-a", supplied, 1.0)


def test_deleting_a_job_before_agreement_removes_the_reported_blobs(
    coordinator: Coordinator,
) -> None:
    job = coordinator.seeded_job()
    coordinator.report("org-a", job, 0.25)
    ref = encode_tensors(weights(0.25))[0].sha256.hex()
    assert ref in coordinator.blobs.refs()
    coordinator.service.abort_job(job.job_id, "admin")
    coordinator.service.delete_job(job.job_id, "admin")
    assert ref not in coordinator.blobs.refs()


def test_version_zero_survives_a_restart_of_the_service(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    job = coordinator.seeded_job(min_participants=1)
    coordinator.report("org-b", job, 0.75)
    restarted = CoordinatorService(coordinator.store, BlobStore(tmp_path / "blobs"))
    view = restarted.get_job(job.job_id)
    assert view.job.spec.initial_weights_from_seed
    assert view.job.weight_specs == encode_tensors(weights(0.75))[0].tensors


def test_a_blob_another_waiting_job_reported_is_kept(coordinator: Coordinator) -> None:
    first = coordinator.seeded_job(name="first")
    second = coordinator.seeded_job(name="second")
    shared = encode_tensors(weights(0.25))[0].sha256.hex()
    coordinator.report("org-a", first, 0.25)
    coordinator.report("org-a", second, 0.25)
    # The first job settles on other bytes: its losing report's blob is the second job's too.
    coordinator.report("org-b", first, 0.5)
    coordinator.report("org-c", first, 0.5)
    assert shared in coordinator.blobs.refs()
    coordinator.report("org-b", second, 0.25)
    _, _, payload = coordinator.service.read_model(second.job_id, 0)
    assert payload == encode_tensors(weights(0.25))[1]
    # Deleting a job whose reports another waiting job shares keeps them as well.
    third = coordinator.seeded_job(name="third")
    fourth = coordinator.seeded_job(name="fourth")
    coordinator.report("org-a", third, 2.0)
    coordinator.report("org-a", fourth, 2.0)
    coordinator.service.abort_job(third.job_id, "admin")
    coordinator.service.delete_job(third.job_id, "admin")
    assert encode_tensors(weights(2.0))[0].sha256.hex() in coordinator.blobs.refs()
