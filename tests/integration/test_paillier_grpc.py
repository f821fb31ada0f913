"""Paillier jobs over real gRPC with mutual TLS: the key ceremony, encrypted rounds, no plaintext.

Three real participant daemons (threads in this process) run a paillier job of the shift task,
whose training result is known exactly: every round moves each weight by the weighted mean
offset 0.4. The coordinator never holds that model: the participants decrypt each version and
report its evaluation, whose loss (the mean absolute weight) shows they rebuilt the right model.
The coordinator's database, blob store and log records hold no individual update and nothing
close to the model after version 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from inproc_consortium import ORGS, DaemonThread, initial_weights, shift_job_spec, wait_for_job
from integration_shift_task import ORG_SETTINGS

from coordinator.transport.server import RunningCoordinator
from fedsilo.admin import AdminClient
from fedsilo.chunking import MAX_MESSAGE_BYTES
from fedsilo.cli.daemons import wait_for
from fedsilo.codec import PayloadHeader, decode_tensors, encode_tensors
from fedsilo.paillier_inputs import RoundInputsInfo
from fedsilo.paillier_versions import PaillierVersion
from fedsilo.protection import SecAggParameters, decode_share_list
from fedsilo.v1 import fedsilo_pb2 as pb
from participant.service.paillier_jobs import PaillierJobs
from participant.service.paillier_state import PaillierStateStore
from participant.transport.client import CoordinatorClient
from secagg import (
    ConsistencySignature,
    RevealedShare,
    RoundConfig,
    SecAggServer,
    SignedKeys,
    UnmaskResponse,
)
from secagg.paillier import PackingLayout, PaillierCiphertexts, encrypt_integers, input_tag
from secagg.primitives.shamir import FIELD_PRIME, Share

LEVELS_BITS = 12
BOUND = math.ldexp(1.0, -(LEVELS_BITS + 1)) + 1e-5
ROUNDS = 2
SHIFT = 0.4  # (10 * 1 + 30 * 2 - 60 * 0.5) / 100


def paillier_spec() -> pb.JobSpec:
    spec = shift_job_spec(num_rounds=ROUNDS)
    spec.protection = pb.PROTECTION_PAILLIER
    spec.phase_timeout_seconds = 30
    spec.max_failed_rounds = 0
    spec.secagg.CopyFrom(pb.SecAggSettings(clip=2.0, levels_bits=LEVELS_BITS))
    return spec


@pytest.mark.slow  # a key ceremony and paillier rounds of three daemons: about 4 s
def test_three_daemons_complete_a_paillier_job(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    daemons = [run_daemon(org, target, poll_seconds=0.5) for org in ORGS]
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    initial = initial_weights()
    job_id = admin.create_job(paillier_spec(), initial).job_id
    admin.start_job(job_id)

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == ROUNDS]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports == 3

    status = wait_for_job(admin, job_id, done, "the paillier job to complete", 120)

    for round_ in status.rounds:
        assert round_.phase == pb.ROUND_PHASE_COMMITTED, round_.abort_reason
        assert sorted(round_.contributors) == list(ORGS)
    # The participants decrypted each version: its loss is the mean |w| of base + v * 0.4.
    for version in range(1, ROUNDS + 1):
        expected = [w + np.float32(version * SHIFT) for w in initial]
        loss = float(np.mean([np.abs(w).mean() for w in expected]))
        metrics = next(m for m in status.metrics if m.version == version)
        assert metrics.reports == 3
        assert abs(metrics.loss - loss) <= version * BOUND
    # Version 0 is public; later versions exist only encrypted at the coordinator.
    assert admin.download_model(job_id, 0)[0] == 0
    with pytest.raises(grpc.RpcError) as refused:
        admin.download_model(job_id, 1)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "export the model from a participant" in (refused.value.details() or "")

    # The daemons stop before their files and the coordinator's are read: a running one may be
    # between writing a temporary file and renaming it.
    for daemon in daemons:
        assert daemon.stop()
    # Privacy: no individual update, and nothing close to a decrypted model, at the coordinator.
    stored = [p.read_bytes() for p in (tmp_path / "coordinator").rglob("*") if p.is_file()]
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records).encode()
    flat_initial = np.concatenate([w.ravel() for w in initial])
    secrets = [flat_initial + np.float32(ORG_SETTINGS[o]["offset"]) for o in ORGS]
    secrets += [flat_initial + np.float32(v * SHIFT) for v in range(1, ROUNDS + 1)]
    for vector in secrets:
        raw = vector.astype(np.float32).tobytes()[:24]
        assert all(raw not in data for data in (*stored, logged))
    for data in stored:
        for dtype in (np.float32, np.float64):
            if len(data) == flat_initial.size * np.dtype(dtype).itemsize:
                decoded = np.frombuffer(data, dtype=dtype).astype(np.float64)
                for vector in secrets:
                    assert np.max(np.abs(decoded - vector)) > 0.01

    # Every participant keeps its key material private.
    key_files = [p for p in (tmp_path / "participants").rglob("*") if p.is_file()]
    assert key_files
    for path in key_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.slow  # it waits out the rounds the stopped organizations refuse: about 30 s
def test_a_coordinator_serving_another_correction_is_refused_for_good(
    admin: AdminClient,
    target: str,
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The decryption oracle over real gRPC: version 1 is served with its correction shifted by
    one quantum (a plausible mean). Every daemon recomputes the correction from the round's
    signed messages, refuses the version, stops serving the job for good and says so; the
    admin sees it in the job's status, and no further round opens."""
    service = coordinator.service
    honest_read = service.read_model

    def tampered(job_id: str, version: int, *, encrypted: bool = False) -> Any:
        got, header, payload = honest_read(job_id, version, encrypted=encrypted)
        if not encrypted or got < 1:
            return got, header, iter([payload])
        record, correction = decode_tensors(header, payload)
        correction = correction.copy()
        correction[0] += 1
        header, payload = encode_tensors([record, correction])
        return got, header, iter([payload])

    service.stream_model = tampered  # type: ignore[method-assign]
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5)
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = paillier_spec()
    spec.max_failed_rounds = 3
    spec.round_timeout_seconds = 5
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)

    def refused(status: pb.JobStatus) -> bool:
        return all(f"{org} (version 1:" in status.waiting_reason for org in ORGS)

    status = wait_for_job(admin, job_id, refused, "every organization to report the refusal", 120)
    assert "stopped serving this job for good" in status.waiting_reason
    assert "served mask correction is not the one" in status.waiting_reason
    assert status.rounds[0].phase == pb.ROUND_PHASE_COMMITTED
    # Version 1 was never built on: no round after the first committed, none is open.
    assert all(r.phase != pb.ROUND_PHASE_COMMITTED for r in status.rounds[1:])
    assert all(r.phase in (pb.ROUND_PHASE_COMMITTED, pb.ROUND_PHASE_ABORTED) for r in status.rounds)
    lines = [r.getMessage() for r in caplog.records if "stopped serving job" in r.getMessage()]
    assert len(lines) == len(ORGS)
    assert all(f"job {job_id}" in line and "model version 1 failed" in line for line in lines)


def _correction_without_checks(job_id: str, record: PaillierVersion, like: Any) -> Any:
    """The correction the record's transcript gives when no signature is checked: what a
    coordinator serves beside unmask shares it changed, so that the two agree."""
    transcript = record.transcript
    config = RoundConfig(
        job_id,
        transcript.round_id,
        transcript.cohort,
        transcript.threshold,
        like.size,
        like.dtype.itemsize * 8,
        context=transcript.context,
    )
    server = SecAggServer(config)
    for org, body, _ in transcript.keys:
        server.receive_keys(org, SignedKeys.from_bytes(body))
    server.close_keys()
    for org, body in transcript.shares:
        server.receive_shares(org, decode_share_list(body))
    server.close_shares()
    server.restore_inputs(transcript.contributors, np.zeros(like.size, dtype=like.dtype))
    server.close_inputs()
    for org, body in transcript.consistency:
        server.receive_consistency(org, ConsistencySignature.from_bytes(body))
    server.close_consistency()
    for org, body in transcript.unmask:
        server.receive_unmask(org, UnmaskResponse.from_bytes(body))
    return server.finish()


def _moved_seed(body: bytes) -> bytes:
    """An unmask answer whose share of the first survivor's self-mask seed is one more (so
    every responder's shares still lie on one polynomial), its signature kept."""
    answer = UnmaskResponse.from_bytes(body)
    first, *rest = answer.self_mask_shares
    moved = RevealedShare(first.owner, Share(first.share.x, (first.share.y + 1) % FIELD_PRIME))
    return dataclasses.replace(answer, self_mask_shares=(moved, *rest)).to_bytes()


@pytest.mark.slow  # it waits out the rounds the stopped organizations refuse: about 30 s
def test_a_coordinator_forging_unmask_shares_in_the_transcript_is_refused_for_good(
    admin: AdminClient,
    target: str,
    coordinator: RunningCoordinator,
    run_daemon: Callable[..., DaemonThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Version 1 is served with every unmask answer's share of one self-mask seed moved
    consistently, and the correction those shares give: the transcript replays without its
    signatures. Every daemon checks each answer's signature before using a share, refuses the
    version without decrypting it, and stops serving the job for good."""
    service = coordinator.service
    honest_read = service.read_model

    def forged(job_id: str, version: int, *, encrypted: bool = False) -> Any:
        got, header, payload = honest_read(job_id, version, encrypted=encrypted)
        if not encrypted or got < 1:
            return got, header, iter([payload])
        data, correction = decode_tensors(header, payload)
        record = PaillierVersion.from_bytes(data.tobytes())
        unmask = tuple((org, _moved_seed(body)) for org, body in record.transcript.unmask)
        record = dataclasses.replace(
            record, transcript=dataclasses.replace(record.transcript, unmask=unmask)
        )
        header, payload = encode_tensors(
            [
                np.frombuffer(record.to_bytes(), dtype=np.uint8),
                _correction_without_checks(job_id, record, correction),
            ]
        )
        return got, header, iter([payload])

    service.stream_model = forged  # type: ignore[method-assign]
    for org in ORGS:
        run_daemon(org, target, poll_seconds=0.5)
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = paillier_spec()
    spec.max_failed_rounds = 3
    spec.round_timeout_seconds = 5
    job_id = admin.create_job(spec, initial_weights()).job_id
    admin.start_job(job_id)

    def refused(status: pb.JobStatus) -> bool:
        return all(f"{org} (version 1:" in status.waiting_reason for org in ORGS)

    status = wait_for_job(admin, job_id, refused, "every organization to report the refusal", 120)
    assert "stopped serving this job for good" in status.waiting_reason
    assert "the unmask response of" in status.waiting_reason
    assert status.rounds[0].phase == pb.ROUND_PHASE_COMMITTED
    assert all(r.phase != pb.ROUND_PHASE_COMMITTED for r in status.rounds[1:])
    lines = [r.getMessage() for r in caplog.records if "stopped serving job" in r.getMessage()]
    assert len(lines) == len(ORGS)
    assert all("is not signed" in line for line in lines)


@pytest.mark.slow  # about 3 s
def test_a_malformed_input_is_excluded_and_its_sender_named(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """org-c holds the job key and signs an encrypted input with a non-zero padding bit (its
    tag made properly, so only decrypting its input can tell). org-a and org-b vet it before
    signing U3, leave org-c out like a dropout and name it; the coordinator keeps the signed
    input as evidence, and the round commits exactly org-a's and org-b's sum, which every key
    holder decrypts. Without the vetting the sum would not decode and the job would stall."""
    _exclude_a_malformed_input(
        admin, target, run_daemon, tmp_path, monkeypatch, caplog, initial_weights()
    )


LARGE_PARAMETERS = 240_000
"""Above 225,280 values (4,096 ciphertexts of 55 slots at 2048 bits, k = 32), one input takes
more than 2 MiB: the two inputs each member vets exceed one 4 MiB gRPC message."""


@pytest.mark.slow  # decrypting 240,000 values several times per member: about 1-3 minutes
def test_inputs_larger_than_one_message_are_streamed_and_a_malformed_one_excluded(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same exclusion with a model whose inputs do not fit in one gRPC message: every
    member downloads the others' signed inputs in chunks (DownloadRoundInputs, more than 4 MiB
    each time), vets them, and org-c is named and excluded; the round commits the honest sum.
    Were the inputs carried in the step, they could not be shown, nobody could name org-c and
    the job would stall."""
    sizes: list[int] = []
    download = CoordinatorClient.download_round_inputs

    def spied(
        self: CoordinatorClient, job_id: str, round_id: str, announced: RoundInputsInfo
    ) -> bytes | None:
        payload = download(self, job_id, round_id, announced)
        if payload is not None:
            sizes.append(len(payload))
        return payload

    monkeypatch.setattr(CoordinatorClient, "download_round_inputs", spied)
    rng = np.random.default_rng(11)
    initial = [
        rng.standard_normal((LARGE_PARAMETERS - 1000,)).astype(np.float32),
        rng.standard_normal((1000,)).astype(np.float32),
    ]
    _exclude_a_malformed_input(
        admin, target, run_daemon, tmp_path, monkeypatch, caplog, initial, timeout=900
    )
    # Every member of the first U3 (org-c too) and the honest ones again after the exclusion.
    assert len(sizes) >= 3
    assert min(sizes) > MAX_MESSAGE_BYTES


def _exclude_a_malformed_input(
    admin: AdminClient,
    target: str,
    run_daemon: Callable[..., DaemonThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    initial: list[np.ndarray],
    timeout: float = 120,
) -> None:
    """org-c signs an input with a padding bit; org-a and org-b exclude it (see above)."""
    caplog.set_level(logging.INFO)
    honest_encrypt = PaillierJobs.encrypt_input

    def encrypt(
        self: PaillierJobs,
        job_id: str,
        parameters: SecAggParameters,
        masked: np.ndarray,
        binding: bytes,
    ) -> tuple[PayloadHeader, bytes]:
        if vars(self.store)["_dir"].parent.name != "org-c":
            return honest_encrypt(self, job_id, parameters, masked, binding)
        key = self.private_key(job_id)
        assert key is not None
        public = key.public_key
        layout = PackingLayout(parameters.modulus_bits, parameters.max_participants, public.bits)
        plaintexts = layout.pack(masked)
        plaintexts[-1] |= 1 << layout.packed_bits  # a padding bit: the sum would never decode
        tag = input_tag(key, binding, plaintexts)
        *encrypted, tag_ciphertext = encrypt_integers(public, [*plaintexts, tag])
        data = PaillierCiphertexts(public.fingerprint, layout, 1, masked.size, tuple(encrypted))
        tag_bytes = tag_ciphertext.to_bytes(public.ciphertext_bytes, "big")
        return encode_tensors(
            [np.frombuffer(data.to_bytes(), np.uint8), np.frombuffer(tag_bytes, np.uint8)]
        )

    monkeypatch.setattr(PaillierJobs, "encrypt_input", encrypt)
    daemons = [run_daemon(org, target, poll_seconds=0.5) for org in ORGS]
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    spec = paillier_spec()
    spec.num_rounds = 1
    # Minutes of decryption per member for a large model, on a machine shared by three daemons.
    spec.phase_timeout_seconds = timeout
    spec.round_timeout_seconds = 3 * timeout
    job_id = admin.create_job(spec, initial).job_id
    admin.start_job(job_id)

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == 1]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports >= 2

    status = wait_for_job(
        admin, job_id, done, "the paillier job to complete without org-c", timeout
    )
    (round_,) = status.rounds
    assert round_.phase == pb.ROUND_PHASE_COMMITTED, round_.abort_reason
    assert sorted(round_.contributors) == ["org-a", "org-b"]
    events = [e for e in admin.audit_events() if e.action == "round.malformed_input"]
    assert events and all("org=org-c" in e.detail for e in events)
    named = [r for r in caplog.records if "organization org-c sent a malformed" in r.getMessage()]
    assert {r.name for r in named} == {"participant", "coordinator"}
    for daemon in daemons:
        assert daemon.stop()

    # Exactly org-a's and org-b's sum: the weighted mean offset (10 * 1 + 30 * 2) / 40.
    shift = np.float32((10 * 1.0 + 30 * 2.0) / 40)
    models = []
    for org in ("org-a", "org-b"):
        kept = PaillierStateStore(tmp_path / "participants" / org).load_model(job_id, 1)
        assert kept is not None, org
        models.append(kept)
    for model in models[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(models[0], model, strict=True))
    for got, base in zip(models[0], initial, strict=True):
        assert np.max(np.abs(got - (base + shift))) <= BOUND
