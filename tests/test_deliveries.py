"""The delivery state machine: compare-and-swap transitions, each writing an event."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, insert, select, update

from outreach import db, deliveries, messages, suppression
from outreach.compose import Attachment
from outreach.errors import TransitionError
from outreach.models import (
    Campaign,
    CampaignState,
    Delivery,
    DeliveryAttachment,
    Event,
    Recipient,
    Status,
    utcnow,
)
from tests.plans import first_plan


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


def _two_deliveries(url: str) -> tuple[int, int]:
    """Two queued deliveries of one campaign."""
    with db.session_scope(url) as session:
        campaign = Campaign(name="c", template_dir="/t", sender="S <s@example.org>")
        people = [Recipient(key=f"{n}@example.org", family_name=n, email=f"{n}@example.org")
                  for n in ("a", "b")]  # fmt: skip
        session.add_all([campaign, *people])
        session.flush()
        rows = [
            Delivery(campaign_id=campaign.id, recipient_id=p.id, role="to", channel="email",
                     status=Status.QUEUED, message_id=f"<{p.key}>", address=p.email)
            for p in people
        ]  # fmt: skip
        session.add_all(rows)
        session.flush()
        return rows[0].id, rows[1].id


def test_a_claim_writes_the_verdict_held_back_and_only_it(database_url: str) -> None:
    """The send loop's turn: the last message's verdict written with the next claim (on
    PostgreSQL in one statement). Each row gets its own columns: the claim's kept message and
    attachments do not reach the verdict's row, the verdict's reply does not reach the claim's."""
    first, second = _two_deliveries(database_url)
    pdf = Attachment(filename="letter.pdf", content_type="application/pdf", data=b"%PDF-1.4")
    accepted_at = utcnow()
    with db.session_scope(database_url) as session:
        kept = messages.store_attachments(session, (pdf,))
        assert deliveries.claim(session, first, kept={"subject": "To A"}, attachments=kept)
    with db.session_scope(database_url) as session:
        verdict = deliveries.sent(first, "250 accepted", at=accepted_at)
        assert deliveries.claim(
            session, second, kept={"subject": "To B"}, attachments=kept, after=verdict
        )
    with db.session_scope(database_url) as session:
        a, b = session.get(Delivery, first), session.get(Delivery, second)
        assert a is not None and b is not None
        assert (a.status, a.sent_at, a.subject, a.attempts) == (
            Status.SENT, accepted_at, "To A", 1
        )  # fmt: skip
        assert (b.status, b.sent_at, b.subject, b.attempts) == (Status.SENDING, None, "To B", 1)
        assert [(x.delivery_id, x.filename) for x in session.scalars(select(DeliveryAttachment))
                ] == [(first, "letter.pdf"), (second, "letter.pdf")]  # fmt: skip
        events = session.execute(
            select(Event.delivery_id, Event.from_status, Event.to_status, Event.detail)
            .order_by(Event.id)
        ).all()  # fmt: skip
        assert events == [
            (first, "queued", "sending", ""),
            (first, "sending", "sent", "250 accepted"),
            (second, "queued", "sending", ""),
        ]


def test_a_verdict_is_written_even_when_the_claim_misses(database_url: str) -> None:
    """The claim that carries it lost its delivery to another worker: the last message's verdict
    is still recorded; a verdict for a delivery that moved on meanwhile is not."""
    first, second = _two_deliveries(database_url)
    with db.session_scope(database_url) as session:
        assert deliveries.claim(session, first)
        assert deliveries.claim(session, second)
    with db.session_scope(database_url) as session:
        assert not deliveries.claim(session, second, after=deliveries.failed(first, "550 no"))
    with db.session_scope(database_url) as session:
        assert not deliveries.claim(session, second, after=deliveries.sent(first, "250 ok"))
    with db.session_scope(database_url) as session:
        a = session.get(Delivery, first)
        assert a is not None and (a.status, a.last_error) == (Status.FAILED, "550 no")
        assert session.scalar(select(func.count()).select_from(Event)) == 3


@pytest.mark.parametrize("written", ["alone", "with the next claim"])
def test_a_verdict_of_an_earlier_attempt_does_not_land_on_the_next(
    database_url: str, written: str
) -> None:
    """A worker stalled past `sending_timeout` after its claim: the delivery was found unknown,
    resent and claimed again. The stalled worker's verdict, of attempt 1, writes nothing (a
    `deferred` over attempt 2, whose `sent` would then miss, meant a letter sent again); the
    verdict of attempt 2 is written."""
    first, second = _two_deliveries(database_url)
    with db.session_scope(database_url) as session:
        assert deliveries.claim(session, first)  # attempt 1, then the worker stalls
        assert deliveries.transition(session, first, Status.SENDING, Status.UNKNOWN)
        assert deliveries.transition(session, first, Status.UNKNOWN, Status.QUEUED)
        assert deliveries.claim(session, first)  # attempt 2, another worker
    stale = deliveries.deferred(first, "451 later", utcnow(), attempt=1)
    with db.session_scope(database_url) as session:
        if written == "alone":
            assert not deliveries.settle(session, stale)
        else:
            assert deliveries.claim(session, second, after=stale)
    with db.session_scope(database_url) as session:
        a = session.get(Delivery, first)
        assert a is not None and (a.status, a.attempts) == (Status.SENDING, 2)
        assert deliveries.settle(session, deliveries.sent(first, "250 ok", attempt=2))
    with db.session_scope(database_url) as session:
        assert session.scalar(select(Delivery.status).where(Delivery.id == first)) == Status.SENT
        moves = session.scalars(
            select(Event.to_status).where(Event.delivery_id == first).order_by(Event.id)
        )
        assert list(moves) == ["sending", "unknown", "queued", "sending", "sent"]


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


def test_a_chunk_of_ids_is_not_searched_by_status_with_stale_statistics(
    database_url: str,
) -> None:
    """The dispatcher moves deliveries in chunks of ids. Right after a campaign's deliveries are
    created no ANALYZE has run: PostgreSQL took `status = 'pending'` for one row and planned a
    chunk on the status index, reading every pending delivery for each chunk (100,000 rows a
    chunk at 100k recipients). The status is only checked (`deliveries._checked`), so the plan
    is left to the ids (here, 5,001 rows, a scan of the table; at 100k, the primary key)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a choice of PostgreSQL's planner")
    first = _one_delivery(database_url, Status.PENDING)
    with db.session_scope(database_url) as session:
        row = session.get(Delivery, first)
        assert row is not None
        keys = [f"r{i}@example.org" for i in range(5000)]
        session.execute(insert(Recipient), [{"key": key, "email": key} for key in keys])
        recipients = session.scalars(select(Recipient.id).where(Recipient.key.in_(keys)))
        session.execute(
            insert(Delivery),
            [
                {"campaign_id": row.campaign_id, "recipient_id": recipient, "role": "to",
                 "channel": "email", "status": Status.PENDING,
                 "message_id": f"<{recipient}@example.org>", "address": "a@example.org"}
                for recipient in recipients
            ],
        )  # fmt: skip
    with (
        first_plan(database_url, "WITH") as plans,  # the chunk and its Events
        db.session_scope(database_url) as session,
    ):
        moved = deliveries.transition_many(
            session, list(range(first, first + 50)), Status.PENDING, Status.QUEUED
        )
    assert len(moved) == 50
    assert "ix_deliveries_status_next" not in plans[0], plans[0]
