"""One secure round over virtual organizations: secagg's client and server, without a network.

Every virtual organization runs ``secagg.SecAggClient`` through the four phases of a round
(docs/secagg.md) and one ``secagg.SecAggServer`` stands for the coordinator, so the masking, key
agreement, secret sharing and unmasking are the library code the daemons run. What each
organization puts in is what a participant daemon computes (``participant/service/
secure_rounds.py``): its trained-minus-base delta in float64, flattened, clipped and privatized
under differential privacy (weight 1), else weighted by its example count capped at
``max_weight``, and quantized with the job's ``QuantizationSpec``. The result is what the
coordinator computes when it unmasks (``coordinator/service/engines/secure_rounds.py``): the
dequantized mean delta added to the base weights in float64, then cast to float32.

Under ``paillier`` each masked input is also packed and encrypted under one Paillier key, the
ciphertexts are summed homomorphically, and the decrypted sums plus the mask correction give the
same aggregate (docs/paillier.md, "In the service: models of a paillier job"). The key ceremony,
the version chain and the input tags are not simulated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedsilo.codec import specs_of, tensors_sha256
from fedsilo.paillier_versions import round_key_fingerprint
from fedsilo.privacy import DifferentialPrivacy, privatize_update
from fedsilo.protection import Protection, SecAggParameters, flatten, round_context, unflatten
from fedsilo.tasks import TrainingSettings, TrainResult
from secagg import (
    CohortPolicy,
    MaskedInput,
    ParticipantContext,
    RandomSource,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    SigningKey,
    VerifyingKey,
)
from secagg.paillier import (
    PackingLayout,
    PaillierPrivateKey,
    add_ciphertexts,
    decrypt_vector,
    encrypt_vector,
    generate_private_key,
)

__all__ = ["RoundJob", "SecureRoundResult", "VirtualOrganizations", "secure_round"]

Weights = list[npt.NDArray[Any]]
Train = Callable[[str, Weights], TrainResult]
"""Trains one organization (by id) from a copy of the given base weights."""


class VirtualOrganizations:
    """The organizations' ids and signing keys; under paillier also the job's one key."""

    def __init__(self, count: int, *, paillier_key_bits: int | None = None) -> None:
        width = len(str(count - 1))
        self.ids: tuple[str, ...] = tuple(f"org-{index:0{width}d}" for index in range(count))
        self._signing: dict[str, SigningKey] = {
            org: ed25519.Ed25519PrivateKey.generate() for org in self.ids
        }
        self.verifying: dict[str, VerifyingKey] = {
            org: key.public_key() for org, key in self._signing.items()
        }
        self.paillier_key: PaillierPrivateKey | None = (
            generate_private_key(paillier_key_bits) if paillier_key_bits is not None else None
        )

    def context(self, org: str) -> ParticipantContext:
        return ParticipantContext(
            participant_id=org,
            signing_key=self._signing[org],
            peer_keys={peer: key for peer, key in self.verifying.items() if peer != org},
            random=os.urandom,
        )


@dataclass(frozen=True)
class RoundJob:
    """What a round context binds, from the simulated job (``fedsilo.protection.round_context``)."""

    job_id: str
    task_name: str
    algorithm: str
    training: TrainingSettings
    min_participants: int
    dp: DifferentialPrivacy


@dataclass(frozen=True)
class SecureRoundResult:
    """The round's next model (before any server step) and who contributed."""

    weights: list[npt.NDArray[np.float32]]
    contributors: tuple[str, ...]
    total_weight: int


def secure_round(
    *,
    protection: Protection,
    organizations: VirtualOrganizations,
    cohort: Sequence[str],
    dropouts: Sequence[str],
    parameters: SecAggParameters,
    job: RoundJob,
    round_number: int,
    base: Weights,
    train: Train,
    noise: Mapping[str, RandomSource],
) -> SecureRoundResult:
    """Run one round: every member of ``cohort`` advertises keys and shares them; members of
    ``dropouts`` then stop (they send no masked input); the rest train and send masked inputs."""
    if protection is Protection.NONE:
        raise ValueError("a secure round needs protection secagg or paillier")
    members = tuple(sorted(cohort))
    # A paillier round binds the job key, as the daemons do (the simulation has one generation).
    key_fingerprint = (
        round_key_fingerprint(job.job_id, 0, _paillier_key(organizations).public_key)
        if protection is Protection.PAILLIER
        else b""
    )
    config = RoundConfig(
        job_id=job.job_id,
        round_id=f"{job.job_id}-round-{round_number}",
        cohort=members,
        threshold=parameters.threshold,
        vector_length=parameters.vector_length,
        modulus_bits=parameters.modulus_bits,
        context=round_context(
            protection=protection,
            job_id=job.job_id,
            round_number=round_number,
            task_name=job.task_name,
            algorithm=job.algorithm,
            base_version=round_number - 1,
            base_model_sha256=tensors_sha256(base),
            training=job.training,
            parameters=parameters,
            min_participants=job.min_participants,
            paillier_key_fingerprint=key_fingerprint,
            dp=job.dp,
        ),
    )
    quantization = parameters.quantization()
    server = SecAggServer(config, verifying_keys=organizations.verifying)
    clients = {
        org: SecAggClient.start(config, organizations.context(org), CohortPolicy())
        for org in members
    }
    # Round 0 (AdvertiseKeys) and round 1 (ShareKeys).
    for org, client in clients.items():
        server.receive_keys(org, client.advertise_keys())
    keys = server.close_keys()
    for org, client in clients.items():
        server.receive_shares(org, client.share_keys(keys))
    server.close_shares()
    # Round 2 (MaskedInputCollection): the survivors train and send masked inputs.
    senders = [org for org in members if org not in set(dropouts)]
    encrypted = []
    layout = _layout(organizations, parameters)
    for org in senders:
        trained = train(org, base)
        update = flatten(_delta(base, trained.weights))
        if job.dp.enabled:
            update = privatize_update(update, job.dp, parameters.threshold, noise[org])
            weight = 1
        else:
            weight = min(trained.num_examples, parameters.max_weight)
        masked = clients[org].mask_input(
            server.shares_for(org), quantization.quantize(update, weight)
        )
        if layout is not None:
            key = _paillier_key(organizations)
            encrypted.append(encrypt_vector(key.public_key, layout, masked.vector))
            # The coordinator of a paillier job sums ciphertexts; its sum of masked words is
            # never formed, so the server adds zeros and only removes masks (the correction).
            masked = MaskedInput(org, np.zeros_like(masked.vector))
        server.receive_masked_input(org, masked)
    survivors = server.close_inputs()
    # Round 3 (ConsistencyCheck) and round 4 (Unmasking).
    for org in survivors:
        server.receive_consistency(org, clients[org].sign_survivors(survivors))
    request = server.close_consistency()
    for org in survivors:
        server.receive_unmask(org, clients[org].unmask(request))
    total = server.finish()
    if layout is not None:
        key = _paillier_key(organizations)
        sums = decrypt_vector(key, add_ciphertexts(key.public_key, encrypted))
        # uint64 wraps modulo 2^64 and narrowing to uint<k> reduces modulo R.
        total = (sums + total.astype(np.uint64)).astype(total.dtype)
    mean = quantization.dequantize(total)
    quantization.check_in_range(mean, len(survivors))
    delta = unflatten(mean.mean, specs_of(base), dtype="float64")
    weights = [
        (np.asarray(b, dtype=np.float64) + d).astype(np.float32)
        for b, d in zip(base, delta, strict=True)
    ]
    return SecureRoundResult(weights, survivors, mean.total_weight)


def _layout(
    organizations: VirtualOrganizations, parameters: SecAggParameters
) -> PackingLayout | None:
    if organizations.paillier_key is None:
        return None
    return PackingLayout(
        parameters.modulus_bits,
        parameters.max_participants,
        organizations.paillier_key.public_key.bits,
    )


def _paillier_key(organizations: VirtualOrganizations) -> PaillierPrivateKey:
    if organizations.paillier_key is None:
        raise ValueError("a paillier round needs the job's key")
    return organizations.paillier_key


def _delta(base: Weights, trained: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[np.float64]]:
    """Trained minus base weights, tensor by tensor, in float64 (as a participant computes it)."""
    return [
        np.asarray(t, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        for b, t in zip(base, trained, strict=True)
    ]
