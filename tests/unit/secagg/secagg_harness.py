"""Deterministic randomness, test cohorts and an honest in-memory round driver for secagg tests."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secagg import (
    CohortPolicy,
    ParticipantContext,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    SignedKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.masking.derivation import key_list_digest, unmask_payload
from secagg.primitives.prg import MaskVector, expand
from secagg.primitives.signatures import SigningKey, VerifyingKey, sign

ANY_MAJORITY = CohortPolicy(min_threshold_fraction=Fraction(1, 2), min_cohort=2)
"""A policy accepting every round ``RoundConfig`` allows: for tests of the rest of the protocol."""


class DeterministicRandom:
    """SHA-256 in counter mode over a label: reproducible 'randomness' for tests only."""

    def __init__(self, label: str | bytes | int) -> None:
        self._label = str(label).encode() if not isinstance(label, bytes) else label
        self._counter = 0
        self.drawn = 0

    def __call__(self, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            block = hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            out += block
            self._counter += 1
        self.drawn += count
        return bytes(out[:count])


def org_key(kind: str, label: str) -> SigningKey:
    seed = hashlib.sha256(b"org-key/" + label.encode()).digest()
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return ec.derive_private_key(int.from_bytes(seed, "big") % (2**255), ec.SECP256R1())


class Drop(enum.Enum):
    """When a participant stops answering."""

    NEVER = "never"
    BEFORE_KEYS = "before_keys"  # never advertises keys
    AFTER_KEYS = "after_keys"  # advertised keys, sends no shares
    AFTER_SHARES = "after_shares"  # sent shares, sends no masked input
    AFTER_INPUT = "after_input"  # sent its masked input, does not sign the survivor set
    DURING_UNMASK = "during_unmask"  # signed, does not answer the unmask request


@dataclass
class Cohort:
    config: RoundConfig
    signing_keys: dict[str, SigningKey]
    verifying_keys: dict[str, VerifyingKey]
    key_kind: str = "ed25519"
    clients: dict[str, SecAggClient] = field(default_factory=dict)

    def context(self, member: str, random_label: str = "") -> ParticipantContext:
        return ParticipantContext(
            participant_id=member,
            signing_key=self.signing_keys[member],
            peer_keys={m: k for m, k in self.verifying_keys.items() if m != member},
            random=DeterministicRandom(f"{self.config.round_id}/{member}/{random_label}"),
        )

    def start(self, member: str) -> SecAggClient:
        client = SecAggClient.start(self.config, self.context(member), ANY_MAJORITY)
        self.clients[member] = client
        return client

    def vectors(self, seed: int = 0) -> dict[str, MaskVector]:
        """Deterministic pseudo-random inputs in Z_R, one per member (from the PRG, not numpy)."""
        return {
            member: expand(
                hashlib.sha256(f"input/{seed}/{member}".encode()).digest(),
                self.config.vector_length,
                self.config.modulus_bits,
            )
            for member in self.config.cohort
        }


def make_cohort(
    n: int,
    threshold: int | None = None,
    vector_length: int = 8,
    modulus_bits: int = 32,
    key_kind: str = "ed25519",
    round_id: str = "round-1",
    context: bytes = bytes(32),
) -> Cohort:
    members = tuple(f"org-{index:02d}" for index in range(n))
    config = RoundConfig(
        job_id="job-1",
        round_id=round_id,
        cohort=members,
        threshold=threshold if threshold is not None else n // 2 + 1,
        vector_length=vector_length,
        modulus_bits=modulus_bits,
        context=context,
    )
    signing = {m: org_key(key_kind, m) for m in members}
    verifying = {m: k.public_key() for m, k in signing.items()}
    return Cohort(config, signing, verifying, key_kind)


def plain_sum(vectors: Mapping[str, MaskVector], members: Iterable[str]) -> MaskVector:
    """The oracle: the plaintext sum (mod R) over exactly ``members``."""
    first = next(iter(vectors.values()))
    total = np.zeros(first.size, dtype=first.dtype)
    for member in members:
        total += vectors[member]
    return total


class Stage(enum.IntEnum):
    """The last phase :func:`drive` closes."""

    KEYS = 0
    SHARES = 1
    INPUTS = 2
    CONSISTENCY = 3
    UNMASK = 4


@dataclass
class Driven:
    """An honest server part-way through a round and what it sent to the participants."""

    server: SecAggServer
    keys: tuple[SignedKeys, ...] = ()
    survivors: tuple[str, ...] = ()
    request: UnmaskRequest | None = None


def drive(
    cohort: Cohort,
    inputs: Mapping[str, MaskVector],
    drops: Mapping[str, Drop] | None = None,
    through: Stage = Stage.UNMASK,
    workers: int = 1,
    server: SecAggServer | None = None,
) -> Driven:
    """Run an honest round up to and including ``through``; ``drops`` says who stops when."""
    drops = drops or {}
    config = cohort.config
    if server is None:
        server = SecAggServer(config, verifying_keys=cohort.verifying_keys, workers=workers)
    driven = Driven(server)
    server = driven.server

    def stays(member: str, *stops: Drop) -> bool:
        return drops.get(member, Drop.NEVER) not in stops

    for member in config.cohort:
        if stays(member, Drop.BEFORE_KEYS):
            server.receive_keys(member, cohort.start(member).advertise_keys())
    driven.keys = server.close_keys()
    if through is Stage.KEYS:
        return driven
    for entry in driven.keys:
        if stays(entry.participant, Drop.AFTER_KEYS):
            client = cohort.clients[entry.participant]
            server.receive_shares(entry.participant, client.share_keys(driven.keys))
    server.close_shares()
    if through is Stage.SHARES:
        return driven
    for member, client in cohort.clients.items():
        if stays(member, Drop.AFTER_KEYS, Drop.AFTER_SHARES):
            masked = client.mask_input(server.shares_for(member), inputs[member])
            server.receive_masked_input(member, masked)
    driven.survivors = server.close_inputs()
    if through is Stage.INPUTS:
        return driven
    for member in driven.survivors:
        if stays(member, Drop.AFTER_INPUT):
            signature = cohort.clients[member].sign_survivors(driven.survivors)
            server.receive_consistency(member, signature)
    driven.request = server.close_consistency()
    if through is Stage.CONSISTENCY:
        return driven
    for signature in driven.request.signatures:
        if stays(signature.participant, Drop.DURING_UNMASK):
            response = cohort.clients[signature.participant].unmask(driven.request)
            server.receive_unmask(signature.participant, response)
    return driven


def signed_unmask(
    cohort: Cohort, driven: Driven, response: UnmaskResponse, signer: str | None = None
) -> UnmaskResponse:
    """``response`` signed by ``signer``'s organization key (its sender's by default) for the
    round ``driven`` reached: how a malicious participant signs shares it changed itself."""
    assert driven.request is not None
    payload = unmask_payload(
        cohort.config,
        driven.request.survivors,
        driven.request.dropped,
        key_list_digest(driven.keys),
        response,
    )
    key = cohort.signing_keys[signer or response.participant]
    return replace(response, signature=sign(key, payload))


@dataclass
class RoundResult:
    total: MaskVector
    contributors: tuple[str, ...]
    server: SecAggServer


def run_round(
    cohort: Cohort,
    inputs: Mapping[str, MaskVector],
    drops: Mapping[str, Drop] | None = None,
    workers: int = 1,
) -> RoundResult:
    """A whole honest round; raises NotEnoughSurvivors when fewer than t remain at a phase."""
    driven = drive(cohort, inputs, drops, Stage.UNMASK, workers)
    total = driven.server.finish()
    return RoundResult(total, driven.server.contributors, driven.server)


def expected_survivors(cohort: Cohort, drops: Mapping[str, Drop]) -> list[list[str]]:
    """U1..U5 for honest behaviour under ``drops``."""
    order = [Drop.BEFORE_KEYS, Drop.AFTER_KEYS, Drop.AFTER_SHARES, Drop.AFTER_INPUT]
    order.append(Drop.DURING_UNMASK)
    sets = []
    remaining = list(cohort.config.cohort)
    for stop in order:
        remaining = [m for m in remaining if drops.get(m, Drop.NEVER) is not stop]
        sets.append(remaining)
    return sets
