"""A server that hands one participant a different round context gets no round past SHARES."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from secagg_harness import ANY_MAJORITY, make_cohort

from secagg import ClientPhase, InvalidSignature, SecAggClient, SecAggServer, SignedKeys

HONEST = hashlib.sha256(b"the job's settings").digest()
ISOLATING = hashlib.sha256(b"the same settings but another learning rate").digest()


def _keys(
    cohort_size: int, odd_one: str | None
) -> tuple[dict[str, SecAggClient], list[SignedKeys]]:
    cohort = make_cohort(cohort_size, context=HONEST)
    clients: dict[str, SecAggClient] = {}
    for member in cohort.config.cohort:
        config = cohort.config
        if member == odd_one:
            config = dataclasses.replace(config, context=ISOLATING)
        clients[member] = SecAggClient.start(config, cohort.context(member), ANY_MAJORITY)
    # The malicious server routes every advertised key unchanged; it checks nothing itself.
    return clients, [clients[m].advertise_keys() for m in cohort.config.cohort]


def test_the_same_context_completes_the_keys_round() -> None:
    clients, keys = _keys(3, odd_one=None)
    for client in clients.values():
        client.share_keys(keys)
        assert client.phase is ClientPhase.SHARES_SENT


def test_one_participant_with_another_context_makes_every_participant_abort_at_shares() -> None:
    clients, keys = _keys(3, odd_one="org-02")
    for member, client in clients.items():
        # Each honest participant sees the odd one's keys (and the odd one sees everyone's) as
        # signed for another round config: nobody sends a share.
        with pytest.raises(InvalidSignature):
            client.share_keys(keys)
        assert client.phase is ClientPhase.ABORTED, member


def test_the_honest_server_refuses_keys_signed_for_another_context() -> None:
    cohort = make_cohort(3, context=HONEST)
    odd = dataclasses.replace(cohort.config, context=ISOLATING)
    server = SecAggServer(cohort.config, verifying_keys=cohort.verifying_keys)
    keys = SecAggClient.start(odd, cohort.context("org-00"), ANY_MAJORITY).advertise_keys()
    with pytest.raises(InvalidSignature):
        server.receive_keys("org-00", keys)
