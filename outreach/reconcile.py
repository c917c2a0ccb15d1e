"""Settle `unknown` deliveries from the team's archive copy.

A delivery is `unknown` when the connection failed after its message's final dot and before the
server's reply (or the worker died there). Where the campaign sends a Bcc archive copy to a
mailbox outreach can read, that copy went in the same SMTP transaction as the official's: finding
its Message-ID there shows the server took the message, so the delivery was sent. A copy not
found proves nothing (it may still be on its way): the delivery stays `unknown` for the team.
Nor does one found for a delivery whose earlier attempt the server took for the archive while
it refused the official (a 4xx at RCPT, then retried): every attempt of a delivery carries the
same Message-ID, so that copy may be the earlier attempt's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outreach import deliveries
from outreach.inbox import ImapMailbox
from outreach.models import Campaign, Delivery, Event, Status


@dataclass
class Reconciled:
    found: list[int] = field(default_factory=list)  # now `sent`
    missing: list[int] = field(default_factory=list)  # still `unknown`
    no_archive: list[int] = field(default_factory=list)  # their campaign keeps no Bcc copy
    archive_only: list[int] = field(default_factory=list)  # a copy may be an earlier attempt's


def reconcile(sessions: sessionmaker[Session], box: ImapMailbox, folder: str) -> Reconciled:
    """Look for every unknown delivery's archive copy in `folder`; mark the found ones sent."""
    result = Reconciled()
    with sessions() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.message_id, Campaign.bcc)
            .join(Campaign, Campaign.id == Delivery.campaign_id)
            .where(Delivery.status == Status.UNKNOWN)
            .order_by(Delivery.id)
        ).all()
        earlier = set(
            session.scalars(
                select(Event.delivery_id)
                .join(Delivery, Delivery.id == Event.delivery_id)
                .where(
                    Delivery.status == Status.UNKNOWN,
                    Event.from_status == Status.SENDING,
                    Event.detail.contains(deliveries.ARCHIVE_ONLY, autoescape=True),
                )
            )
        )
    box.select(folder)
    for delivery_id, message_id, bcc in rows:
        if not bcc:
            result.no_archive.append(delivery_id)
        elif delivery_id in earlier:
            result.archive_only.append(delivery_id)
        elif box.has_message_id(message_id):
            with sessions.begin() as session:
                deliveries.transition(
                    session, delivery_id, Status.UNKNOWN, Status.SENT,
                    detail=f"its archive copy is in {box.where} {folder}: the server took it",
                )  # fmt: skip
            result.found.append(delivery_id)
        else:
            result.missing.append(delivery_id)
    return result
