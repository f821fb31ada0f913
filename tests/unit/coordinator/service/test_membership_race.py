"""An organization's first calls may arrive together: registration happens once, none fails."""

from __future__ import annotations

import threading
from pathlib import Path

from coordinator.domain.jobs import ParticipantStatus
from coordinator.persistence.store import Store
from coordinator.service.membership import TOUCH_INTERVAL, MembershipService


def test_concurrent_first_calls_register_the_organization_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        membership = MembershipService(store, auto_approve=True)
        # Make the race certain: every caller reads "unknown" before anyone inserts.
        original = store.transaction
        barrier = threading.Barrier(4)
        seen: list[BaseException] = []

        class RacingStore:
            def __getattr__(self, name: str) -> object:
                return getattr(store, name)

        racing = RacingStore()
        first_round = threading.local()

        def transaction():  # type: ignore[no-untyped-def]
            context = original()
            if not getattr(first_round, "done", False):
                first_round.done = True
                barrier.wait(timeout=10)
            return context

        racing.transaction = transaction  # type: ignore[attr-defined]
        membership._store = racing  # type: ignore[assignment]

        def call() -> None:
            try:
                membership.authenticate_participant("org-x")
            except BaseException as exc:  # noqa: BLE001 - reported below
                seen.append(exc)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert seen == []
        with store.transaction() as tx:
            participants = tx.list_participants()
        assert [(p.org_id, p.status) for p in participants] == [("org-x", ParticipantStatus.ACTIVE)]
    finally:
        store.close()


def test_last_seen_is_written_at_most_once_a_second_unless_the_certificate_changes(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        now = [1000.0]
        membership = MembershipService(store, auto_approve=True, clock=lambda: now[0])

        def stored() -> tuple[float, str]:
            with store.transaction() as tx:
                participant = tx.get_participant("org-x")
            assert participant is not None
            return participant.last_seen, participant.certificate_sha256

        membership.authenticate_participant("org-x", certificate_sha256="aa")
        assert stored() == (1000.0, "aa")
        now[0] = 1000.0 + TOUCH_INTERVAL / 2
        membership.authenticate_participant("org-x", certificate_sha256="aa")
        assert stored() == (1000.0, "aa")
        # A renewed certificate is recorded at once, with the time of the call.
        membership.authenticate_participant("org-x", certificate_sha256="bb")
        assert stored() == (1000.0 + TOUCH_INTERVAL / 2, "bb")
        now[0] = 1000.0 + 2 * TOUCH_INTERVAL
        membership.authenticate_participant("org-x")
        assert stored() == (1000.0 + 2 * TOUCH_INTERVAL, "bb")
        # A clock that went backwards is written too (never a last_seen in the future).
        now[0] = 990.0
        membership.authenticate_participant("org-x")
        assert stored() == (990.0, "bb")
    finally:
        store.close()
