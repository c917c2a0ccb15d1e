"""The dispatcher: one short periodic step (a Celery beat task) that moves campaigns forward.

Each tick, in one transaction: start the campaigns that are due, resume those the circuit
breaker paused once their cool-off is over, recover what the broker or a worker lost, queue the
retries that are due, and release pending deliveries at the pace the rate limit allows, so the
broker never holds more than a short queue. Campaigns wait in the database, not in the broker.
Where a campaign's messages carry a PDF letter, a delivery is released once its letter is kept,
and the letters still missing are asked of the workers a few at a time (`prepare.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from outreach import campaigns, deliveries
from outreach.config import Settings
from outreach.models import Campaign, CampaignState, Channel, Delivery, Recipient, Status
from outreach.pdf import has_layout
from outreach.throttle import Limits
from outreach.windows import Window, zone_for

OPEN = (Status.PENDING, Status.QUEUED, Status.SENDING, Status.DEFERRED)
IS_PENDING = Delivery.status.between(Status.PENDING, Status.PENDING)
"""`status = 'pending'` as a range, read in RELEASE_ORDER, which only
ix_deliveries_campaign_status gives (the primary key would need a sort of every pending
delivery). Asked as an equality in id order, on the statistics gathered as the campaign was
scheduled (every delivery pending), PostgreSQL walked the primary key and filtered: each tick
read every delivery released before it, with their dead versions (at 100k recipients, 85
table rows a message sent; 9 since)."""
RELEASE_ORDER = (Delivery.campaign_id, Delivery.status, Delivery.id)


LETTERS_PER_TASK = 4  # about 0.7 s of rendering: spread over the worker processes


@dataclass
class Tick:
    """What one tick did; `batches` (to send) and `letters` (to render) are to be queued after
    the commit."""

    batches: list[list[int]] = field(default_factory=list)
    letters: list[list[int]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    requeued: int = 0
    unknown: int = 0


def account_limits(settings: Settings) -> Limits:
    return Limits(
        second=settings.rate_per_second,
        minute=settings.rate_per_minute,
        hour=settings.rate_per_hour,
        day=settings.rate_per_day,
    )


def tick(session: Session, settings: Settings, now: datetime) -> Tick:
    """One step of every campaign; the caller commits, then queues `result.batches`."""
    _take_turn(session)
    result = Tick()
    _start_due(session, now, result)
    _recover(session, settings, now, result)
    channels = campaigns.sendable_channels(settings)
    result.letters = batches(_ask_letters(session, settings, channels, now), LETTERS_PER_TASK)
    room = settings.max_in_flight - _in_flight(session)
    for campaign in _running(session):
        limits = account_limits(settings).tighter(campaign.rate)
        budget = room
        if limits.second:  # top up to two ticks' worth in flight: no backlog in the broker
            budget = min(room, _paced(limits, settings) - _in_flight(session, campaign))
        queued = _due_retries(session, campaign, now, budget)
        ready = _releasable(session, campaign, channels, now, budget - len(queued))
        queued += _queue(session, ready)
        room -= len(queued)
        result.batches += batches(queued, settings.batch_size)
        done = not queued and _finished(session, campaign, channels)
        if done and campaigns.advance(session, campaign, CampaignState.RUNNING, CampaignState.DONE):
            campaigns.log(session, campaign, "done: no delivery left to send")
            result.finished.append(campaign.name)
    return result


def _take_turn(session: Session) -> None:
    """Wait for a tick running elsewhere to commit, and make the next one wait for this one's
    (beat's ticks pile up behind the batches in the queue and then run side by side;
    `campaign send` ticks too). Side by side, each counted what was in flight before the
    other's commit, so together they released twice `max_in_flight` (3,968 against 2,000, end
    to end). On PostgreSQL one's FOR UPDATE SKIP LOCKED, finding a delivery the other had just
    queued, also locked it to recheck it and kept the lock until its own commit: a worker's
    claim then skipped the delivery as taken, and it waited `queued_timeout` (5 minutes) to be
    queued again."""
    campaigns.tick_turn(session)


def _start_due(session: Session, now: datetime, result: Tick) -> None:
    due = list(
        session.scalars(
            select(Campaign).where(
                or_(
                    (Campaign.state == CampaignState.SCHEDULED) & (Campaign.scheduled_at <= now),
                    (Campaign.state == CampaignState.PAUSED) & (Campaign.resume_at <= now),
                )
            )
        )
    )
    for campaign in due:
        was = campaign.state
        what = "started" if was == CampaignState.SCHEDULED else "resumed"
        if campaigns.advance(
            session, campaign, was, CampaignState.RUNNING, paused_reason="", resume_at=None
        ):
            campaigns.log(session, campaign, what)
            result.started.append(campaign.name)


def _recover(session: Session, settings: Settings, now: datetime, result: Tick) -> None:
    """`sending` for too long: a worker died in the uncertain window, so `unknown`, never a
    silent resend. `queued` for too long: the broker lost it, so queue it again."""
    stale_sending = _stale(
        session, Status.SENDING, now - timedelta(seconds=settings.sending_timeout)
    )
    result.unknown += len(
        deliveries.transition_many(
            session, stale_sending, Status.SENDING, Status.UNKNOWN,
            detail=f"still sending after {settings.sending_timeout:g}s: the worker was lost; "
            "the server may have accepted it",
        )
    )  # fmt: skip
    stale_queued = _stale(session, Status.QUEUED, now - timedelta(seconds=settings.queued_timeout))
    requeued = deliveries.transition_many(
        session, stale_queued, Status.QUEUED, Status.QUEUED,
        detail=f"unclaimed for {settings.queued_timeout:g}s: queued again",
    )  # fmt: skip
    result.requeued += len(requeued)
    result.batches += batches(requeued, settings.batch_size)


def _stale(session: Session, status: Status, before: datetime) -> list[int]:
    query = (
        select(Delivery.id)
        .where(Delivery.status == status, Delivery.updated_at < before)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def _in_flight(session: Session, campaign: Campaign | None = None) -> int:
    query = select(func.count()).where(Delivery.status.in_((Status.QUEUED, Status.SENDING)))
    if campaign is not None:
        query = query.where(Delivery.campaign_id == campaign.id)
    return session.scalar(query) or 0


def _running(session: Session) -> list[Campaign]:
    query = select(Campaign).where(Campaign.state == CampaignState.RUNNING).order_by(Campaign.id)
    return list(session.scalars(query))


def _paced(limits: Limits, settings: Settings) -> int:
    """Enough for two ticks at the per-second rate: the workers never starve, the broker
    never holds a backlog."""
    return max(1, math.ceil(limits.second * settings.dispatch_seconds * 2))


def _due_retries(session: Session, campaign: Campaign, now: datetime, budget: int) -> list[int]:
    if budget <= 0:
        return []
    query = (
        select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign.id,
            Delivery.status == Status.DEFERRED,
            Delivery.next_attempt_at <= now,
        )
        .order_by(Delivery.next_attempt_at)
        .limit(budget)
        .with_for_update(skip_locked=True)
    )
    due = list(session.scalars(query))
    return deliveries.transition_many(
        session, due, Status.DEFERRED, Status.QUEUED, detail="retry due"
    )


def _releasable(
    session: Session, campaign: Campaign, channels: tuple[Channel, ...], now: datetime, budget: int
) -> list[int]:
    """Pending deliveries that may go now, their PDF letter kept if they carry one; those
    outside their send window get the time it opens in `next_attempt_at` and wait."""
    if budget <= 0:
        return []
    conditions = [
        Delivery.campaign_id == campaign.id,
        IS_PENDING,
        Delivery.channel.in_(channels),
        or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
    ]
    if has_layout(Path(campaign.template_dir)):
        conditions.append(Delivery.letter_sha256.is_not(None))
    query = (
        select(Delivery.id, Recipient.timezone, Recipient.country)
        .join(Recipient, Recipient.id == Delivery.recipient_id)
        .where(*conditions)
        .order_by(*RELEASE_ORDER)
        .limit(budget)
        .with_for_update(of=Delivery, skip_locked=True)
    )
    rows = session.execute(query).all()
    if not campaign.send_window:
        return [r.id for r in rows]
    window = Window.from_json(campaign.send_window)
    ready: list[int] = []
    for row in rows:
        opens = window.next_open(now, zone_for(row.timezone, row.country, campaign.timezone))
        if opens <= now:
            ready.append(row.id)
        else:
            session.execute(
                update(Delivery).where(Delivery.id == row.id).values(next_attempt_at=opens)
            )
    return ready


def _ask_letters(
    session: Session, settings: Settings, channels: tuple[Channel, ...], now: datetime
) -> list[int]:
    """Pending deliveries of running and scheduled campaigns with a letter layout whose letter
    is missing, up to `letters_ahead` asked and not yet kept. A request unanswered after
    `queued_timeout` (the broker lost it) is asked again."""
    lettered = [
        c.id
        for c in session.scalars(
            select(Campaign).where(
                Campaign.state.in_((CampaignState.RUNNING, CampaignState.SCHEDULED))
            )
        )
        if has_layout(Path(c.template_dir))
    ]
    if not lettered:
        return []
    missing = (
        Delivery.campaign_id.in_(lettered),
        IS_PENDING,
        Delivery.channel.in_(channels),
        Delivery.letter_sha256.is_(None),
    )
    fresh = now - timedelta(seconds=settings.queued_timeout)
    asked = session.scalar(
        select(func.count()).where(*missing, Delivery.letter_requested_at >= fresh)
    )
    room = settings.letters_ahead - (asked or 0)
    if room <= 0:
        return []
    query = (
        select(Delivery.id)
        .where(
            *missing,
            or_(Delivery.letter_requested_at.is_(None), Delivery.letter_requested_at < fresh),
        )
        .order_by(*RELEASE_ORDER)
        .limit(room)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(Delivery).where(Delivery.id.in_(ids)).values(letter_requested_at=now)
        )
    return ids


def _queue(session: Session, ids: list[int]) -> list[int]:
    return deliveries.transition_many(session, ids, Status.PENDING, Status.QUEUED)


def _finished(session: Session, campaign: Campaign, channels: tuple[Channel, ...]) -> bool:
    """No delivery left to send: asked as EXISTS, which stops at the first one (a count read
    every pending delivery of a large campaign at every tick), and only at a tick that queued
    none of the campaign's (the planner may scan the whole table for it)."""
    query = select(Delivery.id).where(
        Delivery.campaign_id == campaign.id,
        Delivery.channel.in_(channels),
        Delivery.status.in_(OPEN),
    )
    return not session.scalar(select(query.exists()))


def batches(ids: list[int], size: int) -> list[list[int]]:
    """Ids in groups of `size`: each group is one task, sent over one SMTP connection."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]
