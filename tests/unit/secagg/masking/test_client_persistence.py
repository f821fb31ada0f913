"""Client state as a JSON-able dict: a restarted participant answers byte-identically (R17)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from secagg_harness import make_cohort, plain_sum

from secagg import (
    ClientPhase,
    InvalidInput,
    ProtocolViolation,
    SecAggClient,
    SecAggServer,
)
from secagg.primitives.encoding import encode_fields

A = "org-00"


def _restart(cohort: Any, workers: int = 1) -> None:
    """Persist A's state through JSON and rebuild it with fresh randomness, as after a crash."""
    data = json.loads(json.dumps(cohort.clients[A].to_dict()))
    context = dataclasses.replace(cohort.context(A, random_label="after-restart"), workers=workers)
    cohort.clients[A] = SecAggClient.restore(data, context)


@pytest.mark.parametrize("restart_after", range(5))
def test_restart_after_every_phase(restart_after: int) -> None:
    cohort = make_cohort(4, 3, vector_length=9)
    inputs = cohort.vectors()
    server = SecAggServer(cohort.config, verifying_keys=cohort.verifying_keys)
    answers: dict[str, bytes] = {}

    for member in cohort.config.cohort:
        server.receive_keys(member, cohort.start(member).advertise_keys())
    answers["keys"] = cohort.clients[A].advertise_keys().to_bytes()
    if restart_after == 0:
        _restart(cohort, workers=2)
    keys = server.close_keys()
    for member, client in cohort.clients.items():
        server.receive_shares(member, client.share_keys(keys))
    answers["shares"] = encode_fields(s.to_bytes() for s in cohort.clients[A].share_keys(keys))
    if restart_after == 1:
        _restart(cohort)
    server.close_shares()
    for member, client in cohort.clients.items():
        server.receive_masked_input(
            member, client.mask_input(server.shares_for(member), inputs[member])
        )
    answers["input"] = (
        cohort.clients[A].mask_input(server.shares_for(A), inputs[A]).vector.tobytes()
    )
    if restart_after == 2:
        _restart(cohort, workers=3)
    survivors = server.close_inputs()
    for member in survivors:
        server.receive_consistency(member, cohort.clients[member].sign_survivors(survivors))
    answers["consistency"] = cohort.clients[A].sign_survivors(survivors).to_bytes()
    if restart_after == 3:
        _restart(cohort)
    request = server.close_consistency()
    for member in survivors:
        server.receive_unmask(member, cohort.clients[member].unmask(request))
    answers["unmask"] = cohort.clients[A].unmask(request).to_bytes()
    if restart_after == 4:
        _restart(cohort)

    # Every answered request, asked again of the restarted participant, gets the same bytes.
    client = cohort.clients[A]
    assert client.advertise_keys().to_bytes() == answers["keys"]
    assert encode_fields(s.to_bytes() for s in client.share_keys(keys)) == answers["shares"]
    assert client.phase is ClientPhase.COMPLETED
    # After round 4 the masking secrets are gone: the input is no longer re-sent.
    with pytest.raises(ProtocolViolation, match="complete"):
        client.mask_input(server.shares_for(A), inputs[A])
    assert client.sign_survivors(survivors).to_bytes() == answers["consistency"]
    assert client.unmask(request).to_bytes() == answers["unmask"]
    assert np.array_equal(server.finish(), plain_sum(inputs, cohort.config.cohort))


def test_masked_input_is_recomputed_identically_after_a_restart() -> None:
    cohort = make_cohort(3, 2, vector_length=17)
    inputs = cohort.vectors()
    server = SecAggServer(cohort.config)
    for member in cohort.config.cohort:
        server.receive_keys(member, cohort.start(member).advertise_keys())
    keys = server.close_keys()
    for member, client in cohort.clients.items():
        server.receive_shares(member, client.share_keys(keys))
    server.close_shares()
    first = cohort.clients[A].mask_input(server.shares_for(A), inputs[A])
    _restart(cohort, workers=2)
    again = cohort.clients[A].mask_input(server.shares_for(A), inputs[A])
    assert again.vector.tobytes() == first.vector.tobytes()
    assert cohort.clients[A].phase is ClientPhase.INPUT_SENT
    with pytest.raises(ProtocolViolation, match="second, different"):
        cohort.clients[A].mask_input(server.shares_for(A), inputs["org-01"])


def test_finished_states_hold_no_secrets() -> None:
    cohort = make_cohort(3, 2)
    client = cohort.start(A)
    assert "masking_private" in client.to_dict()["state"]
    client.abort("test")
    assert client.to_dict()["state"] == {"phase": "aborted", "reason": "test"}
    restored = SecAggClient.restore(client.to_dict(), cohort.context(A))
    assert restored.phase is ClientPhase.ABORTED


def _mutations() -> list[tuple[str, Any]]:
    return [
        ("format", "other/1"),
        ("participant", "org-01"),
        ("advertised", "zz"),
        ("config", {"job_id": "j"}),
        ("state", {"phase": "no-such-phase"}),
        ("state", {"phase": "shares_sent"}),
        ("transcript", {"no-such-request": {"request": "", "answer": ""}}),
        ("transcript", [1]),
    ]


@pytest.mark.parametrize(("field", "value"), _mutations())
def test_malformed_states_are_refused(field: str, value: Any) -> None:
    cohort = make_cohort(3, 2)
    data = copy.deepcopy(cohort.start(A).to_dict())
    data[field] = value
    with pytest.raises(InvalidInput):
        SecAggClient.restore(data, cohort.context(A))


def test_restore_checks_workers_and_missing_fields() -> None:
    cohort = make_cohort(3, 2)
    data = cohort.start(A).to_dict()
    with pytest.raises(InvalidInput, match="workers"):
        SecAggClient.restore(data, dataclasses.replace(cohort.context(A), workers=0))
    with pytest.raises(InvalidInput, match="malformed client state: KeyError"):
        SecAggClient.restore({k: v for k, v in data.items() if k != "state"}, cohort.context(A))
