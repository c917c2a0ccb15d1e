"""Follow-ups: a new campaign for those who have not answered, linked to the first.

Who: the first campaign's recipients whose letter went out (email `sent`, letter `posted`) at
least the given time ago, that did not bounce, whose address is not suppressed, and who gave no
answer (an automatic answer is none). Each keeps their role; if no principal is left, those in
copy become the principals, since they are the ones being reminded. The new campaign names the
first (`follow_up_of`), and `original_for` gives its template the first letter's date, subject
and Message-ID for each recipient (`original.date`, `original.subject`, ...), and
`thread_headers` the In-Reply-To and References that keep the reminder in the same thread.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from outreach import campaigns
from outreach.errors import InputError
from outreach.models import (
    Campaign,
    Channel,
    Delivery,
    Outcome,
    Recipient,
    Response,
    ResponseKind,
    Role,
    Status,
    Suppression,
)
from outreach.salutations import format_date

AGE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$", re.I)
UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """ "14d", "36h", "2w" as a timedelta (InputError otherwise)."""
    found = AGE.match(text)
    if found is None:
        raise InputError(f"{text!r} is not an age like 14d, 36h or 2w")
    return timedelta(**{UNITS[found.group(2).lower()]: int(found.group(1))})


def silent(session: Session, original: Campaign, cutoff: datetime) -> list[Delivery]:
    """The deliveries of `original` that went out before `cutoff` and drew no answer."""
    answered = exists().where(
        Response.delivery_id == Delivery.id, Response.kind != ResponseKind.AUTO_REPLY
    )
    suppressed = exists().where(Suppression.key == func.lower(Delivery.address))
    went_out = (
        (Delivery.channel == Channel.EMAIL)
        & (Delivery.status == Status.SENT)
        & (Delivery.sent_at <= cutoff)
    ) | ((Delivery.status == Status.POSTED) & (Delivery.updated_at <= cutoff))
    return list(
        session.scalars(
            select(Delivery)
            .where(
                Delivery.campaign_id == original.id,
                went_out,
                Delivery.outcome != Outcome.BOUNCED,
                ~answered,
                ~suppressed,
            )
            .order_by(Delivery.id)
        )
    )


def create_follow_up(
    session: Session,
    original: Campaign,
    *,
    template_dir: Path,
    no_answer_after: timedelta,
    now: datetime,
    name: str = "",
) -> Campaign:
    """A draft campaign to the silent recipients of `original`, linked to it."""
    targets = silent(session, original, now - no_answer_after)
    if not targets:
        raise InputError(f"nobody to remind: everyone in {original.name} answered, bounced or "
                         f"was written to less than {no_answer_after} ago")  # fmt: skip
    principals = [f"id:{d.recipient_id}" for d in targets if d.role == Role.TO]
    copies = [f"id:{d.recipient_id}" for d in targets if d.role != Role.TO]
    if not principals:
        principals, copies = copies, []
    follow_up = campaigns.create_campaign(
        session,
        name=name or _free_name(session, f"{original.name}-follow-up"),
        template_dir=template_dir,
        sender=original.sender,
        to=principals,
        cc=copies,
        reply_to=original.reply_to,
        cc_addresses=original.cc,
        bcc=original.bcc,
    )
    follow_up.follow_up_of = original.id
    session.flush()
    return follow_up


def _free_name(session: Session, base: str) -> str:
    taken = set(session.scalars(select(Campaign.name).where(Campaign.name.like(f"{base}%"))))
    return next(n for n in [base, *(f"{base}-{i}" for i in range(2, 1000))] if n not in taken)


def original_for(session: Session, campaign: Campaign, recipient: Recipient) -> dict[str, Any]:
    """The first letter as this recipient got it, for a follow-up's template ({} otherwise)."""
    if campaign.follow_up_of is None:
        return {}
    first = session.get(Campaign, campaign.follow_up_of)
    rows = session.scalars(
        select(Delivery).where(
            Delivery.campaign_id == campaign.follow_up_of, Delivery.recipient_id == recipient.id
        )
    ).all()
    if first is None or not rows:
        return {}
    delivery = sorted(rows, key=lambda d: d.channel != Channel.EMAIL)[0]
    when = first.letter_date or delivery.sent_at or delivery.updated_at
    return {
        "campaign": first.name,
        "subject": delivery.subject,
        "date": format_date(when.date(), recipient.language or "en"),
        "sent_at": delivery.sent_at,
        "message_id": delivery.message_id,
    }


def thread_headers(original: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """In-Reply-To and References naming the first letter, so mail clients thread the two."""
    message_id = original.get("message_id", "")
    return (("In-Reply-To", message_id), ("References", message_id)) if message_id else ()
