"""Membership use cases: who may take part, revocation of organizations and certificates, audit.

An organization is known by the org id in its certificate. Its first call registers it as
PENDING (or ACTIVE when the coordinator runs with ``auto_approve``); only an admin makes it
ACTIVE. A revoked organization, or a revoked certificate, is refused on its next call: the
revocation set is kept in memory and updated in the same process that writes it, so no restart
is needed.

Participants do not take the coordinator's word on membership: the consortium CA signs a
membership list (``fedsilo.membership``) that the admin publishes here; the coordinator checks
it against its own CA certificate, keeps the newest and hands it to participants, which verify
it themselves and check every peer of a secure round or key ceremony against it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from coordinator.domain.jobs import Participant, ParticipantStatus
from coordinator.errors import InvalidRequest, NotAuthorized, NotFound, StaleMembershipList
from coordinator.persistence.store import DuplicateKey, Store, Transaction
from fedsilo.logs import context
from fedsilo.membership import MembershipListError, verify_membership_list

__all__ = ["TOUCH_INTERVAL", "AuditEvent", "MembershipService"]

log = logging.getLogger("coordinator.membership")

_SERIAL = re.compile(r"[0-9a-f]{1,64}")
MAX_AUDIT_EVENTS = 10_000
TOUCH_INTERVAL = 1.0
"""Seconds within which a call does not write ``last_seen`` again: liveness is judged over
``limits.liveness_seconds`` (30 s by default), and a write per call (a secure round makes dozens
within a second) would only make the organizations' concurrent calls queue for SQLite's single
writer lock."""


@dataclass(frozen=True)
class AuditEvent:
    event_id: int
    at: float
    actor: str
    action: str
    outcome: str
    detail: str


class MembershipService:
    """Registration, approval, revocation and the audit log."""

    def __init__(
        self,
        store: Store,
        *,
        auto_approve: bool = False,
        clock: Callable[[], float] = time.time,
        ca: x509.Certificate | None = None,
    ) -> None:
        self._store = store
        self._auto_approve = auto_approve
        self._clock = clock
        self._ca = ca
        self._lock = threading.Lock()
        with store.transaction() as tx:
            self._revoked = tx.revoked_serials()
            self._membership_list = tx.latest_membership_list()

    # -- callers --------------------------------------------------------------------------------

    def authenticate_participant(
        self, org_id: str, *, require_active: bool = True, certificate_sha256: str = ""
    ) -> Participant:
        """Register on first contact and refresh liveness; refuse revoked (and pending) members.

        ``certificate_sha256`` (of the caller's certificate) is kept for the admin who approves.
        """
        now = self._clock()
        try:
            participant = self._register_or_touch(org_id, now, certificate_sha256)
        except DuplicateKey:
            # Two first calls of one organization raced; the other one registered it.
            participant = self._register_or_touch(org_id, now, certificate_sha256)
        if participant.status is ParticipantStatus.REVOKED:
            raise NotAuthorized("this organization's membership is revoked")
        if require_active and participant.status is not ParticipantStatus.ACTIVE:
            raise NotAuthorized("this organization's membership is pending an admin's approval")
        return participant

    def _register_or_touch(self, org_id: str, now: float, certificate_sha256: str) -> Participant:
        with self._store.transaction() as tx:
            participant = tx.get_participant(org_id)
            if participant is None:
                status = (
                    ParticipantStatus.ACTIVE if self._auto_approve else ParticipantStatus.PENDING
                )
                participant = Participant(org_id, status, now, now, certificate_sha256)
                tx.add_participant(participant)
                tx.add_audit(now, org_id, "participant.register", status.value, "")
                log.info("new organization registered as %s", status.value, **context(org=org_id))
                return participant
            certificate_changed = bool(certificate_sha256) and (
                certificate_sha256 != participant.certificate_sha256
            )
            if certificate_changed or not 0 <= now - participant.last_seen < TOUCH_INTERVAL:
                tx.touch_participant(org_id, now, certificate_sha256)
            return dataclasses.replace(
                participant,
                last_seen=now,
                certificate_sha256=certificate_sha256 or participant.certificate_sha256,
            )

    def is_certificate_revoked(self, serial_hex: str) -> bool:
        return serial_hex in self._revoked

    # -- admin ----------------------------------------------------------------------------------

    def list_participants(self) -> list[Participant]:
        with self._store.transaction() as tx:
            return tx.list_participants()

    def approve(self, org_id: str, actor: str) -> Participant:
        return self._set_status(org_id, ParticipantStatus.ACTIVE, actor, "participant.approve")

    def revoke(self, org_id: str, actor: str) -> Participant:
        return self._set_status(org_id, ParticipantStatus.REVOKED, actor, "participant.revoke")

    def _set_status(
        self, org_id: str, status: ParticipantStatus, actor: str, action: str
    ) -> Participant:
        with self._store.transaction() as tx:
            participant = tx.get_participant(org_id)
            if participant is None:
                raise NotFound("no such organization (it registers on its first call)")
            if (
                participant.status is ParticipantStatus.REVOKED
                and status is ParticipantStatus.ACTIVE
            ):
                raise InvalidRequest("a revoked organization cannot be approved again")
            tx.set_participant_status(org_id, status)
            tx.add_audit(self._clock(), actor, action, "ok", f"org={org_id}")
        log.info("%s by %s", action, actor, **context(org=org_id))
        return dataclasses.replace(participant, status=status)

    def revoke_certificate(self, serial_hex: str, reason: str, actor: str) -> bool:
        """Revoke one certificate by serial; returns True if it was already revoked."""
        serial = serial_hex.strip().lower()
        if not _SERIAL.fullmatch(serial) or int(serial, 16) == 0:
            raise InvalidRequest("serial must be the certificate's serial number in hex")
        serial = format(int(serial, 16), "x")  # the form identities carry: no leading zeros
        if len(reason) > 500:
            raise InvalidRequest("reason must be at most 500 characters")
        with self._lock:
            if serial in self._revoked:
                return True
            try:
                with self._store.transaction() as tx:
                    tx.add_revoked_certificate(serial, reason, actor, self._clock())
                    tx.add_audit(
                        self._clock(), actor, "certificate.revoke", "ok", f"serial={serial}"
                    )
            except DuplicateKey:
                pass  # revoked meanwhile by another coordinator process sharing the database
            self._revoked.add(serial)
        log.warning("certificate %s revoked by %s", serial, actor)
        return False

    def publish_membership_list(self, document: bytes, actor: str) -> tuple[int, bool]:
        """Keep a membership list signed by the consortium CA; returns its serial and whether
        this very list was already published. A list with a serial not above the current one is
        refused (StaleMembershipList): participants would refuse it too.

        Organizations the list revokes are revoked here as well (audited as
        ``participant.revoke``), so this coordinator stops putting them in cohorts, as every
        participant would refuse those rounds anyway."""
        if self._ca is None:
            raise InvalidRequest(
                "this coordinator runs without TLS: it has no consortium CA to check a "
                "membership list against"
            )
        try:
            published = verify_membership_list(document, self._ca)
        except MembershipListError as exc:
            raise InvalidRequest(f"membership list refused: {exc}") from None
        with self._lock:
            with self._store.transaction() as tx:
                current = tx.latest_membership_list()
                if current is not None and published.serial <= current[0]:
                    if current == (published.serial, document):
                        return published.serial, True
                    raise StaleMembershipList(
                        f"membership list {published.serial} is not newer than the published "
                        f"list {current[0]}"
                    )
                tx.add_membership_list(published.serial, document, actor, self._clock())
                revoked_here = self._revoke_listed(tx, published.revoked, published.serial, actor)
                tx.add_audit(
                    self._clock(),
                    actor,
                    "membership.publish",
                    "ok",
                    f"serial={published.serial} members={len(published.members)} "
                    f"revoked={','.join(sorted(published.revoked)) or '-'}",
                )
            self._membership_list = (published.serial, document)
        log.info(
            "membership list %d published by %s (%d members, %d revoked)",
            published.serial,
            actor,
            len(published.members),
            len(published.revoked),
        )
        for org_id in revoked_here:
            log.warning(
                "revoked: membership list %d revokes it", published.serial, **context(org=org_id)
            )
        return published.serial, False

    def _revoke_listed(
        self, tx: Transaction, revoked: frozenset[str], serial: int, actor: str
    ) -> list[str]:
        changed = []
        for org_id in sorted(revoked):
            participant = tx.get_participant(org_id)
            if participant is None or participant.status is ParticipantStatus.REVOKED:
                continue
            tx.set_participant_status(org_id, ParticipantStatus.REVOKED)
            tx.add_audit(
                self._clock(),
                actor,
                "participant.revoke",
                "ok",
                f"org={org_id} (membership list {serial})",
            )
            changed.append(org_id)
        return changed

    def membership_list_after(self, serial: int) -> bytes:
        """The newest published list if its serial is above ``serial``, else empty bytes."""
        current = self._membership_list
        if current is None or current[0] <= serial:
            return b""
        return current[1]

    def record(self, actor: str, action: str, outcome: str, detail: str = "") -> None:
        """Write an audit event (rejected requests, admin actions)."""
        with self._store.transaction() as tx:
            tx.add_audit(self._clock(), actor, action, outcome, detail)

    def audit_events(self, limit: int = 100) -> list[AuditEvent]:
        if not 1 <= limit <= MAX_AUDIT_EVENTS:
            raise InvalidRequest(f"limit must be between 1 and {MAX_AUDIT_EVENTS}")
        with self._store.transaction() as tx:
            rows: list[dict[str, Any]] = tx.list_audit(limit)
        return [
            AuditEvent(r["id"], r["at"], r["actor"], r["action"], r["outcome"], r["detail"])
            for r in rows
        ]
