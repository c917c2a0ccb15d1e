"""The delivery state machine: compare-and-swap transitions, each writing an event."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, update

from outreach import db, deliveries, suppression
from outreach.errors import TransitionError
from outreach.models import Campaign, CampaignState, Delivery, Event, Recipient, Status


def _one_delivery(url: str, status: Status = Status.QUEUED) -> int:
    with db.session_scope(url) as session:
        recipient = Recipient(key="a@example.org", family_name="A", email="a@example.org")
        campaign = Campaign(name="c", template_dir="/t", sender="S <s@example.org>")
        session.add_all([recipient, campaign])
        session.flush()
        delivery = Delivery(
            campaign_id=campaign.id,
            recipient_id=recipient.id,
            role="to",
            channel="email",
            status=status,
            message_id="<1@example.org>",
            address="a@example.org",
        )
        session.add(delivery)
        session.flush()
        return delivery.id


def test_claim_writes_status_attempt_and_event(database_url: str) -> None:
    delivery_id = _one_delivery(database_url)
    with db.session_scope(database_url) as session:
        assert deliveries.claim(session, delivery_id)
    with db.session_scope(database_url) as session:
        d = session.get(Delivery, delivery_id)
        assert d is not None and d.status == Status.SENDING and d.attempts == 1
        (event,) = session.scalars(select(Event)).all()
        assert (event.from_status, event.to_status) == ("queued", "sending")


def test_a_second_claim_does_nothing(database_url: str) -> None:
    delivery_id = _one_delivery(database_url)
    with db.session_scope(database_url) as session:
        assert deliveries.claim(session, delivery_id)
    with db.session_scope(database_url) as session:
        assert not deliveries.claim(session, delivery_id)
        assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_the_send_loops_claim_misses_unless_running_and_not_suppressed(database_url: str) -> None:
    delivery_id = _one_delivery(database_url)
    with db.session_scope(database_url) as session:
        assert not deliveries.claim(session, delivery_id, address="a@example.org")  # a draft
        session.execute(update(Campaign).values(state=CampaignState.RUNNING))
        suppression.add(session, "A@example.org", "asked")
        assert not deliveries.claim(session, delivery_id, address="a@example.org")
        suppression.remove(session, "a@example.org")
        assert deliveries.claim(session, delivery_id, address="a@example.org")
        assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_illegal_transition_raises_and_writes_nothing(database_url: str) -> None:
    delivery_id = _one_delivery(database_url, Status.SENT)
    with db.session_scope(database_url) as session, pytest.raises(TransitionError):
        deliveries.transition(session, delivery_id, Status.SENT, Status.QUEUED)
    with db.session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 0


def test_racing_workers_one_wins(database_url: str) -> None:
    """Eight threads, each with its own connection, claim the same delivery at once."""
    delivery_id = _one_delivery(database_url)
    barrier = threading.Barrier(8)
    wins: list[bool] = []

    def race() -> None:
        barrier.wait()
        with db.session_scope(database_url) as session:
            wins.append(deliveries.claim(session, delivery_id))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    with db.session_scope(database_url) as session:
        d = session.get(Delivery, delivery_id)
        assert d is not None and d.attempts == 1


def test_transition_many_moves_only_those_in_the_source_state(database_url: str) -> None:
    delivery_id = _one_delivery(database_url, Status.PENDING)
    with db.session_scope(database_url) as session:
        moved = deliveries.transition_many(
            session, [delivery_id, 999], Status.PENDING, Status.QUEUED
        )
        assert moved == [delivery_id]
        assert (
            deliveries.transition_many(session, [delivery_id], Status.PENDING, Status.QUEUED) == []
        )


def test_claim_skips_a_row_another_transaction_holds(database_url: str) -> None:
    """PostgreSQL: a worker does not wait on a delivery another one is busy with."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite's writers take turns")
    delivery_id = _one_delivery(database_url)
    holder = db.session_factory(database_url)()
    try:
        holder.execute(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
        with db.session_scope(database_url) as session:
            assert not deliveries.claim(session, delivery_id)
    finally:
        holder.rollback()
        holder.close()
    with db.session_scope(database_url) as session:
        assert deliveries.claim(session, delivery_id)
