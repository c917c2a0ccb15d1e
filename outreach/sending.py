"""The send loop for one batch of deliveries, over one SMTP connection.

For each delivery: prepare its message while it is still `queued` (or reuse what was kept on an
earlier attempt), claim it (`queued -> sending`, committed together with the kept message), send
it, and commit the result before the next message's DATA. So at most one message per connection
is ever in the uncertain window, and a worker that dies there leaves a `sending` row that recovery
turns into `unknown` instead of sending it twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parseaddr

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from outreach import deliveries
from outreach.compose import compose, envelope_recipients
from outreach.config import Settings
from outreach.errors import (
    ConfigError,
    OutreachError,
    PermanentSmtpError,
    TransientSmtpError,
    UncertainSmtpError,
)
from outreach.messages import Kit, draft, keep, kept_spec, load_kit
from outreach.models import Campaign, Delivery, Status, utcnow
from outreach.smtp import Transport

log = logging.getLogger("outreach.sending")

KIT_TTL = 60.0  # seconds a worker trusts its prepared campaign before reading it again


class KitCache:
    """Per worker process: one prepared Kit per campaign, refreshed after KIT_TTL."""

    def __init__(self) -> None:
        self._kits: dict[int, tuple[float, Kit]] = {}

    def get(self, session: Session, campaign_id: int) -> Kit:
        now = time.monotonic()
        cached = self._kits.get(campaign_id)
        if cached is None or now - cached[0] > KIT_TTL:
            campaign = session.get(Campaign, campaign_id)
            if campaign is None:
                raise OutreachError(f"campaign {campaign_id} no longer exists")
            cached = (now, load_kit(session, campaign))
            self._kits[campaign_id] = cached
        return cached[1]


def retry_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, times 0.8 to 1.2."""
    seconds = min(
        settings.retry_base_seconds * 2 ** max(attempts - 1, 0), settings.retry_max_seconds
    )
    return timedelta(seconds=seconds * (rng or random).uniform(0.8, 1.2))


def send_batch(
    sessions: sessionmaker[Session],
    delivery_ids: Sequence[int],
    *,
    transport: Transport,
    settings: Settings,
    kits: KitCache,
) -> Counter[str]:
    """Send the given deliveries; returns how many ended in each status. Deliveries that are no
    longer `queued` (sent by another worker, cancelled) are skipped untouched."""
    outcome: Counter[str] = Counter()
    for delivery_id in delivery_ids:
        with sessions() as session:
            outcome[_send_one(session, delivery_id, transport, settings, kits)] += 1
    return outcome


def _send_one(
    session: Session, delivery_id: int, transport: Transport, settings: Settings, kits: KitCache
) -> str:
    delivery = session.scalar(
        select(Delivery)
        .where(Delivery.id == delivery_id)
        .options(
            selectinload(Delivery.recipient),
            selectinload(Delivery.campaign),
            selectinload(Delivery.attachments),
        )
    )
    if delivery is None or delivery.status != Status.QUEUED:
        return "skipped"
    try:
        spec = kept_spec(delivery)
        if spec is None:
            kit = kits.get(session, delivery.campaign_id)
            spec = draft(kit, delivery.recipient, delivery.message_id, utcnow())
            keep(session, delivery, spec)
        data = compose(spec)
        rcpts = envelope_recipients(spec, delivery.campaign.bcc)
    except OutreachError as exc:
        session.rollback()
        deliveries.mark_failed(session, delivery_id, str(exc), source=Status.QUEUED)
        session.commit()
        return Status.FAILED
    if not deliveries.claim(session, delivery_id):
        session.rollback()
        return "skipped"
    session.commit()  # the uncertain window opens: `sending` is on disk before the DATA
    attempts = delivery.attempts + 1
    status = _deliver(
        session,
        delivery_id,
        attempts,
        delivery.address,
        spec.sender,
        rcpts,
        data,
        transport,
        settings,
    )
    session.commit()  # ... and closes before the next message's DATA
    return status


def _deliver(
    session: Session,
    delivery_id: int,
    attempts: int,
    address: str,
    sender: str,
    rcpts: list[str],
    data: bytes,
    transport: Transport,
    settings: Settings,
) -> str:
    """Hand the message to the server and record what it said."""
    try:
        refused = transport.send(
            sender=parseaddr(sender)[1],
            recipients=rcpts,
            data=data,
            smtputf8=settings.smtp_utf8,
        )
    except PermanentSmtpError as exc:
        deliveries.mark_failed(session, delivery_id, str(exc), source=Status.SENDING)
        return Status.FAILED
    except UncertainSmtpError as exc:  # never retried without an operator: no second letter
        deliveries.transition(
            session,
            delivery_id,
            Status.SENDING,
            Status.UNKNOWN,
            detail=str(exc),
            last_error=str(exc),
        )
        return Status.UNKNOWN
    except (TransientSmtpError, ConfigError) as exc:  # nothing was sent; a fixed setting helps
        return _defer(session, delivery_id, attempts, str(exc), settings)
    mine = next((r for a, r in refused.items() if a.lower() == address.lower()), None)
    if mine is not None:
        code, text = mine
        reason = f"{code} {text} (refused {address}; other recipients of the message accepted)"
        if 400 <= code < 500:
            return _defer(session, delivery_id, attempts, reason, settings)
        deliveries.mark_failed(session, delivery_id, reason, source=Status.SENDING)
        return Status.FAILED
    others = ", ".join(f"{a}: {c} {t}" for a, (c, t) in refused.items())
    deliveries.mark_sent(
        session, delivery_id, f"accepted; also refused {others}" if others else "accepted"
    )
    return Status.SENT


def _defer(
    session: Session, delivery_id: int, attempts: int, reason: str, settings: Settings
) -> str:
    if attempts >= settings.max_attempts:
        deliveries.mark_failed(
            session,
            delivery_id,
            f"{reason}; gave up after {attempts} attempts",
            source=Status.SENDING,
        )
        return Status.FAILED
    retry_at = utcnow() + retry_delay(attempts, settings)
    deliveries.mark_deferred(session, delivery_id, reason, retry_at)
    return Status.DEFERRED


def due_for_retry(session: Session, now: datetime, batch_size: int) -> list[list[int]]:
    """Deferred deliveries whose next attempt is due, moved back to `queued`, in batches."""
    due = list(
        session.scalars(
            select(Delivery.id)
            .where(Delivery.status == Status.DEFERRED, Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at)
        )
    )
    queued = deliveries.transition_many(
        session, due, Status.DEFERRED, Status.QUEUED, detail="retry due"
    )
    return [queued[i : i + batch_size] for i in range(0, len(queued), batch_size)]
