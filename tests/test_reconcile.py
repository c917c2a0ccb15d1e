"""`deliveries reconcile`: an unknown delivery whose Bcc archive copy is in the team's mailbox
(a real Dovecot over TLS) was taken by the server, so it is sent; one without stays unknown."""

from __future__ import annotations

from sqlalchemy import select, update

from outreach import db, deliveries, messages
from outreach.config import Settings, load_settings
from outreach.inbox import ImapMailbox
from outreach.models import Campaign, Delivery, Event, Status
from outreach.reconcile import reconcile
from tests import inbound
from tests.dovecot import Dovecot, dovecot  # noqa: F401


def _two_unknown(database_url: str, settings: Settings, dovecot: Dovecot) -> tuple[int, int]:  # noqa: F811
    """Two unknown deliveries of a campaign with an archive Bcc; the first one's copy in the
    mailbox, the second one's not."""
    with db.session_scope(database_url) as session:
        campaign = inbound.send_in_database(session, settings)
        session.execute(update(Campaign).values(bcc=["archive@odfoundation.example"]))
        # As a worker that died in the uncertain window leaves them (after recovery):
        session.execute(update(Delivery).where(Delivery.status == "sent").values(status="unknown"))
        first, second, *_ = session.scalars(
            select(Delivery).where(
                Delivery.campaign_id == campaign.id, Delivery.status == "unknown"
            )
        ).all()
        archived = messages.rebuild(first)
        ids = (first.id, second.id)
    assert archived is not None
    dovecot.append(archived)
    return ids


def test_found_archive_copy_settles_unknown_as_sent(
    env: dict[str, str],
    database_url: str,
    dovecot: Dovecot,  # noqa: F811
) -> None:
    settings: Settings = load_settings(database_url=database_url, **dovecot.settings_overrides())
    ids = _two_unknown(database_url, settings, dovecot)

    sessions = db.session_factory(database_url)
    with ImapMailbox.connect(settings) as box:
        result = reconcile(sessions, box, "INBOX")
    assert result.found == [ids[0]] and ids[1] in result.missing
    with db.session_scope(database_url) as session:
        assert session.get(Delivery, ids[0]).status == Status.SENT  # type: ignore[union-attr]
        assert session.get(Delivery, ids[1]).status == Status.UNKNOWN  # type: ignore[union-attr]
        (event,) = session.scalars(
            select(Event).where(Event.to_status == "sent", Event.from_status == "unknown")
        ).all()
        assert event.delivery_id == ids[0] and "archive copy" in event.detail


def test_a_copy_an_earlier_attempt_left_for_the_archive_alone_proves_nothing(
    env: dict[str, str],
    database_url: str,
    dovecot: Dovecot,  # noqa: F811
) -> None:
    """The server refused the official (451 at RCPT) and took the archive's copy, the retry
    ended unknown: the copy found carries the same Message-ID, and may be the first attempt's."""
    settings: Settings = load_settings(database_url=database_url, **dovecot.settings_overrides())
    first, _ = _two_unknown(database_url, settings, dovecot)
    with db.session_scope(database_url) as session:
        reason = f"451 4.2.0 try later (refused x@example.org; {deliveries.ARCHIVE_ONLY})"
        detail = f"{reason} (next attempt 2026-12-06 10:00:00 UTC)"
        session.add(
            Event(
                delivery_id=first, kind="status", from_status=Status.SENDING,
                to_status=Status.DEFERRED, detail=detail,
            )
        )  # fmt: skip

    sessions = db.session_factory(database_url)
    with ImapMailbox.connect(settings) as box:
        result = reconcile(sessions, box, "INBOX")
    assert result.archive_only == [first] and first not in result.found
    with db.session_scope(database_url) as session:
        assert session.get(Delivery, first).status == Status.UNKNOWN  # type: ignore[union-attr]
