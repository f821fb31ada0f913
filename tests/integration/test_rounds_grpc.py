"""Whole jobs over real gRPC with mutual TLS: three daemons, FedAvg results, chunked downloads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from inproc_consortium import (
    ORGS,
    RPC_TIMEOUT_S,
    DaemonThread,
    initial_weights,
    shift_job_spec,
    wait_for_job,
)
from integration_shift_task import ORG_SETTINGS, expected_fedavg

from fedsilo import chunking
from fedsilo.admin import AdminClient
from fedsilo.cli.daemons import wait_for
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc

NUM_ROUNDS = 3


def _contributions() -> list[tuple[float, int]]:
    return [(float(ORG_SETTINGS[o]["offset"]), int(ORG_SETTINGS[o]["examples"])) for o in ORGS]


def test_three_daemons_complete_a_job_with_weighted_fedavg(
    admin: AdminClient, target: str, run_daemon: Callable[..., DaemonThread]
) -> None:
    for org in ORGS:
        run_daemon(org, target)
    wait_for(
        lambda: sorted(p.org_id for p in admin.list_participants()) == list(ORGS),
        20,
        "three organizations to register",
        interval=0.02,
    )
    initial = initial_weights()
    job_id = admin.create_job(shift_job_spec(num_rounds=NUM_ROUNDS), initial).job_id
    admin.start_job(job_id)

    def done(status: pb.JobStatus) -> bool:
        final = [m for m in status.metrics if m.version == NUM_ROUNDS]
        return status.state == pb.JOB_STATE_COMPLETED and bool(final) and final[0].reports == 3

    status = wait_for_job(admin, job_id, done, "the job to complete and be evaluated", 40)

    assert status.model_version == NUM_ROUNDS
    assert [r.number for r in status.rounds] == list(range(1, NUM_ROUNDS + 1))
    assert [r.base_version for r in status.rounds] == list(range(NUM_ROUNDS))
    for round_ in status.rounds:
        assert round_.phase == pb.ROUND_PHASE_COMMITTED
        assert sorted(round_.contributors) == list(ORGS)
        assert len(round_.contributors) == 3
        assert round_.abort_reason == ""
        # Weighted mean of |offset|: (10*1 + 30*2 + 60*0.5) / 100.
        assert round_.train_loss == np.float64(1.0)

    # Every committed version is exactly one weighted FedAvg step from the previous one.
    expected = initial
    for version in range(NUM_ROUNDS + 1):
        got_version, weights = admin.download_model(job_id, version)
        assert got_version == version
        assert [w.dtype for w in weights] == [np.float32, np.float32]
        for got, want in zip(weights, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        expected = expected_fedavg(expected, _contributions())

    latest_version, final = admin.download_model(job_id)
    assert latest_version == NUM_ROUNDS
    assert all(np.isfinite(w).all() for w in final)
    # Weighted shift 0.4 per round, not the unweighted 0.8333: the weights are the examples.
    for got, start in zip(final, initial, strict=True):
        np.testing.assert_allclose(got - start, np.full(start.shape, 1.2), rtol=0, atol=1e-5)

    final_metrics = next(m for m in status.metrics if m.version == NUM_ROUNDS)
    assert final_metrics.reports == 3
    assert final_metrics.num_examples == sum(int(s["examples"]) for s in ORG_SETTINGS.values())
    assert final_metrics.accuracy == np.float64(0.5)
    expected_loss = float(np.mean([np.abs(w).mean() for w in final]))
    np.testing.assert_allclose(final_metrics.loss, expected_loss, rtol=1e-6)


def test_download_model_streams_a_model_larger_than_the_message_cap(
    admin: AdminClient, participant_stub: Callable[[str], pb_grpc.ParticipantServiceStub]
) -> None:
    rng = np.random.default_rng(11)
    big = rng.standard_normal(1_500_000).astype(np.float32)  # 6 MB > the 4 MiB message cap
    small = rng.standard_normal((3, 2)).astype(np.float32)
    assert big.nbytes > chunking.MAX_MESSAGE_BYTES
    job_id = admin.create_job(shift_job_spec(), [big, small]).job_id

    version, weights = admin.download_model(job_id, 0)
    assert version == 0
    assert [w.shape for w in weights] == [big.shape, small.shape]
    assert weights[0].tobytes() == big.tobytes()
    assert weights[1].tobytes() == small.tobytes()

    # The participant API serves the same bytes, header first, then chunks under the cap.
    stub = participant_stub("org-a")
    chunks = list(
        stub.DownloadModel(pb.DownloadModelRequest(job_id=job_id, version=0), timeout=RPC_TIMEOUT_S)
    )
    assert chunks[0].WhichOneof("item") == "info"
    assert chunks[0].info.version == 0
    assert chunks[0].info.header.total_bytes == big.nbytes + small.nbytes
    data = chunks[1:]
    assert all(c.WhichOneof("item") == "data" for c in data)
    assert all(len(c.data) <= chunking.CHUNK_BYTES for c in data)
    assert len(data) == -(-(big.nbytes + small.nbytes) // chunking.CHUNK_BYTES)
    assert b"".join(c.data for c in data) == big.tobytes() + small.tobytes()
