"""The coordinator's part of a paillier job's key ceremony: store, route, never open.

State is the job's rows in ``job_messages`` (kinds ``job_key``, ``dealt_key``,
``sealed:<receiver>``, ``confirm``); nothing is kept in memory. What each participant is asked:

- ``advertise`` if it has sent no job key;
- ``deal`` to the dealer, once at least ``min_participants`` job keys are in and no public key
  exists: the dealer is the lowest organization id among the first ``min_participants`` job
  keys accepted. Job keys arriving later never change it, so the organization asked to deal is
  the one whose dealt key is accepted (a second dealt key is refused);
- ``seal`` to the lowest-id key holder (a participant that confirmed) when some job-key holders
  have no sealed key yet (organizations that joined after the deal);
- ``receive`` to a job-key holder with a sealed key addressed to it that has not confirmed.

The coordinator checks the shapes, the senders' signatures against the certificates they
presented in the TLS handshake, and that sealed keys and confirmations name the one public
key; it cannot open a sealed key (they are encrypted under keys agreed between participants).

Key generations (docs/paillier.md, "Key rotation"): when an organization that holds the job's
key (its dealer, an organization it was sealed for, or one that confirmed it) is revoked,
:meth:`CeremonyCoordinator.rotate_if_revoked` starts generation ``g + 1`` before the next round
opens: a row of kind ``rotate:<g + 1>`` (no organization; its body names the revoked holders),
after which the same steps run again among the organizations still admitted, with their
messages stored under kinds prefixed ``g<g + 1>/``. Every step names the generation and
carries the signed job keys the revoked holders advertised in the generation they held, which
participants check against the membership list before they leave the old key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace

from coordinator.domain.jobs import Job, JobMessage
from coordinator.errors import InvalidRequest, WrongRoundPhase
from coordinator.persistence.store import Transaction
from coordinator.service.engines.secure_rounds import certificate_key
from fedsilo.logs import context
from fedsilo.paillier_versions import key_scope
from fedsilo.protection import SecAggParameters
from secagg import SecAggError, decode_fields, decode_text, encode_fields, encode_text
from secagg.paillier import DealtKey, JobKey, PaillierPublicKey, SealedKey

__all__ = ["ACTIONS", "CeremonyStep", "CeremonyCoordinator"]

ACTIONS = ("job_key", "dealt_key", "sealed", "confirm", "stopped")
"""What a participant may submit (SubmitCeremony ``action``). ``stopped``: the organization
stopped serving the job for good because a model version failed its verification; the body is
the reason (UTF-8), shown to the admin, and the organization is in no later cohort."""

_MAX_REASON_BYTES = 4096

_ROTATE = "rotate:"
"""The kind of the row that starts key generation ``n`` (``rotate:<n>``)."""

log = logging.getLogger("coordinator")

_MAX_BODY_BYTES = 4 << 20


@dataclass(frozen=True)
class CeremonyStep:
    """One ceremony task for one participant."""

    action: str
    dealer: str = ""
    key_bits: int = 0
    job_keys: tuple[tuple[bytes, bytes], ...] = ()
    dealt_key: bytes = b""
    dealer_certificate_pem: bytes = b""
    sealed_key: bytes = b""
    parameters: SecAggParameters | None = None
    generation: int = 0
    revoked_holders: tuple[tuple[int, bytes, bytes], ...] = ()
    """(generation, signed job key, certificate PEM) of every holder revoked from an earlier
    generation: why each rotation happened, for participants to check."""


@dataclass(frozen=True)
class _State:
    """The messages of the job's current key generation (``generation``)."""

    job_keys: dict[str, JobMessage]
    dealt: JobMessage | None
    sealed: dict[str, JobMessage]  # receiver -> message
    confirmed: tuple[str, ...]
    stopped: dict[str, str]  # org -> the reason it gave (any generation)
    generation: int = 0
    advertised: frozenset[str] = frozenset()  # sent a job key in any generation
    revoked_holders: tuple[tuple[int, bytes, bytes], ...] = ()
    last_change: float | None = None  # when the generation's latest row was accepted

    def dealer_for(self, min_participants: int) -> str | None:
        """Who deals: the lowest id among the first ``min_participants`` job keys accepted
        (``job_keys`` is in acceptance order); None while fewer are in."""
        if self.dealt is not None:
            return self.dealt.org_id
        first = list(self.job_keys)[: max(1, min_participants)]
        return min(first) if len(first) >= max(1, min_participants) else None


class CeremonyCoordinator:
    """Key-ceremony bookkeeping over the store."""

    @staticmethod
    def _state(tx: Transaction, job_id: str) -> _State:
        messages = tx.list_job_messages(job_id)
        rotations = {
            int(m.kind.removeprefix(_ROTATE)): m for m in messages if m.kind.startswith(_ROTATE)
        }
        generation = max(rotations, default=0)
        prefix = _prefix(generation)
        job_keys: dict[str, JobMessage] = {}
        sealed: dict[str, JobMessage] = {}
        dealt: JobMessage | None = None
        confirmed: list[str] = []
        stopped: dict[str, str] = {}
        advertised: set[str] = set()
        earlier_keys: dict[tuple[int, str], JobMessage] = {}
        last_change: float | None = None
        for message in messages:
            generation_of, kind = _split_kind(message.kind)
            if kind == "job_key":
                advertised.add(message.org_id)
                earlier_keys[generation_of, message.org_id] = message
            if message.kind == "stopped":
                # Stopping is for the job, whatever its key.
                stopped[message.org_id] = message.body.decode("utf-8", "replace")
                continue
            if message.kind == f"{_ROTATE}{generation}" or (
                generation_of == generation and message.kind.startswith(prefix)
            ):
                last_change = message.created_at
            if generation_of != generation or message.kind.startswith(_ROTATE):
                continue
            if kind == "job_key":
                job_keys[message.org_id] = message
            elif kind == "dealt_key":
                dealt = message
            elif kind.startswith("sealed:"):
                sealed[kind.removeprefix("sealed:")] = message
            elif kind == "confirm":
                confirmed.append(message.org_id)
        revoked_holders = []
        for new_generation, marker in sorted(rotations.items()):
            for org in _read_names(marker.body):
                advertised_key = earlier_keys.get((new_generation - 1, org))
                if advertised_key is not None:
                    revoked_holders.append(
                        (new_generation - 1, advertised_key.body, advertised_key.certificate_pem)
                    )
        return _State(
            job_keys,
            dealt,
            sealed,
            tuple(sorted(confirmed)),
            stopped,
            generation,
            frozenset(advertised),
            tuple(revoked_holders),
            last_change,
        )

    def rotation_note(self, tx: Transaction, job_id: str) -> str:
        """While a new key generation is being dealt: which, and whose revocation started it."""
        state = self._state(tx, job_id)
        if not state.generation or state.dealt is not None:
            return ""
        revoked = sorted(
            {JobKey.from_bytes(key).participant for _, key, _ in state.revoked_holders}
        )
        return (
            f"rotating the job's Paillier key: key generation {state.generation} is being dealt "
            f"(revoked key holders: {', '.join(revoked) or 'none advertised'})"
        )

    def generation(self, tx: Transaction, job_id: str) -> int:
        """The job's current key generation (0 until a rotation)."""
        return self._state(tx, job_id).generation

    def rotate_if_revoked(
        self, tx: Transaction, job: Job, revoked: set[str], now: float
    ) -> tuple[str, ...]:
        """Start the next key generation if an organization that holds the current key is
        revoked; returns those organizations (empty: the key is kept)."""
        state = self._state(tx, job.job_id)
        if state.dealt is None:
            return ()
        holders = {state.dealt.org_id, *state.sealed, *state.confirmed}
        compromised = tuple(sorted(holders & revoked))
        if not compromised:
            return ()
        generation = state.generation + 1
        tx.add_job_message(
            JobMessage(job.job_id, "", f"{_ROTATE}{generation}", _names(compromised), b"", "", now)
        )
        log.warning(
            "the job's Paillier key was held by revoked %s: key generation %d starts among the "
            "organizations still admitted",
            ", ".join(compromised),
            generation,
            **context(job=job.job_id, phase="ceremony"),
        )
        return compromised

    def holders(self, tx: Transaction, job_id: str) -> tuple[str, ...]:
        """The organizations that confirmed they hold the job's private key (sorted)."""
        return self._state(tx, job_id).confirmed

    def stopped(self, tx: Transaction, job_id: str) -> dict[str, str]:
        """The organizations that stopped serving the job for good, with their reasons."""
        return self._state(tx, job_id).stopped

    def settled(self, tx: Transaction, job: Job, live: tuple[str, ...], now: float) -> bool:
        """Whether a round may open: every live organization holds the current key, or the
        ceremony has been quiet for a phase deadline (the rest join a later round once they
        hold it). A key generation with no key dealt yet is never settled."""
        state = self._state(tx, job.job_id)
        if state.generation and state.dealt is None:
            return False
        if all(org in state.confirmed for org in live):
            return True
        last = now if state.last_change is None else state.last_change
        return now - last > job.spec.phase_timeout_seconds

    def public_key(self, tx: Transaction, job_id: str) -> PaillierPublicKey | None:
        dealt = self._state(tx, job_id).dealt
        if dealt is None:
            return None
        return PaillierPublicKey.from_bytes(DealtKey.from_bytes(dealt.body).public_key)

    def step_for(
        self, tx: Transaction, job: Job, org_id: str, parameters: SecAggParameters
    ) -> CeremonyStep | None:
        """The ceremony task of ``org_id`` in ``job`` now, or None."""
        state = self._state(tx, job.job_id)
        step = self._step(state, job, org_id, parameters)
        if step is None:
            return None
        return replace(step, generation=state.generation, revoked_holders=state.revoked_holders)

    @staticmethod
    def _step(
        state: _State, job: Job, org_id: str, parameters: SecAggParameters
    ) -> CeremonyStep | None:
        bits = job.spec.paillier_key_bits
        if org_id not in state.job_keys:
            return CeremonyStep("advertise", key_bits=bits, parameters=parameters)
        if state.dealt is None:
            if org_id != state.dealer_for(job.spec.min_participants):
                return None
            return CeremonyStep(
                "deal",
                dealer=org_id,
                key_bits=bits,
                job_keys=_advertised(state.job_keys.values()),
                parameters=parameters,
            )
        dealer = state.dealt.org_id
        if org_id == dealer and org_id not in state.confirmed:
            # A dealer that stopped after its public key finishes the deal (identical retries).
            others = [m for o, m in state.job_keys.items() if o != dealer]
            return CeremonyStep(
                "deal",
                dealer=org_id,
                key_bits=bits,
                job_keys=_advertised([state.job_keys[dealer], *others]),
                dealt_key=state.dealt.body,
                parameters=parameters,
            )
        if org_id in state.confirmed:
            waiting = [
                m
                for o, m in state.job_keys.items()
                if o != dealer and o not in state.sealed and o != org_id
            ]
            if waiting and org_id == state.confirmed[0]:
                return CeremonyStep(
                    "seal",
                    dealer=dealer,
                    key_bits=bits,
                    job_keys=_advertised(waiting),
                    dealt_key=state.dealt.body,
                    parameters=parameters,
                )
            return None
        sealed = state.sealed.get(org_id)
        if sealed is None:
            return None
        sender = state.job_keys[sealed.org_id]
        return CeremonyStep(
            "receive",
            dealer=dealer,
            key_bits=bits,
            job_keys=_advertised([sender]),
            dealt_key=state.dealt.body,
            dealer_certificate_pem=state.job_keys[dealer].certificate_pem,
            sealed_key=sealed.body,
            parameters=parameters,
        )

    def check(
        self,
        tx: Transaction,
        job: Job,
        org_id: str,
        action: str,
        body: bytes,
        certificate_pem: bytes,
    ) -> list[tuple[str, bytes, bytes]]:
        """Validate a ceremony message; return the (kind, body, certificate) rows to store."""
        if action not in ACTIONS:
            raise InvalidRequest(f"unknown ceremony action {action!r}")
        if len(body) > _MAX_BODY_BYTES:
            raise InvalidRequest(f"a ceremony message is limited to {_MAX_BODY_BYTES} bytes")
        state = self._state(tx, job.job_id)
        try:
            rows = self._check(job, state, org_id, action, body, certificate_pem)
        except SecAggError as exc:
            raise InvalidRequest(f"the {action} message was refused: {exc}") from None
        prefix = _prefix(state.generation)
        return [
            (kind if kind == "stopped" else prefix + kind, data, pem) for kind, data, pem in rows
        ]

    def _check(
        self,
        job: Job,
        state: _State,
        org_id: str,
        action: str,
        body: bytes,
        certificate_pem: bytes,
    ) -> list[tuple[str, bytes, bytes]]:
        scope = key_scope(job.job_id, state.generation)
        if action == "job_key":
            key = JobKey.from_bytes(body)
            if key.participant != org_id:
                raise InvalidRequest("a job key must name its sender")
            key.verify(scope, certificate_key(certificate_pem))
            return [("job_key", body, certificate_pem)]
        if action == "stopped":
            if org_id not in state.advertised:
                raise WrongRoundPhase("this organization has sent no job key")
            if len(body) > _MAX_REASON_BYTES:
                raise InvalidRequest(f"a reason is limited to {_MAX_REASON_BYTES} bytes")
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("a reason is UTF-8 text") from None
            return [("stopped", body, b"")]
        if org_id not in state.job_keys:
            raise WrongRoundPhase("this organization has sent no job key")
        if action == "dealt_key":
            if state.dealt is not None:
                raise WrongRoundPhase("the job's key was already dealt")
            if org_id != state.dealer_for(job.spec.min_participants):
                raise WrongRoundPhase("this organization is not the job's dealer")
            dealt = DealtKey.from_bytes(body)
            if dealt.dealer != org_id:
                raise InvalidRequest("a dealt key must name its dealer")
            public = dealt.verify(scope, certificate_key(state.job_keys[org_id].certificate_pem))
            if public.bits != job.spec.paillier_key_bits:
                raise InvalidRequest(
                    f"the job asks for a {job.spec.paillier_key_bits}-bit key, not {public.bits}"
                )
            return [("dealt_key", body, b"")]
        if state.dealt is None:
            raise WrongRoundPhase("the job's key has not been dealt yet")
        if action == "sealed":
            if org_id != state.dealt.org_id and org_id not in state.confirmed:
                raise WrongRoundPhase("only a holder of the job's key may seal it")
            rows = []
            for item in decode_fields(body):
                sealed = SealedKey.from_bytes(item)
                if sealed.sender != org_id:
                    raise InvalidRequest("a sealed key must name its sender")
                if sealed.receiver not in state.job_keys or sealed.receiver == org_id:
                    raise InvalidRequest(f"no job key of {sealed.receiver!r} to seal for")
                rows.append((f"sealed:{sealed.receiver}", item, b""))
            if not rows:
                raise InvalidRequest("no sealed keys in the message")
            return rows
        fingerprint = PaillierPublicKey.from_bytes(
            DealtKey.from_bytes(state.dealt.body).public_key
        ).fingerprint
        if body != fingerprint:
            raise InvalidRequest("the confirmation names another key")
        if org_id != state.dealt.org_id and org_id not in state.sealed:
            raise WrongRoundPhase("no key was sealed for this organization")
        return [("confirm", body, b"")]


def _advertised(messages: Iterable[JobMessage]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((m.body, m.certificate_pem) for m in messages)


def _prefix(generation: int) -> str:
    """What the kinds of a key generation's rows start with (nothing for generation 0)."""
    return f"g{generation}/" if generation else ""


def _split_kind(kind: str) -> tuple[int, str]:
    """(generation, kind without its prefix) of a stored row's kind."""
    head, slash, rest = kind.partition("/")
    if slash and head.startswith("g") and head[1:].isdigit():
        return int(head[1:]), rest
    return 0, kind


def _names(names: Iterable[str]) -> bytes:
    return encode_fields(encode_text(name) for name in names)


def _read_names(data: bytes) -> tuple[str, ...]:
    return tuple(decode_text(item) for item in decode_fields(data))
