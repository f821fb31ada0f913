"""The consortium's membership list as this organization holds it: verified, newest, durable.

The coordinator hands on the membership list the consortium CA signed (``fedsilo.membership``);
this store keeps the one with the highest serial this organization verified, in
``state_dir/membership/list.json`` (directory 0700, file 0600, atomic writes), and refuses any
list with a lower serial, or another list under the serial it holds: a coordinator cannot bring
back a list from before a revocation, not even across the daemon's restarts.

Secure rounds and key ceremonies ask :meth:`MembershipStore.ready` before every step, then
:meth:`MembershipStore.check_peers` about every peer they deal with. Without a list,
``require_membership_list`` (docs/configuration.md) decides: true (the default) and no secure
round or ceremony step is answered until a list arrives; false and peers are checked against the
CA only, as before lists existed. A list held that the CA issued longer ago than
``accept.max_membership_age`` (by this organization's clock, with the clock skew allowed for
certificates) is no better than none: no step is answered until a newer list arrives, whatever
``require_membership_list`` says, so a coordinator that withholds a newer list (one revoking its
accomplice) keeps this organization on the old one for at most that long.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from fedsilo.config import AcceptSection, format_duration
from fedsilo.membership import (
    MembershipList,
    MembershipListError,
    NotAMember,
    verify_membership_list,
)
from participant.errors import (
    MembershipStale,
    MembershipUnavailable,
    ParticipantError,
    StateUnreadable,
    UntrustedMessage,
)
from participant.service.identity import utc_now
from participant.service.private_files import private_directory, write_private

__all__ = ["MembershipStore", "log_refused_member"]

log = logging.getLogger("participant")

DEFAULT_MAX_AGE = AcceptSection().membership_max_age()


def log_refused_member(exc: Exception, ctx: Mapping[str, Any]) -> None:
    """After a refusal: name the organization the membership list does not admit, if that was
    the reason, on a line of its own (operators search their logs for it)."""
    if isinstance(exc, NotAMember):
        log.error("organization %s is not admitted by the membership list", exc.org_id, **ctx)


class MembershipStore:
    """The newest verified membership list (see the module docstring); ``max_age`` is
    ``accept.max_membership_age``, ``clock`` this organization's clock."""

    def __init__(
        self,
        state_dir: Path,
        ca: Callable[[], x509.Certificate],
        *,
        required: bool = True,
        max_age: dt.timedelta = DEFAULT_MAX_AGE,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._path = private_directory(state_dir / "membership") / "list.json"
        self._ca = ca
        self.required = required
        self.max_age = max_age
        self._clock = clock
        self._current: MembershipList | None = None
        self._loaded = False
        self._warned_serial = 0

    def current(self) -> MembershipList | None:
        """The list held (None if none was ever accepted); StateUnreadable if its file is bad."""
        if not self._loaded:
            try:
                document = self._path.read_bytes()
            except FileNotFoundError:
                document = None
            if document is not None:
                try:
                    self._current = verify_membership_list(document, self._ca())
                except MembershipListError as exc:
                    # Never replaced silently: the file is this organization's memory of the
                    # highest serial, and a coordinator could otherwise hand back an older list.
                    raise StateUnreadable(
                        f"the stored membership list {self._path} is unusable ({exc}); no "
                        "secure work is answered until it is repaired or deleted"
                    ) from None
            self._loaded = True
        return self._current

    @property
    def serial(self) -> int:
        """The serial of the list held; 0 if none, or if the held one cannot be read now (the
        reason is reported where the list is used)."""
        try:
            held = self.current()
        except ParticipantError:
            return 0
        return 0 if held is None else held.serial

    def offer(self, document: bytes) -> bool:
        """Take a list the coordinator sent if it is the CA's and newer; True if it was taken.

        UntrustedMessage for a list that is not signed by the consortium CA, has a lower serial
        than the one held, or differs from the held one under the same serial.
        """
        try:
            offered = verify_membership_list(document, self._ca())
        except MembershipListError as exc:
            raise UntrustedMessage(
                f"refused the membership list the coordinator sent: {exc}"
            ) from None
        held = self.current()
        if held is not None:
            if offered.serial < held.serial:
                raise UntrustedMessage(
                    f"refused membership list {offered.serial}: this organization already "
                    f"holds list {held.serial} (a list never goes back)"
                )
            if offered.serial == held.serial:
                if offered.document != held.document:
                    raise UntrustedMessage(
                        f"refused membership list {offered.serial}: another list with the same "
                        "serial is held"
                    )
                return False
        # Written before it is used: after a restart the highest serial seen is still known.
        write_private(self._path, offered.document)
        self._current = offered
        log.info(
            "accepted membership list %d issued %s (%d members, %d revoked)",
            offered.serial,
            _issued(offered),
            len(offered.members),
            len(offered.revoked),
        )
        return True

    def check_peers(self, me: str, peers: Mapping[str, bytes | None]) -> None:
        """Every peer (org id to its certificate PEM, or None when only its id is known) must be
        a listed, non-revoked member with a listed certificate: NotAMember names the first that
        is not. MembershipUnavailable if no list is held and one is required."""
        held = self.current()
        if held is None:
            if self.required:
                raise MembershipUnavailable(
                    "no membership list signed by the consortium CA has reached this "
                    "organization yet (require_membership_list is true): publish one with "
                    "'fedsilo participants publish-membership'"
                )
            return
        for org_id in sorted(peers):
            if org_id != me:
                held.check_peer(org_id, peers[org_id])

    def check_key_holders(self, me: str, holders: Iterable[str]) -> None:
        """A paillier job's key is used only while everyone known to hold it is still admitted:
        NotAMember (naming the holder) once one of them is revoked or unlisted."""
        try:
            self.check_peers(me, dict.fromkeys(holders))
        except NotAMember as exc:
            raise NotAMember(
                f"the job's Paillier key was dealt or sealed to {exc.org_id!r}, which the "
                f"membership list no longer admits ({exc}): this participant no longer uses "
                "the key; the job needs a new key ceremony",
                exc.org_id,
            ) from None

    def ready(self) -> None:
        """MembershipUnavailable unless a list is held or none is required; MembershipStale if
        the list held is older than ``max_age``. Every secure round step and key-ceremony step
        passes here first."""
        held = self.current()
        if held is None:
            self.check_peers("", {})
            return
        now = self._clock()
        age = held.age(now)
        if held.is_stale(now, self.max_age):
            raise MembershipStale(
                f"membership list {held.serial} (issued {_issued(held)}) is "
                f"{format_duration(age)} old, older than accept.max_membership_age="
                f"{format_duration(self.max_age)}: no secure round or key-ceremony step is "
                "answered until a newer list arrives (the CA re-issues it with 'fedsilo pki "
                "membership sign --renew', the admin publishes it)"
            )
        if age > self.max_age * 3 / 4 and self._warned_serial != held.serial:
            # Once per list: time enough for the CA to re-issue it before rounds stop.
            self._warned_serial = held.serial
            log.warning(
                "membership list %d (issued %s) reaches accept.max_membership_age=%s in %s: "
                "ask the CA to re-issue it ('fedsilo pki membership sign --renew')",
                held.serial,
                _issued(held),
                format_duration(self.max_age),
                format_duration(self.max_age - age),
            )


def _issued(held: MembershipList) -> str:
    return held.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ")
