"""CoordinatorClient's secure-aggregation calls and task parsing, against an in-memory stub."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from fedsilo.protection import Protection, SecAggParameters
from fedsilo.v1 import fedsilo_pb2 as pb
from participant.domain.assignments import (
    AdvertisedKeys,
    Assignment,
    AssignmentKind,
    EndedRound,
    KeyCeremonyStepData,
)
from participant.transport.client import Backoff, CoordinatorClient

PARAMETERS = pb.SecAggParameters(
    threshold=2,
    modulus_bits=32,
    vector_length=651,
    cohort=["org-b", "org-a", "org-c"],
    clip=0.25,
    levels_bits=16,
    max_participants=8,
    max_weight=1000,
)


class _Future:
    def __init__(self, response: pb.GetTaskResponse) -> None:
        self._response = response

    def result(self, timeout: float) -> pb.GetTaskResponse:
        return self._response

    def cancel(self) -> None:
        pass


def _client(response: pb.GetTaskResponse) -> tuple[CoordinatorClient, list[Any]]:
    requests: list[Any] = []

    def get_task(request: pb.GetTaskRequest, timeout: float) -> _Future:
        requests.append(request)
        return _Future(response)

    def submit_message(request: pb.SubmitMessageRequest, timeout: float) -> Any:
        requests.append(request)
        return pb.SubmitUpdateResponse(acknowledgement_id="ack-1", duplicate=True)

    stub = SimpleNamespace(
        GetTask=SimpleNamespace(future=get_task),
        SubmitMessage=submit_message,
        SubmitCeremony=submit_message,
    )
    client = CoordinatorClient(None, 5.0, Backoff(0.01, 0.02), threading.Event())  # type: ignore[arg-type]
    client._stub = lambda: stub  # type: ignore[method-assign]
    return client, requests


def _step_response(kind: int, phase: int, **secagg: Any) -> pb.GetTaskResponse:
    return pb.GetTaskResponse(
        kind=kind,
        job_id="job-1",
        task_name="digits-linear",
        round_id="round-1",
        round_number=4,
        phase=phase,
        model_version=3,
        protection=pb.PROTECTION_SECAGG,
        secagg=pb.SecAggStep(parameters=PARAMETERS, **secagg),
    )


def test_get_assignment_reports_held_rounds_and_returns_the_ended_ones() -> None:
    response = pb.GetTaskResponse(
        kind=pb.TASK_KIND_WAIT,
        finished_rounds=[
            pb.RoundOutcome(round_id="r1", phase=pb.ROUND_PHASE_COMMITTED),
            pb.RoundOutcome(round_id="r2", phase=pb.ROUND_PHASE_ABORTED, reason="quorum lost"),
        ],
    )
    client, requests = _client(response)

    reply = client.get_assignment(1.5, ["r1", "r2", "r3"])

    assert list(requests[0].held_round_ids) == ["r1", "r2", "r3"]
    assert requests[0].wait_seconds == 1.5
    assert reply.assignment == Assignment(AssignmentKind.WAIT)
    assert reply.finished_rounds == (
        EndedRound("r1", committed=True, reason=""),
        EndedRound("r2", committed=False, reason="quorum lost"),
    )


def test_a_shares_step_carries_parameters_and_certified_keys() -> None:
    keys = [pb.AdvertisedKeys(signed_keys=b"keys-a", certificate_pem=b"pem-a")]
    client, _ = _client(_step_response(pb.TASK_KIND_SECAGG_STEP, pb.ROUND_PHASE_SHARES, keys=keys))

    assignment = client.get_assignment(1.0).assignment

    assert assignment.kind is AssignmentKind.SECAGG_STEP
    assert assignment.phase == "shares" and assignment.protection is Protection.SECAGG
    assert assignment.secagg is not None
    assert assignment.secagg.parameters == SecAggParameters(
        threshold=2,
        modulus_bits=32,
        vector_length=651,
        cohort=("org-b", "org-a", "org-c"),
        clip=0.25,
        levels_bits=16,
        max_participants=8,
        max_weight=1000,
    )
    assert assignment.secagg.keys == (AdvertisedKeys(b"keys-a", b"pem-a"),)


def test_the_inputs_step_is_a_train_task_with_its_shares() -> None:
    response = _step_response(pb.TASK_KIND_TRAIN, pb.ROUND_PHASE_INPUTS, shares=[b"s1", b"s2"])
    client, _ = _client(response)

    assignment = client.get_assignment(1.0).assignment

    assert assignment.kind is AssignmentKind.TRAIN and assignment.phase == "inputs"
    assert assignment.model_version == 3 and assignment.round_number == 4
    assert assignment.secagg is not None and assignment.secagg.shares == (b"s1", b"s2")


def test_consistency_and_unmask_steps_carry_their_requests() -> None:
    client, _ = _client(
        _step_response(pb.TASK_KIND_SECAGG_STEP, pb.ROUND_PHASE_CONSISTENCY, survivors=["a", "b"])
    )
    step = client.get_assignment(1.0).assignment.secagg
    assert step is not None and step.survivors == ("a", "b")

    client, _ = _client(
        _step_response(pb.TASK_KIND_SECAGG_STEP, pb.ROUND_PHASE_UNMASK, unmask_request=b"req")
    )
    step = client.get_assignment(1.0).assignment.secagg
    assert step is not None and step.unmask_request == b"req"


def test_a_secure_task_without_parameters_is_an_error() -> None:
    response = _step_response(pb.TASK_KIND_SECAGG_STEP, pb.ROUND_PHASE_KEYS)
    response.ClearField("secagg")
    client, _ = _client(response)
    with pytest.raises(ValueError, match="without its parameters"):
        client.get_assignment(1.0)


@pytest.mark.parametrize("protection", [pb.PROTECTION_UNSPECIFIED, pb.PROTECTION_NONE])
def test_a_plain_train_task_has_no_secure_step(protection: int) -> None:
    response = pb.GetTaskResponse(
        kind=pb.TASK_KIND_TRAIN, job_id="j", round_id="r", phase=pb.ROUND_PHASE_INPUTS
    )
    response.protection = protection  # type: ignore[assignment]
    client, _ = _client(response)

    assignment = client.get_assignment(1.0).assignment

    assert assignment.protection is Protection.NONE and assignment.secagg is None


def test_submit_message_sends_the_phase_and_body() -> None:
    client, requests = _client(pb.GetTaskResponse())
    assignment = Assignment(
        AssignmentKind.SECAGG_STEP, job_id="job-1", round_id="round-1", phase="consistency"
    )

    receipt = client.submit_message(assignment, b"signature")

    assert requests == [
        pb.SubmitMessageRequest(
            job_id="job-1", round_id="round-1", phase=pb.ROUND_PHASE_CONSISTENCY, body=b"signature"
        )
    ]
    assert receipt.acknowledgement_id == "ack-1" and receipt.duplicate


def test_a_key_ceremony_step_carries_the_job_keys_and_the_job_settings() -> None:
    response = pb.GetTaskResponse(
        kind=pb.TASK_KIND_KEY_CEREMONY,
        job_id="job-1",
        task_name="digits-linear",
        protection=pb.PROTECTION_PAILLIER,
        ceremony=pb.KeyCeremonyStep(
            action="receive",
            dealer="org-a",
            key_bits=3072,
            job_keys=[pb.AdvertisedKeys(signed_keys=b"job-key-a", certificate_pem=b"pem-a")],
            dealt_key=b"dealt",
            dealer_certificate_pem=b"pem-dealer",
            sealed_key=b"sealed",
            parameters=PARAMETERS,
        ),
    )
    client, _ = _client(response)

    assignment = client.get_assignment(1.0).assignment

    assert assignment.kind is AssignmentKind.KEY_CEREMONY
    assert assignment.job_id == "job-1" and assignment.protection is Protection.PAILLIER
    assert assignment.round_id == "" and assignment.secagg is None
    assert assignment.ceremony == KeyCeremonyStepData(
        action="receive",
        dealer="org-a",
        key_bits=3072,
        job_keys=(AdvertisedKeys(b"job-key-a", b"pem-a"),),
        dealt_key=b"dealt",
        dealer_certificate_pem=b"pem-dealer",
        sealed_key=b"sealed",
        parameters=SecAggParameters(
            threshold=2,
            modulus_bits=32,
            vector_length=651,
            cohort=("org-b", "org-a", "org-c"),
            clip=0.25,
            levels_bits=16,
            max_participants=8,
            max_weight=1000,
        ),
    )


def test_a_key_ceremony_task_without_its_step_is_an_error() -> None:
    client, _ = _client(pb.GetTaskResponse(kind=pb.TASK_KIND_KEY_CEREMONY, job_id="job-1"))
    with pytest.raises(ValueError, match="without its step"):
        client.get_assignment(1.0)


def test_a_paillier_inputs_step_carries_its_shares() -> None:
    response = _step_response(pb.TASK_KIND_TRAIN, pb.ROUND_PHASE_INPUTS, shares=[b"s1"])
    response.protection = pb.PROTECTION_PAILLIER
    client, _ = _client(response)

    assignment = client.get_assignment(1.0).assignment

    assert assignment.protection is Protection.PAILLIER
    assert assignment.secagg is not None and assignment.secagg.shares == (b"s1",)


def test_submit_ceremony_sends_the_job_action_and_body() -> None:
    client, requests = _client(pb.GetTaskResponse())

    receipt = client.submit_ceremony("job-1", "confirm", b"fingerprint")

    assert requests == [
        pb.SubmitCeremonyRequest(job_id="job-1", action="confirm", body=b"fingerprint")
    ]
    assert receipt.acknowledgement_id == "ack-1" and receipt.duplicate
