"""The participant's side of secure aggregation: answer each phase of a round, or refuse it.

For every phase (docs/secagg.md) the daemon restores the round's ``secagg.SecAggClient`` from its
state file, lets it check the coordinator's request against its own bookkeeping, saves the new
state and only then sends the answer, so a restart answers byte-identically.
A request an honest coordinator never makes (S10-S15) is refused: the client aborts, the
aborted state is saved, nothing is sent, and the round is never answered again. A round whose
state is gone (secrets lost) is treated as dropped. When the coordinator reports that a round has
ended, its state and stored answers are deleted (R4).

A paillier round (docs/paillier.md, "In the service") is the same round with two differences:
the round's base model is rebuilt from the job's encrypted versions, and the masked input is
packed and Paillier-encrypted under the job's key before it is sent
(:class:`participant.service.paillier_jobs.PaillierJobs`). A round's protection is recorded at
KEYS and must not change; no round of a job whose key ceremony this participant took part in
is answered under weaker protection.

The module talks to the coordinator only through
:class:`participant.service.calls.SecureRoundCalls`, so tests can drive whole rounds in-process.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography import x509

from fedsilo.codec import encode_tensors, tensors_sha256
from fedsilo.faults import crash_point
from fedsilo.logs import context
from fedsilo.paillier_inputs import SignedInput
from fedsilo.paillier_versions import tag_binding
from fedsilo.pki import PeerCertificateError, Role, verify_peer_certificate
from fedsilo.privacy import privatize_update
from fedsilo.protection import (
    Protection,
    SecAggParameters,
    encode_share_list,
    round_context,
)
from fedsilo.tasks import TrainResult
from participant.domain.assignments import (
    Assignment,
    AssignmentKind,
    EndedRound,
    SecAggPhase,
    SecAggStepData,
    StepOutcome,
)
from participant.errors import (
    LocalStateError,
    MembershipStale,
    MembershipUnavailable,
    NotSupported,
    SecAggUnavailable,
    StateUnreadable,
    TaskFailed,
    UntrustedMessage,
)
from participant.service.answers import AnswerStore, StoredAnswer
from participant.service.calls import SecureRoundCalls
from participant.service.identity import OrgIdentity, utc_now
from participant.service.job_terms import JobTermsStore
from participant.service.ledger import ContributionLedger
from participant.service.membership import MembershipStore, log_refused_member
from participant.service.model_cache import ModelCache
from participant.service.paillier_jobs import PaillierJobs
from participant.service.paillier_vetting import (
    fetch_round_inputs,
    own_signed_input,
    sign_encrypted_input,
    signed_consistency_answer,
    vet_inputs,
)
from participant.service.secagg_state import SecAggStateStore, SecureRoundState
from secagg import (
    ClientPhase,
    EncryptedShare,
    ParticipantContext,
    ProtocolViolation,
    RandomSource,
    RoundConfig,
    SecAggClient,
    SecAggError,
    SignedKeys,
    UnmaskRequest,
    VerifyingKey,
    verifying_key,
)

__all__ = ["SecureRoundParticipant", "Trainer", "model_digest", "round_config"]

log = logging.getLogger("participant")

Weights = list[npt.NDArray[Any]]
Trainer = Callable[[Assignment, Weights], TrainResult]
"""Trains the assignment's task locally from the given base weights, with the round's seed."""


@dataclass(frozen=True)
class _Answer:
    """A phase's answer, sent only after ``state`` is saved: a message body or a masked input."""

    state: SecureRoundState
    body: bytes = b""
    masked: StoredAnswer | None = None
    stored_before: bool = False


class SecureRoundParticipant:
    """Answers secure-aggregation tasks for one organization, one round state file per round."""

    def __init__(
        self,
        client: SecureRoundCalls,
        states: SecAggStateStore,
        answers: AnswerStore,
        identity: Callable[[], OrgIdentity] | None,
        train: Trainer,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
        random: RandomSource = os.urandom,
        workers: int = 1,
        paillier: PaillierJobs | None = None,
        terms: JobTermsStore,
        ledger: ContributionLedger,
        membership: MembershipStore,
        models: ModelCache | None = None,
    ) -> None:
        self._client = client
        self._states = states
        self._answers = answers
        self._identity = identity
        self._train = train
        self._clock = clock
        self._random = random
        self._workers = workers
        self._paillier = paillier
        self._terms = terms
        self._ledger = ledger
        self._membership = membership
        self._silenced: set[tuple[str, str, StepOutcome]] = set()
        # The base model hashed at KEYS is held there (with the daemon's evaluations sharing
        # it): INPUTS trains from these very bytes instead of downloading them again. One model
        # at most; after a restart INPUTS downloads and checks the digest.
        self._models = models if models is not None else ModelCache(client)

    def held_round_ids(self) -> list[str]:
        """Rounds this participant keeps state for; the coordinator says which have ended."""
        return self._states.round_ids()

    def finish_rounds(self, outcomes: Iterable[EndedRound]) -> None:
        """Delete the state and stored answers of rounds that ended (their secrets, R4)."""
        held = set(self._states.round_ids())
        for outcome in outcomes:
            if outcome.round_id not in held:
                continue
            # Logged before the state file goes: whoever sees the secrets gone can read why.
            if outcome.committed:
                log.info("round %s ended (committed); deleting its secrets", outcome.round_id)
            else:
                log.info(
                    "round %s ended (aborted: %s); deleting its secrets",
                    outcome.round_id,
                    outcome.reason or "no reason given",
                )
            self._ledger.record_ending(outcome.round_id, outcome.committed)
            # The answer first: while the state file exists the round is still reported as held,
            # so an interrupted clean-up is finished on the next poll.
            self._answers.forget(outcome.round_id, SecAggPhase.INPUTS)
            self._states.delete(outcome.round_id)
            self._silenced = {key for key in self._silenced if key[0] != outcome.round_id}

    def step(self, assignment: Assignment) -> StepOutcome:
        """Answer one phase of a secure-aggregation round, or refuse it (see the module doc)."""
        data = assignment.secagg
        if data is None:
            raise UntrustedMessage("a secure-aggregation task came without its parameters")
        phase = _phase_of(assignment)
        identity = self._current_identity()
        ctx = context(
            job=assignment.job_id,
            round=str(assignment.round_number),
            phase=phase.value,
            org=identity.participant_id,
        )
        try:
            self._membership.ready()
        except MembershipUnavailable as exc:
            # Not recorded as a refusal: the round is answered once the CA's (newer) list has
            # arrived. A stale list is an error: the admin has to act, or it is being withheld.
            level = logging.ERROR if isinstance(exc, MembershipStale) else logging.WARNING
            return self._silent(assignment, StepOutcome.SKIPPED, level, "%s", exc, ctx=ctx)
        try:
            state = self._states.load(assignment.round_id)
        except StateUnreadable as exc:
            return self._silent(
                assignment,
                StepOutcome.DROPPED,
                logging.ERROR,
                "%s: acting as dropped",
                exc,
                ctx=ctx,
            )
        if state is None:
            if phase is SecAggPhase.KEYS:
                return self._start(assignment, data, identity, ctx)
            return self._silent(
                assignment,
                StepOutcome.DROPPED,
                logging.WARNING,
                "no secure-aggregation state for this round (its secrets are lost): acting as "
                "dropped",
                ctx=ctx,
            )
        if state.client is None:
            return self._silent(
                assignment,
                StepOutcome.LEFT,
                logging.INFO,
                "this participant refused the round (%s): not answering",
                state.refusal,
                ctx=ctx,
            )
        try:
            client = SecAggClient.restore(
                state.client, self._context(identity, _certificate_keys(state.peer_certificates))
            )
        except (SecAggError, ValueError) as exc:
            return self._silent(
                assignment,
                StepOutcome.DROPPED,
                logging.ERROR,
                "the stored state of this round is unusable (%s): acting as dropped",
                exc,
                ctx=ctx,
            )
        if client.phase is ClientPhase.ABORTED:
            return self._silent(
                assignment,
                StepOutcome.LEFT,
                logging.INFO,
                "this participant left the round: not answering",
                ctx=ctx,
            )

        try:
            self._terms.check(assignment)
        except UntrustedMessage as exc:
            # A setting changed mid-round: leave the round for good, nothing more is sent.
            client.abort(str(exc))
            self._states.save(assignment.round_id, replace(state, client=client.to_dict()))
            log.error("%s", exc, **ctx)
            return StepOutcome.REFUSED
        try:
            _check_unchanged(
                assignment, data.parameters, state, client, self._key_fingerprint(assignment)
            )
            self._check_protection(assignment)
            # Every phase: a peer revoked since the round started ends it here.
            self._check_members(assignment, identity, state.parameters, state.peer_certificates)
            answer = self._answer(phase, assignment, data, identity, state, client, ctx)
        except (SecAggError, PeerCertificateError) as exc:
            client.abort(str(exc))
            self._states.save(assignment.round_id, replace(state, client=client.to_dict()))
            log.error("refused the round: %s", exc, **ctx)
            log_refused_member(exc, ctx)
            sender = getattr(exc, "sender", None)
            if sender is not None:
                # A bad share comes from a peer, not from the coordinator: say who, so the
                # consortium can act on that organization.
                log.error("organization %s sent this participant a bad key share", sender, **ctx)
            return StepOutcome.REFUSED
        if answer is None:
            return StepOutcome.SKIPPED
        self._send(assignment, answer, ctx)
        return StepOutcome.ANSWERED

    # -- phases ---------------------------------------------------------------------------------

    def _start(
        self,
        assignment: Assignment,
        data: SecAggStepData,
        identity: OrgIdentity,
        ctx: dict[str, Any],
    ) -> StepOutcome:
        """Bonawitz round 0: check the round's parameters, make and sign the round keys."""
        parameters = _normalized(data.parameters)
        protection = _protection_of(assignment)
        # What this organization would train from, before it signs anything: its digest enters
        # the round context, so peers handed another base model cannot finish the round with it.
        base_sha256 = self._base_digest(assignment, protection)
        try:
            config = round_config(
                assignment, parameters, base_sha256, self._key_fingerprint(assignment)
            )
            # The bit budget: refuse a round whose sums could overflow (BitBudgetExceeded).
            parameters.quantization()
            self._check_protection(assignment)
            if protection is Protection.PAILLIER:
                self._require_paillier().check_round(
                    assignment.job_id, parameters, assignment.strategy
                )
            # The organization's own cohort policy (a threshold or cohort below it is refused),
            # then its bounds and the job's terms and secure parameters as first accepted.
            client = SecAggClient.start(
                config, self._context(identity, {}), self._terms.policy.cohort
            )
            # Only organizations the consortium CA's list admits, before a key leaves.
            self._check_members(assignment, identity, parameters, {})
            self._terms.check(assignment)
            self._terms.check_secure(assignment.job_id, parameters)
            # Round ids, numbers and base versions against what this organization already gave
            # (participant/service/ledger.py); recorded before the keys leave.
            self._ledger.start(
                assignment.job_id,
                assignment.round_id,
                assignment.round_number,
                assignment.model_version,
            )
        except (SecAggError, UntrustedMessage, PeerCertificateError) as exc:
            refused = SecureRoundState(
                parameters, None, {}, refusal=str(exc), protection=protection.value
            )
            self._states.save(assignment.round_id, refused)
            log.error("refused the round: %s", exc, **ctx)
            log_refused_member(exc, ctx)
            return StepOutcome.REFUSED
        if protection is Protection.PAILLIER:
            # Every cohort member decrypts the round's sum with the job's key: it holds it.
            self._require_paillier().record_key_holders(assignment.job_id, parameters.cohort)
        answer = _Answer(
            SecureRoundState(
                parameters,
                client.to_dict(),
                protection=protection.value,
                base_sha256=base_sha256,
            ),
            client.advertise_keys().to_bytes(),
        )
        self._send(assignment, answer, ctx)
        return StepOutcome.ANSWERED

    def _base_digest(self, assignment: Assignment, protection: Protection) -> bytes:
        """The digest of the base model as served for this round (what the coordinator binds):
        the model itself, or under paillier the ciphertexts of the version (version 0 itself)."""
        # Whatever is served is what the digest binds; INPUTS trains only from the same bytes.
        if protection is not Protection.PAILLIER:
            # Held read-only (training must never change the signed bytes), as served to this
            # organization for that version: by this download or by its evaluation's.
            return self._models.fetch(assignment.job_id, assignment.model_version).digest
        _, base = self._client.retrying(
            lambda: self._client.download_model(assignment.job_id, assignment.model_version)
        )
        return model_digest(base)

    def _answer(
        self,
        phase: SecAggPhase,
        assignment: Assignment,
        data: SecAggStepData,
        identity: OrgIdentity,
        state: SecureRoundState,
        client: SecAggClient,
        ctx: dict[str, Any],
    ) -> _Answer | None:
        if phase is SecAggPhase.KEYS:
            return _Answer(state, client.advertise_keys().to_bytes())
        if phase is SecAggPhase.SHARES:
            return self._share_keys(data, identity, state, client)
        if phase is SecAggPhase.INPUTS:
            return self._mask_input(assignment, data, state, client, ctx)
        if phase is SecAggPhase.CONSISTENCY:
            if assignment.protection is Protection.PAILLIER:
                # Every other contributor's signed input is vetted before U3 is signed; senders
                # of malformed ones are left out like dropouts (paillier_vetting.py).
                inputs = fetch_round_inputs(
                    self._client, self._require_paillier(), assignment, data
                )
                if inputs is None:
                    log.info("the round's inputs changed since this step: asking again", **ctx)
                    return None
                vetted = vet_inputs(
                    self._require_paillier(),
                    assignment,
                    data,
                    inputs,
                    client.config,
                    state.base_sha256,
                    state.peer_certificates,
                    identity.participant_id,
                    ctx,
                    own=self._own_input(assignment, identity.participant_id),
                )
                body = signed_consistency_answer(client, vetted)
                return _Answer(replace(state, client=client.to_dict()), body)
            signature = client.sign_survivors(list(data.survivors))
            return _Answer(replace(state, client=client.to_dict()), signature.to_bytes())
        request = UnmaskRequest.from_bytes(data.unmask_request)
        response = client.unmask(request)
        # Recorded before the shares leave: the round's aggregate may now be released.
        self._ledger.record_reveal(
            assignment.job_id,
            assignment.round_id,
            assignment.round_number,
            assignment.model_version,
        )
        log.info(
            "revealing %d self-mask shares and %d key shares of dropped peers",
            len(response.self_mask_shares),
            len(response.masking_key_shares),
            **ctx,
        )
        return _Answer(replace(state, client=client.to_dict()), response.to_bytes())

    def _own_input(self, assignment: Assignment, me: str) -> SignedInput | None:
        """The signed encrypted input this participant sent in the round (None if it is gone)."""
        try:
            stored = self._answers.load(assignment.round_id, SecAggPhase.INPUTS)
        except (LocalStateError, OSError):
            return None
        return own_signed_input(stored, me)

    def _share_keys(
        self,
        data: SecAggStepData,
        identity: OrgIdentity,
        state: SecureRoundState,
        client: SecAggClient,
    ) -> _Answer:
        """Bonawitz round 1: accept the peers' certificates, then let the client check U1."""
        keys = [SignedKeys.from_bytes(item.signed_keys) for item in data.keys]
        offered: dict[str, bytes] = {}
        for entry, item in zip(keys, data.keys, strict=True):
            if entry.participant in offered:
                raise ProtocolViolation(f"the key list has two entries for {entry.participant!r}")
            offered[entry.participant] = item.certificate_pem
        if client.phase is ClientPhase.KEYS_ADVERTISED:
            now = self._clock()
            # S14: a peer's keys count only with a certificate of the consortium CA for its id,
            # and only from an organization the CA's membership list admits, with that certificate.
            peer_keys = {
                org: verify_peer_certificate(pem, identity.ca, org, Role.PARTICIPANT, now)
                for org, pem in offered.items()
            }
            self._membership.check_peers(identity.participant_id, offered)
            client = SecAggClient.restore(client.to_dict(), self._context(identity, peer_keys))
        elif offered != dict(state.peer_certificates):
            # Later phases verify signatures with the certificates accepted the first time.
            raise ProtocolViolation("the key list's certificates differ from those accepted before")
        shares = client.share_keys(keys)
        new_state = replace(state, client=client.to_dict(), peer_certificates=offered)
        return _Answer(new_state, encode_share_list(shares))

    def _mask_input(
        self,
        assignment: Assignment,
        data: SecAggStepData,
        state: SecureRoundState,
        client: SecAggClient,
        ctx: dict[str, Any],
    ) -> _Answer | None:
        """Bonawitz round 2: train, encode the weighted delta, mask it (docs/secagg.md)."""
        stored = self._answers.load(assignment.round_id, SecAggPhase.INPUTS)
        if stored is not None:
            log.info("re-sending the stored masked input for this round", **ctx)
            return _Answer(state, masked=stored, stored_before=True)
        if client.phase not in (ClientPhase.SHARES_SENT, ClientPhase.INPUT_SENT):
            raise ProtocolViolation(
                f"out of order: a masked input requested in phase {client.phase.value}"
            )
        shares = [EncryptedShare.from_bytes(item) for item in data.shares]
        paillier = (
            self._require_paillier() if assignment.protection is Protection.PAILLIER else None
        )
        if paillier is not None:
            # Versions after 0 exist only encrypted: rebuilt from the job's model chain.
            version, base = paillier.model(
                assignment.job_id, assignment.model_version, assignment.strategy
            )
        else:
            version, base = self._kept_base(assignment, state.base_sha256)
        if version != assignment.model_version:
            log.warning(
                "coordinator sent version %d, expected %d", version, assignment.model_version, **ctx
            )
            return None
        # The round was signed for the base model served at KEYS: train from nothing else.
        if paillier is not None:
            served = paillier.served_digest(assignment.job_id, version)
        else:
            # The very arrays hashed at KEYS, kept read-only since, are not hashed again.
            served = self._models.digest_of(assignment.job_id, version, base)
        if served != state.base_sha256:
            raise ProtocolViolation(
                f"the model version {version} to train from is not the one this round's keys "
                "were signed for (the coordinator served other bytes)"
            )
        result = self._train(assignment, base)
        update = _delta(base, result.weights)
        parameters = data.parameters
        if parameters.vector_length != update.size + 1:
            raise ProtocolViolation(
                f"the round expects vectors of {parameters.vector_length} words, but this "
                f"model's update encodes to {update.size + 1}"
            )
        if assignment.privacy.enabled:
            update, weight = self._privatize(update, assignment, parameters, ctx), 1
        else:
            weight = min(result.num_examples, parameters.max_weight)
            if weight < result.num_examples:
                log.warning(
                    "the update's weight is capped at max_weight=%d (trained on %d examples)",
                    parameters.max_weight,
                    result.num_examples,
                    **ctx,
                )
        try:
            # Recorded before the masked input exists outside the client (ledger.py).
            self._ledger.record_input(
                assignment.job_id,
                assignment.round_id,
                assignment.round_number,
                assignment.model_version,
            )
        except UntrustedMessage as exc:
            raise ProtocolViolation(str(exc)) from None
        masked = client.mask_input(shares, parameters.quantization().quantize(update, weight))
        if paillier is not None:
            # Encryption is randomized: the stored answer is what every retry sends.
            # The tag binds the ciphertexts to this job, round and base version as served
            # (docs/paillier.md, "Authenticated versions").
            binding = tag_binding(
                assignment.job_id,
                assignment.round_id,
                assignment.model_version,
                state.base_sha256,
                # The generation of the key the input is encrypted under (docs/paillier.md).
                paillier.generation(assignment.job_id),
            )
            header, payload = paillier.encrypt_input(
                assignment.job_id, parameters, masked.vector, binding
            )
            # Signed over the round: attributable to this organization, and only to this round.
            identity = self._current_identity()
            header, payload = sign_encrypted_input(
                header, payload, identity.signing_key, client.config, identity.participant_id
            )
        else:
            header, payload = encode_tensors([masked.vector])
        log.info(
            "trained on %d examples, loss %.4f; %s input of %d words ready",
            result.num_examples,
            result.loss,
            "encrypted" if paillier is not None else "masked",
            masked.vector.size,
            **ctx,
        )
        # Neither the example count nor the loss is revealed: both stay zero on the wire.
        answer = StoredAnswer(header, payload, num_examples=0, train_loss=0.0)
        return _Answer(replace(state, client=client.to_dict()), masked=answer)

    def _privatize(
        self,
        update: npt.NDArray[np.float64],
        assignment: Assignment,
        parameters: SecAggParameters,
        ctx: dict[str, Any],
    ) -> npt.NDArray[np.float64]:
        """The update clipped and with this organization's noise share (weight 1 follows).

        The share's deviation uses the round's threshold, which the round context binds: any
        ``t`` or more shares that reach the sum carry the job's full noise.
        """
        noisy = privatize_update(update, assignment.privacy, parameters.threshold, self._random)
        outside = int(np.count_nonzero(np.abs(noisy) > parameters.clip))
        if outside:
            # The quantization box clips these coordinates, noise included: the job's clip
            # should be wider (docs/differential-privacy.md, "Quantization").
            log.warning(
                "%d of %d noisy coordinates fall outside the quantization clip %g",
                outside,
                noisy.size,
                parameters.clip,
                **ctx,
            )
        return noisy

    # -- plumbing -------------------------------------------------------------------------------

    def _kept_base(self, assignment: Assignment, base_sha256: bytes) -> tuple[int, Weights]:
        """The base model signed for at KEYS, kept in memory, or downloaded again."""
        job_id, version = assignment.job_id, assignment.model_version
        kept = self._models.held(job_id, version)
        fresh = kept is None or kept.digest != base_sha256
        model = self._models.fetch(job_id, version, fresh=fresh)
        return model.version, model.weights

    def _send(self, assignment: Assignment, answer: _Answer, ctx: dict[str, Any]) -> None:
        # Saved before the first send: after a crash the same bytes go out, never other ones.
        self._states.save(assignment.round_id, answer.state)
        masked = answer.masked
        if masked is None:
            body = answer.body
            receipt = self._client.retrying(lambda: self._client.submit_message(assignment, body))
        else:
            if not answer.stored_before:
                self._answers.save(assignment.round_id, SecAggPhase.INPUTS, masked)
                crash_point("participant.secagg.before_inputs")
            receipt = self._client.retrying(
                lambda: self._client.submit_update(
                    assignment,
                    masked.num_examples,
                    masked.train_loss,
                    masked.header,
                    masked.payload,
                )
            )
        log.info("answer acknowledged%s", " (duplicate)" if receipt.duplicate else "", **ctx)
        crash_point(f"participant.secagg.after_{assignment.phase}")

    def _silent(
        self,
        assignment: Assignment,
        outcome: StepOutcome,
        level: int,
        message: str,
        *args: object,
        ctx: dict[str, Any],
    ) -> StepOutcome:
        """Log why nothing is sent; the coordinator offers the task again until the phase's
        deadline, so repeats for the same round and phase go to DEBUG."""
        key = (assignment.round_id, assignment.phase, outcome)
        log.log(logging.DEBUG if key in self._silenced else level, message, *args, **ctx)
        self._silenced.add(key)
        return outcome

    def _key_fingerprint(self, assignment: Assignment) -> bytes:
        """What the round context binds of the job key: under paillier the current key of the
        job held here (its generation and public key), nothing for other protections."""
        if assignment.protection is not Protection.PAILLIER or self._paillier is None:
            return b""
        return self._paillier.key_fingerprint(assignment.job_id)

    def _require_paillier(self) -> PaillierJobs:
        if self._paillier is None:
            raise NotSupported("protection paillier is not supported by this participant")
        return self._paillier

    def _check_protection(self, assignment: Assignment) -> None:
        """No weaker protection for a job whose key ceremony this participant took part in:
        a secagg round would show the coordinator the aggregate the job keeps from it."""
        if (
            assignment.protection is not Protection.PAILLIER
            and self._paillier is not None
            and self._paillier.is_paillier_job(assignment.job_id)
        ):
            raise ProtocolViolation(
                f"a round with protection {assignment.protection.value} in a paillier job"
            )

    def _check_members(
        self,
        assignment: Assignment,
        identity: OrgIdentity,
        parameters: SecAggParameters,
        certificates: Mapping[str, bytes],
    ) -> None:
        """Every organization of the round (its cohort, with the certificates accepted so far)
        and, under paillier, everyone known to hold the job's key, must be admitted by the
        membership list held now; NotAMember names the first that is not."""
        me = identity.participant_id
        peers: dict[str, bytes | None] = dict.fromkeys(parameters.cohort)
        peers.update(certificates)
        self._membership.check_peers(me, peers)
        if assignment.protection is Protection.PAILLIER:
            holders = self._require_paillier().key_holders(assignment.job_id)
            self._membership.check_key_holders(me, holders)

    def _current_identity(self) -> OrgIdentity:
        if self._identity is None:
            raise SecAggUnavailable(
                "secure aggregation needs the organization's TLS key and certificate; this "
                "participant runs without TLS"
            )
        return self._identity()

    def _context(
        self, identity: OrgIdentity, peer_keys: Mapping[str, VerifyingKey]
    ) -> ParticipantContext:
        return ParticipantContext(
            participant_id=identity.participant_id,
            signing_key=identity.signing_key,
            peer_keys=dict(peer_keys),
            random=self._random,
            workers=self._workers,
        )


def _phase_of(assignment: Assignment) -> SecAggPhase:
    try:
        phase = SecAggPhase(assignment.phase)
    except ValueError:
        raise UntrustedMessage(f"unknown secure-aggregation phase {assignment.phase!r}") from None
    if (phase is SecAggPhase.INPUTS) != (assignment.kind is AssignmentKind.TRAIN):
        raise UntrustedMessage(f"a {assignment.kind.value} task cannot be for phase {phase.value}")
    return phase


def _normalized(parameters: SecAggParameters) -> SecAggParameters:
    # The cohort is a set; its order on the wire carries no meaning.
    return replace(parameters, cohort=tuple(sorted(parameters.cohort)))


def model_digest(weights: list[npt.NDArray[Any]]) -> bytes:
    """SHA-256 of the weights' canonical encoding: the bytes the coordinator stores and serves."""
    return tensors_sha256(weights)


def round_config(
    assignment: Assignment,
    parameters: SecAggParameters,
    base_sha256: bytes,
    key_fingerprint: bytes = b"",
) -> RoundConfig:
    """The round as this organization signs it: the context binds everything that determines
    its input, as it received it (``fedsilo.protection.round_context``), and under paillier the
    job key it encrypts under (``key_fingerprint``: ``round_key_fingerprint`` of the key it
    holds; empty for secagg)."""
    context = round_context(
        protection=assignment.protection,
        job_id=assignment.job_id,
        round_number=assignment.round_number,
        task_name=assignment.task_name,
        algorithm=assignment.strategy.canonical(),
        base_version=assignment.model_version,
        base_model_sha256=base_sha256,
        training=assignment.training,
        parameters=parameters,
        min_participants=assignment.min_participants,
        paillier_key_fingerprint=key_fingerprint,
        dp=assignment.privacy,
    )
    return RoundConfig(
        job_id=assignment.job_id,
        round_id=assignment.round_id,
        cohort=parameters.cohort,
        threshold=parameters.threshold,
        vector_length=parameters.vector_length,
        modulus_bits=parameters.modulus_bits,
        context=context,
    )


def _check_unchanged(
    assignment: Assignment,
    parameters: SecAggParameters,
    state: SecureRoundState,
    client: SecAggClient,
    key_fingerprint: bytes,
) -> None:
    """Every phase of a round must carry the parameters its first phase carried (and, under
    paillier, the job key of the generation it started under)."""
    if _normalized(parameters) != state.parameters:
        raise ProtocolViolation("the round's parameters changed since it started")
    if round_config(assignment, parameters, state.base_sha256, key_fingerprint) != client.config:
        raise ProtocolViolation(
            "the round's job, round, cohort or settings changed since it started"
        )
    if assignment.protection.value != state.protection:
        raise ProtocolViolation(
            f"the round started under protection {state.protection}, not "
            f"{assignment.protection.value}"
        )


def _protection_of(assignment: Assignment) -> Protection:
    """The protection of a secure round: secagg or paillier (``none`` has no such rounds)."""
    if assignment.protection is Protection.NONE:
        raise UntrustedMessage("a secure-aggregation task for a round without protection")
    return assignment.protection


def _certificate_keys(certificates: Mapping[str, bytes]) -> dict[str, VerifyingKey]:
    """The keys of certificates accepted earlier in the round (checked when they were)."""
    return {
        org: verifying_key(x509.load_pem_x509_certificate(pem).public_key())
        for org, pem in certificates.items()
    }


def _delta(base: Weights, trained: Weights) -> npt.NDArray[np.float64]:
    """Trained minus base weights in float64, flattened in tensor order (as ``flatten``)."""
    if len(base) != len(trained) or any(
        np.shape(b) != np.shape(t) for b, t in zip(base, trained, strict=False)
    ):
        raise TaskFailed("the task returned weights of other shapes than the model it trained")
    # One pass into one vector: the ufunc casts each operand to float64 as it goes, the same
    # values as converting both tensors first, without three model-sized temporaries.
    delta = np.empty(sum(int(np.size(b)) for b in base), dtype=np.float64)
    start = 0
    for b, t in zip(base, trained, strict=True):
        end = start + int(np.size(b))
        np.subtract(
            np.asarray(t).ravel(),
            np.asarray(b).ravel(),
            out=delta[start:end],
            dtype=np.float64,
            casting="unsafe",
        )
        start = end
    return delta
