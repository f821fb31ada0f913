"""No client behaviour fills the coordinator's log with tracebacks (docs/fault-matrix.md).

A client that cancels a streaming call midway leaves one INFO line; a call of the health
service's ``List`` (which reflection advertises) is answered. Real coordinator, real mutual TLS.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inproc_consortium import ConsortiumPki, initial_weights

from coordinator.transport.server import RunningCoordinator
from fedsilo.cli.daemons import wait_for
from fedsilo.codec import encode_tensors, header_to_proto
from fedsilo.tls import channel_credentials
from fedsilo.v1 import fedsilo_pb2 as pb
from fedsilo.v1 import fedsilo_pb2_grpc as pb_grpc
from fedsilo.wire import refused_as_busy

DEADLINE_S = 30.0


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info is not None or r.levelno >= logging.ERROR
    ]


def test_a_cancelled_upload_is_one_info_line_and_no_traceback(
    coordinator: RunningCoordinator,
    running_round: Callable[..., tuple[str, pb.RoundStatus]],
    participant_stub: Callable[[str], pb_grpc.ParticipantServiceStub],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A header the round accepts: the server goes on to read (and spool) the payload.
    job_id, round_ = running_round(orgs=("org-a",))
    caplog.set_level(logging.INFO)
    stub = participant_stub("org-a")
    header, payload = encode_tensors(initial_weights())
    asked_for_more = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[pb.SubmitUpdateRequest]:
        yield pb.SubmitUpdateRequest(
            header=pb.UpdateHeader(
                job_id=job_id,
                round_id=round_.round_id,
                phase=pb.ROUND_PHASE_INPUTS,
                base_version=round_.base_version,
                num_examples=10,
                train_loss=0.5,
                payload=header_to_proto(header),
            )
        )
        yield pb.SubmitUpdateRequest(data=payload[: len(payload) // 2])
        asked_for_more.set()  # both messages are out: the server is reading the payload
        release.wait(DEADLINE_S)

    call = stub.SubmitUpdate.future(requests(), timeout=DEADLINE_S)
    try:
        assert asked_for_more.wait(DEADLINE_S)
        call.cancel()
    finally:
        release.set()
    wait_for(
        lambda: any("SubmitUpdate" in r.getMessage() for r in caplog.records),
        DEADLINE_S,
        "the coordinator to log the cancelled call",
        interval=0.02,
    )
    assert tracebacks(caplog) == []
    lines = [r for r in caplog.records if "SubmitUpdate" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO], [r.getMessage() for r in lines]


def test_health_list_is_answered(
    coordinator: RunningCoordinator,
    pki: ConsortiumPki,
    open_channel: Callable[..., grpc.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = health_pb2_grpc.HealthStub(open_channel(pki.participant_tls("org-a")))
    reply = stub.List(health_pb2.HealthListRequest(), timeout=DEADLINE_S)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert reply.statuses[""].status == serving
    assert reply.statuses["fedsilo.v1.ParticipantService"].status == serving
    assert tracebacks(caplog) == []


def test_a_pending_organization_is_refused_before_its_upload_sends_anything(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: ConsortiumPki,
) -> None:
    # org-c's first call registers it as pending; its upload stream then sends nothing at all.
    running = start_test_coordinator(auto_approve=False)
    channel = grpc.secure_channel(
        f"127.0.0.1:{running.port}", channel_credentials(pki.participant_tls("org-c"))
    )
    stub = pb_grpc.ParticipantServiceStub(channel)
    stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=DEADLINE_S)
    release = threading.Event()

    def silent() -> Iterator[pb.SubmitUpdateRequest]:
        release.wait(DEADLINE_S)
        return
        yield  # a generator that yields nothing until released

    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitUpdate(silent(), timeout=DEADLINE_S)
    finally:
        release.set()
        channel.close()
    # Refused for its membership, not left holding a server thread until its own deadline.
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, refused.value
    assert "pending" in (refused.value.details() or "")


@pytest.mark.slow  # it waits out the idle cut of 8 silent uploads: about 9 s
def test_silent_uploads_of_two_organizations_cannot_freeze_the_coordinator(
    start_test_coordinator: Callable[..., RunningCoordinator],
    pki: ConsortiumPki,
) -> None:
    # 8 worker threads, 3 of them out of the organizations' reach; uploads idle for 3 s are cut.
    running = start_test_coordinator(
        max_workers=8, reserved_workers=3, max_calls_per_org=4, stream_idle_seconds=3.0
    )
    target = f"127.0.0.1:{running.port}"
    channels = {
        org: grpc.secure_channel(target, channel_credentials(pki.participant_tls(org)))
        for org in ("org-a", "org-b", "org-c")
    }
    admin_channel = grpc.secure_channel(target, channel_credentials(pki.admin_tls()))
    stubs = {org: pb_grpc.ParticipantServiceStub(channel) for org, channel in channels.items()}
    for stub in stubs.values():
        stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=DEADLINE_S)  # active members
    hold = threading.Event()

    def silent() -> Iterator[pb.SubmitUpdateRequest]:
        hold.wait(4 * DEADLINE_S)
        return
        yield  # sends nothing until the test ends

    try:
        # Each slot: the silent upload holding it now. One cut by its idle time before the test
        # saw the budget full (a busy machine) is opened again.
        slots = [org for org in ("org-a", "org-b") for _ in range(4)]
        holding = [
            stubs[org].SubmitUpdate.future(silent(), timeout=4 * DEADLINE_S) for org in slots
        ]
        held = list(holding)

        def exhausted() -> bool:
            for index, call in enumerate(holding):
                if call.done():
                    holding[index] = stubs[slots[index]].SubmitUpdate.future(
                        silent(), timeout=4 * DEADLINE_S
                    )
                    held.append(holding[index])
            try:
                stubs["org-c"].GetServerInfo(pb.GetServerInfoRequest(), timeout=DEADLINE_S)
            except grpc.RpcError as exc:
                full = exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                return full and not any(call.done() for call in holding)
            return False

        # The silent uploads fill every thread organizations may use.
        wait_for(exhausted, DEADLINE_S, "the silent uploads to fill the budget", interval=0.02)
        # Health and the admin API still answer at once, on the reserved threads.
        health = health_pb2_grpc.HealthStub(channels["org-c"])
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        pb_grpc.AdminServiceStub(admin_channel).ListJobs(pb.ListJobsRequest(), timeout=5)
        # Every silent upload is cut after its idle time, and the others get through again.
        codes = {call.exception(timeout=DEADLINE_S).code() for call in held}  # type: ignore[union-attr]
        assert codes <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert grpc.StatusCode.CANCELLED in codes
        stubs["org-c"].GetServerInfo(pb.GetServerInfoRequest(), timeout=DEADLINE_S)
    finally:
        hold.set()
        for channel in (*channels.values(), admin_channel):
            channel.close()


PAYLOAD_BYTES = len(encode_tensors(initial_weights())[1])


@pytest.mark.parametrize(
    "coordinator",
    # One organization's spool budget holds one payload: a second upload in flight must wait.
    [{"max_payload_bytes": PAYLOAD_BYTES, "spool_bytes_per_org": PAYLOAD_BYTES}],
    indirect=True,
)
def test_an_upload_over_the_organizations_spool_budget_is_refused_before_it_is_read(
    coordinator: RunningCoordinator,
    running_round: Callable[..., tuple[str, pb.RoundStatus]],
    participant_stub: Callable[[str], pb_grpc.ParticipantServiceStub],
) -> None:
    job_id, round_ = running_round(orgs=("org-a", "org-b"))
    header, payload = encode_tensors(initial_weights())
    spool = coordinator.service.spool

    def update_header() -> pb.SubmitUpdateRequest:
        return pb.SubmitUpdateRequest(
            header=pb.UpdateHeader(
                job_id=job_id,
                round_id=round_.round_id,
                phase=pb.ROUND_PHASE_INPUTS,
                base_version=round_.base_version,
                num_examples=10,
                train_loss=0.5,
                payload=header_to_proto(header),
            )
        )

    answered = threading.Event()

    def header_only_until_answered() -> Iterator[pb.SubmitUpdateRequest]:
        # The payload is sent only after the answer: a server that waited for it would stall.
        yield update_header()
        answered.wait(DEADLINE_S)
        yield pb.SubmitUpdateRequest(data=payload)

    release = threading.Event()
    half_sent = threading.Event()

    def held_upload() -> Iterator[pb.SubmitUpdateRequest]:
        yield update_header()
        yield pb.SubmitUpdateRequest(data=payload[: len(payload) // 2])
        half_sent.set()
        release.wait(DEADLINE_S)

    stub = participant_stub("org-a")
    held = stub.SubmitUpdate.future(held_upload(), timeout=DEADLINE_S)
    try:
        assert half_sent.wait(DEADLINE_S)
        wait_for(
            lambda: spool.held_bytes("org-a") == PAYLOAD_BYTES,
            DEADLINE_S,
            "the first upload to reach the spool",
            interval=0.02,
        )
        second = stub.SubmitUpdate.future(header_only_until_answered(), timeout=DEADLINE_S)
        try:
            refused = second.exception(timeout=DEADLINE_S)
        finally:
            answered.set()
        assert isinstance(refused, grpc.Call)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "spool budget" in (refused.details() or "")
        assert refused_as_busy(refused.trailing_metadata())  # retried, not given up
        assert len(spool.files()) == 1
        # Another organization's budget is its own.
        other = participant_stub("org-b").SubmitUpdate(
            iter([update_header(), pb.SubmitUpdateRequest(data=payload)]), timeout=DEADLINE_S
        )
        assert not other.duplicate
    finally:
        held.cancel()
        release.set()
    wait_for(
        lambda: spool.held_bytes() == 0,
        DEADLINE_S,
        "the cancelled upload's reservation to be released",
        interval=0.02,
    )
    accepted = stub.SubmitUpdate(
        iter([update_header(), pb.SubmitUpdateRequest(data=payload)]), timeout=DEADLINE_S
    )
    assert not accepted.duplicate
    assert spool.files() == []
