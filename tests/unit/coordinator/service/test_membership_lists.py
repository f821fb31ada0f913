"""Publishing the consortium CA's membership list at the coordinator: checked, newest, audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.domain.jobs import ParticipantStatus
from coordinator.errors import InvalidRequest, NotAuthorized, StaleMembershipList
from coordinator.persistence.store import Store
from coordinator.service.membership import MembershipService
from fedsilo.membership import sign_membership_list
from fedsilo.pki import CertificateAuthority, create_ca

MEMBERS = {"org-a": ["a" * 64], "org-b": ["b" * 64]}


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return create_ca("coordinator test CA")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    yield store
    store.close()


def _signed(ca: CertificateAuthority, serial: int, revoked: tuple[str, ...] = ()) -> bytes:
    return sign_membership_list(ca.cert, ca.key, MEMBERS, revoked, serial)


def test_the_newest_list_is_kept_handed_on_when_newer_and_survives_a_restart(
    ca: CertificateAuthority, store: Store
) -> None:
    service = MembershipService(store, ca=ca.cert)
    assert service.membership_list_after(0) == b""
    first, second = _signed(ca, 3), _signed(ca, 4, revoked=("org-c",))
    assert service.publish_membership_list(first, "admin") == (3, False)
    assert service.publish_membership_list(second, "admin") == (4, False)
    assert service.membership_list_after(0) == second
    assert service.membership_list_after(3) == second
    assert service.membership_list_after(4) == b""  # the participant holds it already
    restarted = MembershipService(store, ca=ca.cert)
    assert restarted.membership_list_after(0) == second
    events = [e for e in restarted.audit_events() if e.action == "membership.publish"]
    assert [e.detail for e in events] == [
        "serial=4 members=2 revoked=org-c",
        "serial=3 members=2 revoked=-",
    ]


def test_a_list_that_does_not_go_forward_is_refused(ca: CertificateAuthority, store: Store) -> None:
    service = MembershipService(store, ca=ca.cert)
    current = _signed(ca, 5, revoked=("org-c",))
    service.publish_membership_list(current, "admin")
    assert service.publish_membership_list(current, "admin") == (5, True)
    with pytest.raises(StaleMembershipList, match="not newer than the published list 5"):
        service.publish_membership_list(_signed(ca, 4), "admin")
    with pytest.raises(StaleMembershipList):
        service.publish_membership_list(_signed(ca, 5), "admin")  # another list, same serial
    assert service.membership_list_after(0) == current


def test_a_list_not_signed_by_the_coordinators_ca_is_refused(
    ca: CertificateAuthority, store: Store
) -> None:
    service = MembershipService(store, ca=ca.cert)
    with pytest.raises(InvalidRequest, match="not signed by the consortium CA"):
        service.publish_membership_list(_signed(create_ca("another"), 9), "admin")
    assert service.membership_list_after(0) == b""


def test_without_a_ca_no_list_is_accepted(ca: CertificateAuthority, store: Store) -> None:
    with pytest.raises(InvalidRequest, match="without TLS"):
        MembershipService(store).publish_membership_list(_signed(ca, 1), "admin")


def test_organizations_the_list_revokes_are_revoked_here_too(
    ca: CertificateAuthority, store: Store
) -> None:
    service = MembershipService(store, auto_approve=True, ca=ca.cert)
    for org in ("org-a", "org-c"):
        service.authenticate_participant(org)
    service.publish_membership_list(_signed(ca, 2, revoked=("org-c", "org-z")), "admin")
    statuses = {p.org_id: p.status for p in service.list_participants()}
    assert statuses == {"org-a": ParticipantStatus.ACTIVE, "org-c": ParticipantStatus.REVOKED}
    with pytest.raises(NotAuthorized, match="revoked"):
        service.authenticate_participant("org-c")
    revocations = [e.detail for e in service.audit_events() if e.action == "participant.revoke"]
    assert revocations == ["org=org-c (membership list 2)"]
