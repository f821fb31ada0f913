"""A revocation during a paillier job rotates the job's key over real gRPC, and the job goes on.

Three daemons run round 1 of a paillier job; the consortium CA then revokes org-c and the
admin publishes the new membership list. Before round 2 opens, the coordinator deals key
generation 1 among org-a and org-b, who take it because the signed list shows the old key
held by a revoked organization. Round 2 commits without org-c under the new key; each daemon
decrypts version 1 with the retired key and version 2 with the new one, and reports the model
the two rounds make. With a fourth organization left out of round 2, the coordinator and the
revoked organization then pass off a sum of their choice under the old key as version 2: the
organization outside the round refuses it.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inproc_consortium import ORGS, ConsortiumPki, DaemonThread, initial_weights, wait_for_job
from integration_shift_task import ORG_SETTINGS
from test_membership_grpc import signed_list
from test_paillier_grpc import BOUND, SHIFT, paillier_spec

from coordinator.domain.jobs import Job
from coordinator.persistence.store import Transaction
from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.codec import decode_tensors, encode_tensors
from fedsilo.config import AcceptSection, ParticipantConfig, TlsSection
from fedsilo.paillier_versions import PaillierVersion, tag_binding
from fedsilo.pki import Role, issue, load_ca
from fedsilo.protection import Protection
from fedsilo.v1 import fedsilo_pb2 as pb
from participant.main import build_client, paillier_jobs
from participant.service.paillier_jobs import VersionRefused
from participant.service.paillier_state import PaillierStateStore
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    encrypt_integers,
    input_tag,
)

SHIFT_4 = (10 * 1 + 30 * 2 - 60 * 0.5 + 20 * 0.5) / 120
"""Round 1's mean offset with org-d (20 examples, offset 0.5) beside the three."""


def _shift(orgs: tuple[str, ...]) -> float:
    """The weighted mean offset a round of ``orgs`` moves every weight by."""
    examples = sum(float(ORG_SETTINGS[o]["examples"]) for o in orgs)
    moved = sum(float(ORG_SETTINGS[o]["offset"]) * float(ORG_SETTINGS[o]["examples"]) for o in orgs)
    return moved / examples


@pytest.mark.slow  # two key ceremonies and two paillier rounds: about 7 s
def test_a_revocation_rotates_the_key_and_the_next_round_commits_without_the_revoked_org(
    pki: ConsortiumPki,
    admin: AdminClient,
    target: str,
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Round 2 waits until the test has revoked org-c: the revocation falls between the rounds.
    engine: Any = coordinator.service.driver._engines[Protection.PAILLIER]
    honest_select = engine.select_cohort
    revoked = threading.Event()

    def after_revocation(
        tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        if tx.list_rounds(job.job_id) and not revoked.is_set():
            return None
        result: tuple[str, ...] | None = honest_select(tx, job, live, now)
        return result

    monkeypatch.setattr(engine, "select_cohort", after_revocation)
    # Two organizations are enough for a round once org-c is gone.
    accept = AcceptSection(min_cohort=2)
    daemons = {org: run_daemon(org, target, poll_seconds=0.5, accept=accept) for org in ORGS}
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = paillier_spec()
    spec.min_participants = 2
    initial = initial_weights()
    job_id = admin.create_job(spec, initial).job_id
    admin.start_job(job_id)
    first = wait_for_job(
        admin, job_id, lambda s: s.model_version == 1, "round 1 to commit under key 0", 120
    )
    assert sorted(first.rounds[0].contributors) == list(ORGS)

    assert admin.publish_membership_list(signed_list(pki, 2, ORGS[:2], ORGS[2:])) == (2, False)
    revoked.set()

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == 2]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports == 2

    status = wait_for_job(admin, job_id, done, "round 2 to commit without org-c", 120)
    assert [r.phase for r in status.rounds] == [pb.ROUND_PHASE_COMMITTED] * 2
    assert (
        sorted(status.rounds[1].cohort)
        == sorted(status.rounds[1].contributors)
        == ["org-a", "org-b"]
    )

    # Each version says its key generation, and the participants rebuilt both: version 1 moved
    # every weight by the three organizations' mean offset, version 2 by org-a and org-b's.
    generations = []
    for version in (1, 2):
        _, header, payload = coordinator.service.read_model(job_id, version, encrypted=True)
        record, _ = decode_tensors(header, payload)
        generations.append(PaillierVersion.from_bytes(record.tobytes()).generation)
    assert generations == [0, 1]
    expected = [w + np.float32(SHIFT + _shift(("org-a", "org-b"))) for w in initial]
    loss = float(np.mean([np.abs(w).mean() for w in expected]))
    metrics = next(m for m in status.metrics if m.version == 2)
    assert abs(metrics.loss - loss) <= 2 * BOUND

    # org-c's daemon ended when the coordinator refused it for good (it was revoked).
    revoked_daemon = daemons["org-c"]
    assert revoked_daemon.stop()
    assert [type(e).__name__ for e in revoked_daemon.errors] == ["Revoked"]
    revoked_daemon.errors.clear()
    for daemon in daemons.values():
        assert daemon.stop()
    # The honest daemons moved to generation 1 and kept generation 0's key to read version 1;
    # org-c, revoked, never got the new key.
    for org in ORGS:
        state = json.loads(
            (tmp_path / "participants" / org / "paillier" / job_id / "job.json").read_text()
        )
        if org == "org-c":
            assert state["generation"] == 0 and state["retired"] == []
        else:
            assert state["generation"] == 1 and state["private_key"]
            assert [item["generation"] for item in state["retired"]] == [0]
            assert state["retired"][0]["private_key"] != state["private_key"]


@pytest.mark.slow  # two key ceremonies, two paillier rounds of four daemons: about 10 s
def test_a_later_round_forged_under_the_old_key_is_refused_by_an_organization_outside_it(
    pki: ConsortiumPki,
    admin: AdminClient,
    target: str,
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """org-c, revoked, keeps key 0. Round 2 runs under key generation 1 among org-a and org-b;
    org-d holds both keys but was not in it. The coordinator then serves, as version 2, a sum
    of its and org-c's choice encrypted and tagged under key 0, with round 2's honest
    transcript and correction. org-d, rebuilding the job's model over gRPC with its own state,
    refuses it: round 2's cohort signed a context naming key generation 1. Served honestly,
    the same state decrypts version 2."""
    ca = load_ca(pki.demo.ca_cert, pki.demo.ca_key)
    pki.demo.participants["org-d"] = issue(ca, "org-d", Role.PARTICIPANT, tmp_path / "org-d-pki")
    monkeypatch.setitem(ORG_SETTINGS, "org-d", {"offset": 0.5, "examples": 20})
    orgs = (*ORGS, "org-d")
    assert admin.publish_membership_list(signed_list(pki, 2, orgs)) == (2, False)

    # Round 2 waits for org-c's revocation and leaves org-d out (any cohort of two may run it).
    engine: Any = coordinator.service.driver._engines[Protection.PAILLIER]
    honest_select = engine.select_cohort
    revoked = threading.Event()

    def without_org_d(
        tx: Transaction, job: Job, live: tuple[str, ...], now: float
    ) -> tuple[str, ...] | None:
        if tx.list_rounds(job.job_id):
            if not revoked.is_set():
                return None
            live = tuple(org for org in live if org != "org-d")
        result: tuple[str, ...] | None = honest_select(tx, job, live, now)
        return result

    monkeypatch.setattr(engine, "select_cohort", without_org_d)
    accept = AcceptSection(min_cohort=2)
    daemons = {org: run_daemon(org, target, poll_seconds=0.5, accept=accept) for org in orgs}
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(orgs),
        20,
        "four organizations to register",
        interval=0.02,
    )
    spec = paillier_spec()
    spec.min_participants = 2
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)
    first = wait_for_job(
        admin, job_id, lambda s: s.model_version == 1, "round 1 to commit under key 0", 120
    )
    assert sorted(first.rounds[0].contributors) == sorted(orgs)
    assert admin.publish_membership_list(
        signed_list(pki, 3, ("org-a", "org-b", "org-d"), ["org-c"])
    )
    revoked.set()

    def job_state(org: str) -> Any:
        path = tmp_path / "participants" / org / "paillier" / job_id / "job.json"
        return json.loads(path.read_text())

    status = wait_for_job(
        admin,
        job_id,
        lambda s: s.state == pb.JOB_STATE_COMPLETED,
        "round 2 to commit among org-a and org-b",
        120,
    )
    assert sorted(status.rounds[1].contributors) == ["org-a", "org-b"]
    # org-d is sealed key generation 1 by a holder, though it took no part in round 2.
    wait_for(
        lambda: job_state("org-d")["generation"] == 1 and bool(job_state("org-d")["private_key"]),
        30,
        "org-d to hold key generation 1",
        interval=0.05,
    )
    for daemon in daemons.values():
        assert daemon.stop()
    assert [type(e).__name__ for e in daemons["org-c"].errors] == ["Revoked"]
    daemons["org-c"].errors.clear()
    old_key = PaillierPrivateKey.from_bytes(bytes.fromhex(job_state("org-c")["private_key"]))

    service = coordinator.service
    honest_read = service.read_model
    _, header, payload = honest_read(job_id, 2, encrypted=True)
    record_tensor, correction = decode_tensors(header, payload)
    honest = PaillierVersion.from_bytes(record_tensor.tobytes())
    assert honest.generation == 1

    # What org-c and the coordinator make: two contributions of no update, under key 0, tagged
    # for round 2 on version 1, with round 2's transcript and correction.
    org_d_dir = tmp_path / "participants" / "org-d"
    state = PaillierStateStore(org_d_dir).load(job_id)
    assert state is not None and state.parameters is not None
    quantization = state.parameters.quantization()
    zero = quantization.quantize(np.zeros(correction.size - 1), 10)
    chosen = (zero + zero - correction).astype(correction.dtype)
    public = old_key.public_key
    layout = PackingLayout(
        state.parameters.modulus_bits, state.parameters.max_participants, public.bits
    )
    plaintexts = layout.pack(chosen)
    summed = PaillierCiphertexts(
        public.fingerprint, layout, 2, chosen.size, tuple(encrypt_integers(public, plaintexts))
    )
    _, base_header, _ = honest_read(job_id, 1, encrypted=True)
    binding = tag_binding(job_id, honest.transcript.round_id, 1, base_header.sha256, 0)
    (tag,) = encrypt_integers(public, [input_tag(old_key, binding, plaintexts)])
    forged = replace(
        honest,
        ciphertexts=summed.to_bytes(),
        tag=tag.to_bytes(public.ciphertext_bytes, "big"),
        generation=0,
    ).to_bytes()
    forged_header, forged_payload = encode_tensors(
        [np.frombuffer(forged, dtype=np.uint8), correction]
    )

    def rebuild(state_dir: Path) -> tuple[int, list[np.ndarray]]:
        """org-d's model of version 2, as its export rebuilds it over gRPC from its state."""
        shutil.copytree(org_d_dir, state_dir)
        tls = pki.participant_tls("org-d")
        config = ParticipantConfig(
            coordinator=target,
            state_dir=state_dir,
            tls=TlsSection(ca_cert=tls.ca_cert, cert=tls.cert, key=tls.key),
            rpc_timeout_seconds=10,
        )
        client, channels = build_client(config, threading.Event(), give_up_after=10)
        paillier = paillier_jobs(config, client)
        try:
            return paillier.model(job_id, 2)
        finally:
            paillier.close()
            channels.close()

    version, weights = rebuild(tmp_path / "org-d-honest")
    assert version == 2
    expected = [w + np.float32(SHIFT_4 + _shift(("org-a", "org-b"))) for w in initial_weights()]
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=2 * BOUND)

    def tampered(job: str, version: int, *, encrypted: bool = False) -> Any:
        if encrypted and version == 2:
            return 2, forged_header, iter([forged_payload])
        got, header, payload = honest_read(job, version, encrypted=encrypted)
        return got, header, iter([payload])

    service.stream_model = tampered  # type: ignore[method-assign]
    with pytest.raises(VersionRefused, match="round context its transcript signs") as refused:
        rebuild(tmp_path / "org-d-forged")
    assert "key of generation 0" in str(refused.value)
    stopped = PaillierStateStore(tmp_path / "org-d-forged").load(job_id)
    assert stopped is not None and stopped.stopped_version == 2
