"""This participant's paillier jobs: the key it holds, its encrypted inputs, the global models.

Under ``paillier`` protection the coordinator never holds a model after version 0 in the clear
(docs/paillier.md, "In the service: models of a paillier job"). Version ``v >= 1`` is served as
two tensors: the summed ciphertexts of round ``v``'s masked inputs (``PaillierCiphertexts``
bytes) and the mask correction ``C``. A participant decrypts the sums ``S``, takes
``(S + C) mod R``, dequantizes the weighted mean delta and adds it to version ``v - 1``: that
is the mean model, the next version under FedAvg. A strategy with a server step (FedAdam, ...)
makes version ``v`` from version ``v - 1`` and that mean here, at every organization, with the
optimizer state of version ``v - 1`` (docs/strategies.md): the step is deterministic, so every
organization rebuilds the same bits. It rebuilds any version from version 0 by applying
versions ``1..v`` in order, and keeps each version it rebuilt and its optimizer state
(:class:`PaillierStateStore`), so each is decrypted once; a version whose summed ciphertexts
are exactly the product this participant decrypted when it vetted the round's inputs is built
from that decryption (:meth:`PaillierJobs.remember_sum`).

Each version says which key generation it is under (docs/paillier.md, "Key rotation"): it is
decrypted and its tag checked with that generation's key, the current one or one retired by a
rotation (kept read-only for this), and the generations along the chain never go back.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from fedsilo.codec import PayloadHeader, TensorSpec, encode_tensors, specs_of, tensors_sha256
from fedsilo.logs import context
from fedsilo.paillier_inputs import DecryptedSum
from fedsilo.paillier_versions import (
    PaillierVersion,
    replay_correction,
    round_key_fingerprint,
    tag_binding,
)
from fedsilo.pki import PeerCertificateError, Role, verify_peer_certificate
from fedsilo.protection import SecAggParameters, unflatten
from fedsilo.strategies import (
    OptimizerState,
    ServerStrategy,
    StrategyChoice,
    StrategyError,
    apply_server_step,
)
from participant.errors import ModelUnavailable, PaillierStateUnreadable, ParticipantError
from participant.service.calls import ModelCalls
from participant.service.identity import OrgIdentity, utc_now
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore, log_refused_member
from participant.service.paillier_state import (
    OutgoingMessage,
    PaillierJobState,
    PaillierStateStore,
    RetiredKey,
    known_key_holders,
)
from secagg import ProtocolViolation, QuantizationSpec, RandomSource, SecAggError
from secagg.paillier import (
    PackingLayout,
    PaillierCiphertexts,
    PaillierPrivateKey,
    PaillierPublicKey,
    PaillierWorkers,
    check_ciphertexts,
    decrypt_integers,
    encrypt_integers,
    input_tag,
    tag_matches,
)

__all__ = ["MalformedAggregate", "PaillierJobs", "VersionRefused", "job_parameters"]

log = logging.getLogger("participant")

Weights = list[npt.NDArray[Any]]

_KEPT_SUMS = 4
"""How many vetted sums are kept in memory: those of the last rounds, whose versions come next."""


class VersionRefused(ModelUnavailable):
    """A served model version failed verification: the job is stopped here for good."""


class MalformedAggregate(ModelUnavailable):
    """An authenticated version (the round's correction, count and tag all verified) whose
    decrypted sum is no aggregate of well-formed inputs: a contributor of the round sent a
    malformed or out-of-range input. Refused, but not held against the coordinator."""


def job_parameters(parameters: SecAggParameters) -> SecAggParameters:
    """A job's quantization settings: the round's parameters without the per-round fields."""
    return replace(parameters, threshold=0, vector_length=0, cohort=())


class PaillierJobs:
    """Keys, encrypted inputs and decrypted models of this organization's paillier jobs.

    ``workers`` is the process pool for encryption and decryption (one for the daemon's
    lifetime; :meth:`close` stops it); None runs small batches here and large ones on a
    temporary pool. ``identity`` gives the consortium CA that the certificates in a version's
    transcript are checked against; without it no version after 0 is decrypted. ``membership``
    is the consortium's membership list, which every organization in a version's transcript
    must be admitted by (None: the certificates are checked against the CA only). ``ledger``
    is this organization's record of the rounds it started: a version of a round it started
    after leaving a key generation is refused under that generation's key.
    """

    def __init__(
        self,
        store: PaillierStateStore,
        client: ModelCalls,
        *,
        identity: Callable[[], OrgIdentity] | None = None,
        membership: MembershipStore | None = None,
        ledger: ContributionLedger | None = None,
        workers: PaillierWorkers | None = None,
        random: RandomSource = os.urandom,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._store = store
        self._client = client
        self._identity = identity
        self._membership = membership
        self._ledger = ledger
        self._workers = workers
        self._random = random
        self._clock = clock
        self._keys: dict[tuple[str, int], PaillierPrivateKey] = {}
        self._new_stops = False
        # What the last vetted product of a round's inputs decrypted to (remember_sum), by job,
        # round and key generation; used only for exactly that product.
        self._sums: OrderedDict[tuple[str, str, int], DecryptedSum] = OrderedDict()
        self._sums_lock = threading.Lock()

    @property
    def store(self) -> PaillierStateStore:
        return self._store

    @property
    def workers(self) -> PaillierWorkers | None:
        """The process pool for encryption and decryption (None: small batches run here)."""
        return self._workers

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._workers is not None:
            self._workers.close()

    def is_paillier_job(self, job_id: str) -> bool:
        """Whether this participant took part in the job's key ceremony (it keeps state for it).

        Such a job's rounds are answered only under paillier protection: a coordinator that
        offered one with weaker protection would see the update or the aggregate.
        """
        try:
            return self._store.load(job_id) is not None
        except PaillierStateUnreadable:
            return True

    def private_key(self, job_id: str) -> PaillierPrivateKey | None:
        """The job's current Paillier private key, None if this participant does not hold it."""
        state = self._store.load(job_id)
        if state is None:
            return None
        return self._generation_key(job_id, state, state.generation)

    def key_fingerprint(self, job_id: str) -> bytes:
        """What a round of the job binds of its current key into the round context
        (``fedsilo.paillier_versions.round_key_fingerprint``); empty if no key is held here
        (such a round is refused by :meth:`check_round`)."""
        try:
            state = self._store.load(job_id)
            key = None if state is None else self._generation_key(job_id, state, state.generation)
        except (PaillierStateUnreadable, SecAggError):
            return b""
        if state is None or key is None:
            return b""
        return round_key_fingerprint(job_id, state.generation, key.public_key)

    def generation(self, job_id: str) -> int:
        """The job's key generation this participant is at (0 for an unknown job)."""
        state = self._store.load(job_id)
        return 0 if state is None else state.generation

    def _generation_key(
        self, job_id: str, state: PaillierJobState, generation: int
    ) -> PaillierPrivateKey | None:
        """The key of one generation: the current one or a retired one; None if not held."""
        cached = self._keys.get((job_id, generation))
        if cached is not None:
            return cached
        if generation == state.generation:
            encoded = state.private_key
        else:
            encoded = next(
                (item.private_key for item in state.retired if item.generation == generation), b""
            )
        if not encoded:
            return None
        key = PaillierPrivateKey.from_bytes(encoded)
        self._keys[job_id, generation] = key
        return key

    def key_holders(self, job_id: str) -> frozenset[str]:
        """Everyone this participant knows holds the job's key (none for an unknown job)."""
        state = self._store.load(job_id)
        return frozenset() if state is None else known_key_holders(state)

    def record_key_holders(self, job_id: str, holders: Iterable[str]) -> None:
        """Remember more organizations that hold the job's key (a round's cohort)."""
        state = self._store.load(job_id)
        if state is None or set(holders) <= state.key_holders:
            return
        self._store.save(job_id, replace(state, key_holders=state.key_holders | set(holders)))

    # -- rounds ---------------------------------------------------------------------------------

    def check_round(
        self, job_id: str, parameters: SecAggParameters, strategy: StrategyChoice
    ) -> None:
        """Before a paillier round's keys are sent: this participant holds the job's key, and
        the round's quantization settings and strategy are the job's (the model chain decodes
        and steps with them).

        Raises secagg's ProtocolViolation (the round is refused) otherwise.
        """
        try:
            state = self._store.load(job_id)
            key = self.private_key(job_id)
        except (PaillierStateUnreadable, SecAggError):
            raise ProtocolViolation(
                "the stored paillier state of this job is unusable: this participant cannot "
                "take part in its rounds"
            ) from None
        if state is None or key is None:
            raise ProtocolViolation(
                "this participant holds no Paillier key for the job (its key ceremony did not "
                "complete here)"
            )
        if state.stopped:
            raise ProtocolViolation(_stopped_message(state))
        wanted = job_parameters(parameters)
        if state.parameters is None:
            state = replace(state, parameters=wanted)
            self._store.save(job_id, state)
        elif state.parameters != wanted:
            raise ProtocolViolation(
                "the round's quantization settings differ from those of the job's key ceremony"
            )
        self._record_strategy(job_id, state, strategy)
        PackingLayout(parameters.modulus_bits, parameters.max_participants, key.public_key.bits)

    def _record_strategy(
        self, job_id: str, state: PaillierJobState, strategy: StrategyChoice
    ) -> None:
        """Keep the job's strategy as first received; refuse one that names another.

        Every organization steps the model chain with it: a coordinator that handed
        organizations different strategies would split them onto different models.
        """
        if state.strategy is None:
            try:
                strategy.load()
            except StrategyError as exc:
                raise ProtocolViolation(f"the job's strategy is unusable here: {exc}") from None
            self._store.save(job_id, replace(state, strategy=strategy))
        elif state.strategy != strategy:
            raise ProtocolViolation("the round's strategy differs from the one this job began with")

    def encrypt_input(
        self,
        job_id: str,
        parameters: SecAggParameters,
        masked: npt.NDArray[Any],
        binding: bytes,
    ) -> tuple[PayloadHeader, bytes]:
        """The masked input ``y``, packed and encrypted, and its tag under ``binding``
        (``fedsilo.paillier_versions.tag_binding``): two uint8 tensors on the wire."""
        key = self.private_key(job_id)
        if key is None:
            raise ProtocolViolation("this participant holds no Paillier key for the job")
        state = self._store.load(job_id)
        if state is not None and state.stopped:
            raise ProtocolViolation(_stopped_message(state))
        public = key.public_key
        layout = PackingLayout(parameters.modulus_bits, parameters.max_participants, public.bits)
        plaintexts = layout.pack(masked)
        tag = input_tag(key, binding, plaintexts)
        encrypted = encrypt_integers(
            public, [*plaintexts, tag], random=self._random, workers=self._workers
        )
        ciphertexts = PaillierCiphertexts(
            public.fingerprint, layout, 1, int(masked.size), tuple(encrypted[:-1])
        )
        data = np.frombuffer(ciphertexts.to_bytes(), dtype=np.uint8)
        tag_bytes = encrypted[-1].to_bytes(public.ciphertext_bytes, "big")
        return encode_tensors([data, np.frombuffer(tag_bytes, dtype=np.uint8)])

    def remember_sum(
        self, job_id: str, round_id: str, generation: int, decrypted: DecryptedSum
    ) -> None:
        """Keep, in memory, what the product of a round's signed inputs decrypted to when this
        participant vetted them at CONSISTENCY (``paillier_vetting.vet_inputs``).

        When the round's version carries exactly that product (ciphertexts and tag), building
        the version uses these plaintexts instead of decrypting the same ciphertexts again; every
        check of the version runs as before. Only the last few sums are kept; after a restart,
        or for any other product, the version is decrypted.
        """
        key = (job_id, round_id, generation)
        with self._sums_lock:
            self._sums[key] = decrypted
            self._sums.move_to_end(key)
            while len(self._sums) > _KEPT_SUMS:
                self._sums.popitem(last=False)

    def _remembered_sum(
        self,
        job_id: str,
        round_id: str,
        generation: int,
        summed: PaillierCiphertexts,
        tag: int,
    ) -> DecryptedSum | None:
        """The remembered decryption of exactly ``summed`` and ``tag``, if there is one."""
        with self._sums_lock:
            found = self._sums.get((job_id, round_id, generation))
        # The very ciphertexts, not only their digest: the plaintexts are theirs and no other's.
        if found is None or found.ciphertexts != summed or found.tag != tag:
            return None
        return found

    # -- models ---------------------------------------------------------------------------------

    def model(
        self, job_id: str, version: int, strategy: StrategyChoice | None = None
    ) -> tuple[int, Weights]:
        """Global model ``version`` (-1: the latest) of a paillier job, rebuilt as needed.

        ``strategy`` is the job's strategy from an assignment (recorded if this participant has
        none yet, refused if it differs); the chain is rebuilt with the recorded one.
        """
        server = self._strategy(job_id, strategy)
        self._check_not_stopped(job_id, version)
        latest: tuple[int, Weights] | None = None
        if version < 0:
            latest = self._download(job_id, -1)
            version = latest[0]
        kept = self._store.load_model(job_id, version)
        if kept is not None:
            return version, kept
        base_version, weights, optimizer = self._start_of_chain(job_id, version, server)
        if base_version == version:
            return version, weights
        spec = self._spec(job_id)
        # Every version has the shapes of version 0.
        specs = specs_of(weights)
        # The inputs of round v were tagged for the bytes of version v - 1 their makers served.
        base_served = self._store.served_digest(job_id, base_version)
        if base_served is None:
            raise ModelUnavailable(
                f"version {base_version} was kept without the digest of its served bytes"
            )
        base_generation = self._store.version_generation(job_id, base_version)
        for current in range(base_version + 1, version + 1):
            if latest is not None and latest[0] == current:
                tensors = latest[1]
            else:
                tensors = self._download(job_id, current)[1]
            served = tensors_sha256(tensors)
            try:
                mean, base_generation = self._apply(
                    job_id, current, spec, specs, weights, tensors, base_served, base_generation
                )
            except VersionRefused as exc:
                self._stop(job_id, current, str(exc))
                raise
            except MalformedAggregate as exc:
                log.error("%s", exc, **context(job=job_id))
                raise
            if server.updates_server_model:
                try:
                    weights, optimizer = apply_server_step(server, weights, mean, optimizer)
                except StrategyError as exc:
                    raise ModelUnavailable(f"version {current}: {exc}") from None
                # The state first: a kept model without its state is not a start of chain.
                self._store.save_optimizer_state(job_id, current, optimizer)
            else:
                weights = mean
            self._store.save_model(job_id, current, weights, served, base_generation)
            base_served = served
        return version, weights

    def take_new_stops(self) -> bool:
        """Whether a job was stopped since the last call (its report waits in the outbox)."""
        new, self._new_stops = self._new_stops, False
        return new

    def stopped(self, job_id: str) -> str:
        """Why this participant stopped serving the job for good ("" if it did not)."""
        try:
            state = self._store.load(job_id)
        except PaillierStateUnreadable:
            return ""
        return "" if state is None or not state.stopped else _stopped_message(state)

    def _check_not_stopped(self, job_id: str, version: int) -> None:
        """A stopped job serves only the versions it verified before the refused one."""
        try:
            state = self._store.load(job_id)
        except PaillierStateUnreadable:
            return
        if state is None or not state.stopped:
            return
        if 0 <= version < state.stopped_version and self._store.load_model(job_id, version):
            return
        raise ModelUnavailable(_stopped_message(state))

    def _stop(self, job_id: str, version: int, reason: str) -> None:
        """Record for good that ``version`` failed verification, before anything else happens:
        a coordinator that watched accept or refuse gets one answer per job, never a second."""
        state = self._store.load(job_id)
        if state is None:
            return
        if not state.stopped:
            # The coordinator is told (a ``stopped`` ceremony message from the job's outbox,
            # sent by the daemon's next poll and again after a restart until acknowledged), so
            # the admin sees the reason in the job's status.
            report = OutgoingMessage("stopped", reason.encode())
            state = replace(
                state,
                stopped=reason,
                stopped_version=version,
                outbox=(*state.outbox, report),
            )
            self._store.save(job_id, state)
            self._new_stops = True
        log.error(
            "stopped serving job %s for good: model version %d failed verification: %s",
            job_id,
            version,
            reason,
            **context(job=job_id),
        )

    def served_digest(self, job_id: str, version: int) -> bytes | None:
        """The digest of the bytes the coordinator served for a kept version (its ciphertexts,
        or version 0), recorded when it was rebuilt; None if it was kept without one."""
        return self._store.served_digest(job_id, version)

    def _strategy(self, job_id: str, strategy: StrategyChoice | None) -> ServerStrategy:
        """The job's strategy: recorded (from ``strategy`` if none is), FedAvg if never told."""
        try:
            state = self._store.load(job_id)
        except PaillierStateUnreadable as exc:
            raise ModelUnavailable(f"the paillier state of this job is unusable: {exc}") from None
        if state is not None and strategy is not None:
            try:
                self._record_strategy(job_id, state, strategy)
            except ProtocolViolation as exc:
                raise ModelUnavailable(str(exc)) from None
            state = self._store.load(job_id)
        choice = StrategyChoice() if state is None or state.strategy is None else state.strategy
        try:
            return choice.load()
        except StrategyError as exc:
            raise ModelUnavailable(f"the job's strategy is unusable here: {exc}") from None

    def _start_of_chain(
        self, job_id: str, version: int, server: ServerStrategy
    ) -> tuple[int, Weights, OptimizerState | None]:
        """The newest kept version at or before ``version`` (version 0 at least), with its
        optimizer state when the strategy keeps one (None: the state before the first step)."""
        for kept_version in reversed(self._store.model_versions(job_id)):
            if kept_version > version or kept_version == 0:
                continue
            optimizer = None
            if server.updates_server_model:
                optimizer = self._store.load_optimizer_state(job_id, kept_version)
                if optimizer is None:
                    continue
            weights = self._store.load_model(job_id, kept_version)
            if weights is not None:
                return kept_version, weights, optimizer
        return 0, self._version_zero(job_id), None

    def _version_zero(self, job_id: str) -> Weights:
        """The initial weights, public and plain float32; kept like the others."""
        kept = self._store.load_model(job_id, 0)
        if kept is not None:
            return kept
        _, weights = self._download(job_id, 0)
        if not weights or any(w.dtype != np.float32 for w in weights):
            raise ModelUnavailable("version 0 of a paillier job must be plain float32 weights")
        self._store.save_model(job_id, 0, weights, tensors_sha256(weights))
        return weights

    def _download(self, job_id: str, version: int) -> tuple[int, Weights]:
        got, tensors = self._client.retrying(lambda: self._client.download_model(job_id, version))
        if version >= 0 and got != version:
            raise ModelUnavailable(f"asked for model version {version}, the coordinator sent {got}")
        return got, tensors

    def _spec(self, job_id: str) -> QuantizationSpec:
        try:
            state = self._store.load(job_id)
        except PaillierStateUnreadable as exc:
            raise ModelUnavailable(f"the paillier state of this job is unusable: {exc}") from None
        if state is None or (not state.private_key and not state.retired):
            raise ModelUnavailable(
                "the models of this paillier job are encrypted and this participant holds no "
                "key for it"
            )
        return _quantization(state)

    def _version_key(self, job_id: str, version: int, generation: int) -> PaillierPrivateKey:
        """The key of the generation a version is under; ModelUnavailable if not held here
        (nothing is decrypted, so the refusal tells the coordinator nothing)."""
        try:
            state = self._store.load(job_id)
            key = None if state is None else self._generation_key(job_id, state, generation)
        except (PaillierStateUnreadable, SecAggError) as exc:
            raise ModelUnavailable(f"the paillier state of this job is unusable: {exc}") from None
        if key is None:
            held = "none" if state is None else str(state.generation)
            raise ModelUnavailable(
                f"version {version} is under key generation {generation} of the job, whose key "
                f"this participant does not hold (it is at generation {held})"
            )
        return key

    def _apply(
        self,
        job_id: str,
        version: int,
        spec: QuantizationSpec,
        specs: Sequence[TensorSpec],
        base: Weights,
        tensors: Weights,
        base_served: bytes,
        base_generation: int,
    ) -> tuple[Weights, int]:
        """The mean model of round ``version``: ``base`` + the weighted mean delta it released,
        and the key generation it was under.

        Nothing decrypted is the coordinator's choice (docs/paillier.md, "Authenticated
        versions"): the correction and the contributor count are recomputed from the round's
        signed messages, and the summed ciphertexts must carry the tag of inputs made for this
        job, the round those messages name and version ``version - 1`` as this participant
        holds it, under the key of the generation the record names (never older than the
        base's). Anything else raises VersionRefused.
        """
        length = sum(math.prod(s.shape) for s in specs) + 1
        if (
            len(tensors) != 2
            or tensors[0].dtype != np.uint8
            or tensors[0].ndim != 1
            or tensors[1].dtype != spec.dtype
            or tensors[1].shape != (length,)
        ):
            raise VersionRefused(
                f"version {version} of a paillier job must be the version record (uint8) and "
                f"a correction of {length} {spec.dtype} words"
            )
        data, served_correction = tensors
        try:
            record = PaillierVersion.from_bytes(data.tobytes())
        except SecAggError as exc:
            raise VersionRefused(f"version {version} is malformed: {exc}") from None
        if record.generation < base_generation:
            # Rotations happen between rounds: a later version is never under an older key.
            raise VersionRefused(
                f"version {version} claims key generation {record.generation}, older than the "
                f"generation {base_generation} of version {version - 1}"
            )
        key = self._version_key(job_id, version, record.generation)
        self._check_retired_round(job_id, version, record)
        public = key.public_key
        try:
            summed = PaillierCiphertexts.from_bytes(record.ciphertexts, public)
            layout = PackingLayout(spec.modulus_bits, spec.max_participants, public.bits)
            if summed.layout != layout or summed.value_count != length:
                raise ProtocolViolation("the summed ciphertexts do not have the job's layout")
            if len(record.tag) != public.ciphertext_bytes:
                raise ProtocolViolation("the summed tag is not one ciphertext")
            tag = int.from_bytes(record.tag, "big")
            check_ciphertexts([tag], public)
        except SecAggError as exc:
            raise VersionRefused(f"version {version} is malformed: {exc}") from None
        self._check_context(job_id, version, record, public, base_served, length)
        correction = self._replay(job_id, version, record, spec, length)
        if not np.array_equal(correction, served_correction):
            raise VersionRefused(
                f"version {version}: the served mask correction is not the one the round's "
                "signed messages give"
            )
        if summed.contributions != len(record.transcript.contributors):
            raise VersionRefused(
                f"version {version}: the summed ciphertexts count {summed.contributions} "
                f"contributions, the round's signed survivor set "
                f"{len(record.transcript.contributors)}"
            )
        binding = tag_binding(
            job_id, record.transcript.round_id, version - 1, base_served, record.generation
        )
        # The product this participant decrypted when it vetted the round's inputs decrypts to
        # the same plaintexts: decryption is a function of the ciphertexts, so using them
        # changes no outcome below, and nothing else is ever taken from the memory.
        vetted = self._remembered_sum(
            job_id, record.transcript.round_id, record.generation, summed, tag
        )
        if vetted is not None:
            plaintexts, tag_plaintext = list(vetted.plaintexts), vetted.tag_plaintext
        else:
            try:
                plaintexts = decrypt_integers(key, summed.ciphertexts, workers=self._workers)
                (tag_plaintext,) = decrypt_integers(key, [tag])
            except SecAggError as exc:
                raise VersionRefused(f"version {version} does not decrypt: {exc}") from None
        if not tag_matches(key, binding, plaintexts, tag_plaintext):
            raise VersionRefused(
                f"version {version} does not decrypt: the summed ciphertexts are not the sum of "
                f"inputs made for this round and base version {version - 1} (their tag does "
                "not match)"
            )
        # From here on the sum is exactly the product of inputs that holders of the key made
        # for this round: what is wrong with it was sent by a contributor, not the coordinator.
        contributors = ", ".join(record.transcript.contributors)
        try:
            sums = layout.unpack(plaintexts, summed.value_count, summed.contributions)
            # uint64 wraps modulo 2^64 and narrowing to uint32 reduces modulo 2^32: mod R.
            aggregate = (sums + correction.astype(np.uint64)).astype(spec.dtype)
            mean = spec.dequantize(aggregate)
        except SecAggError as exc:
            raise MalformedAggregate(
                f"version {version} (round {record.transcript.round_id}) holds a malformed "
                f"input from one of its contributors {contributors}: {exc}"
            ) from None
        # Every contribution is clipped to [-clip, clip] with a weight of at most max_weight:
        # anything else is not the sum of this job's inputs (e.g. one masked input, S16).
        limit = spec.clip + spec.mean_error_bound
        if mean.total_weight > summed.contributions * spec.max_weight or (
            mean.mean.size and float(np.max(np.abs(mean.mean))) > limit * (1 + 1e-9)
        ):
            raise MalformedAggregate(
                f"version {version} (round {record.transcript.round_id}) does not decrypt to a "
                "mean of clipped updates: it is not the aggregate of a round; one of its "
                f"contributors {contributors} sent an out-of-range input"
            )
        delta = unflatten(mean.mean, specs, "float64")
        log.info(
            "model version %d decrypted: %d contributions",
            version,
            summed.contributions,
            **context(job=job_id),
        )
        weights = [
            (np.asarray(b, dtype=np.float64) + d).astype(np.float32)
            for b, d in zip(base, delta, strict=True)
        ]
        return weights, record.generation

    def _replay(
        self,
        job_id: str,
        version: int,
        record: PaillierVersion,
        spec: QuantizationSpec,
        length: int,
    ) -> npt.NDArray[Any]:
        """The round's mask correction from its transcript, every certificate and signature
        checked: the certificates against the consortium CA and the membership list, the
        signatures by the replay."""
        if self._identity is None:
            raise ModelUnavailable(
                "verifying a paillier version needs the organization's CA certificate; this "
                "participant runs without TLS"
            )
        ca = self._identity().ca
        now = self._clock()
        transcript = record.transcript
        try:
            keys = {
                org: verify_peer_certificate(pem, ca, org, Role.PARTICIPANT, now)
                for org, _, pem in transcript.keys
            }
        except PeerCertificateError as exc:
            # Not held against the coordinator: a certificate may simply have expired since the
            # round (a late joiner rebuilding old versions). Nothing was decrypted, so refusing
            # tells the coordinator nothing about the aggregate.
            raise ModelUnavailable(
                f"version {version}: a certificate in the round's transcript does not verify "
                f"now: {exc}"
            ) from None
        self._check_transcript_members(job_id, version, record)
        try:
            return replay_correction(
                transcript,
                job_id=job_id,
                vector_length=length,
                modulus_bits=spec.modulus_bits,
                verifying_keys=keys,
            )
        except (SecAggError, ValueError) as exc:
            raise VersionRefused(
                f"version {version}: the round's signed messages do not verify: {exc}"
            ) from None

    def _check_context(
        self,
        job_id: str,
        version: int,
        record: PaillierVersion,
        public: PaillierPublicKey,
        base_served: bytes,
        length: int,
    ) -> None:
        """The context the round's transcript signs is the one this organization computes from
        the record's round terms, version ``version - 1`` as it holds it, the job's quantization
        settings, and the key it holds for the generation the record names.

        So a round signed under one key generation never passes as a version under another:
        the revoked holder of a retired key could make the tag of a later round's version under
        that key, but not the signatures of that round's cohort over a context naming it
        (docs/paillier.md, "Key rotation"). Checked before anything is decrypted.
        """
        if record.terms is None:
            # Nothing was decrypted: not held against the coordinator.
            raise ModelUnavailable(
                f"version {version} carries no round terms (a record written before the round "
                "context bound the job key): it cannot be verified"
            )
        state = self._store.load(job_id)
        if state is None or state.parameters is None:
            raise ModelUnavailable("the quantization settings of this paillier job are unknown")
        transcript = record.transcript
        parameters = replace(
            state.parameters,
            threshold=transcript.threshold,
            vector_length=length,
            cohort=tuple(sorted(transcript.cohort)),
        )
        try:
            expected = record.terms.context(
                job_id=job_id,
                base_version=version - 1,
                base_model_sha256=base_served,
                parameters=parameters,
                key_fingerprint=round_key_fingerprint(job_id, record.generation, public),
            )
        except (SecAggError, ValueError) as exc:
            raise VersionRefused(f"version {version} is malformed: {exc}") from None
        if expected != transcript.context:
            raise VersionRefused(
                f"version {version}: the round context its transcript signs is not the one this "
                f"organization computes from the record's round terms, version {version - 1} "
                f"as it holds it and its key of generation {record.generation}: that round "
                "was not run on this base under this key"
            )

    def _check_retired_round(self, job_id: str, version: int, record: PaillierVersion) -> None:
        """A version under a retired key generation comes from a round started before this
        organization left that generation, as far as its own ledger knows: the revoked holder of
        the old key could make a later round's tag under it."""
        if self._ledger is None:
            return
        state = self._store.load(job_id)
        retired = None if state is None else _retired(state, record.generation)
        if retired is None:
            return
        try:
            entry = self._ledger.rounds(job_id).get(record.transcript.round_id)
        except ParticipantError as exc:
            raise ModelUnavailable(f"version {version}: {exc}") from None
        if entry is not None and entry.number > retired.last_round:
            raise VersionRefused(
                f"version {version} claims key generation {record.generation}, but this "
                f"organization took part in its round (number {entry.number}) under a later "
                "generation: its inputs were not encrypted under that key"
            )

    def _check_transcript_members(self, job_id: str, version: int, record: PaillierVersion) -> None:
        """Every organization of the round's transcript is admitted by the membership list
        held now, with the certificate it signed with; under a key generation retired since,
        also one the list revokes by name (the revocation is what retired that key).

        ModelUnavailable otherwise: nothing was decrypted, so the refusal tells the coordinator
        nothing about the aggregate.
        """
        if self._membership is None or self._identity is None:
            return
        me = self._identity().participant_id
        try:
            state = self._store.load(job_id)
            held = self._membership.current()
            retired = state is not None and record.generation < state.generation
            for org, _, pem in record.transcript.keys:
                if retired and held is not None and org in held.revoked:
                    continue
                self._membership.check_peers(me, {org: pem})
        except (ParticipantError, PeerCertificateError) as exc:
            log_refused_member(exc, context(job=job_id))
            raise ModelUnavailable(
                f"version {version}: the round's transcript names an organization the "
                f"membership list does not admit: {exc}"
            ) from None


def _retired(state: PaillierJobState, generation: int) -> RetiredKey | None:
    return next((item for item in state.retired if item.generation == generation), None)


def _stopped_message(state: PaillierJobState) -> str:
    return (
        f"this participant stopped serving the job for good: model version "
        f"{state.stopped_version} failed verification ({state.stopped})"
    )


def _quantization(state: PaillierJobState) -> QuantizationSpec:
    if state.parameters is None:
        raise ModelUnavailable("the quantization settings of this paillier job are unknown")
    try:
        return state.parameters.quantization()
    except SecAggError as exc:
        raise ModelUnavailable(f"the job's quantization settings are unusable: {exc}") from None
