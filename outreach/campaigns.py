"""Campaigns: create one, resolve who is in it and in which role, create its deliveries and
release them for sending. The role (to or cc) belongs to the campaign, not to the registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from outreach import deliveries, registry
from outreach.compose import check_header, make_message_id
from outreach.config import Settings
from outreach.errors import InputError, NotFound
from outreach.letters import load_template
from outreach.models import (
    Campaign,
    CampaignState,
    Channel,
    Delivery,
    Recipient,
    Role,
    Status,
    utcnow,
)


@dataclass(frozen=True)
class Member:
    """A recipient as this campaign addresses them."""

    recipient: Recipient
    role: Role
    channel: Channel


def create_campaign(
    session: Session,
    *,
    name: str,
    template_dir: Path,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    reply_to: str = "",
    cc_addresses: Sequence[str] = (),
    bcc: Sequence[str] = (),
    letter_date: date | None = None,
) -> Campaign:
    """Check everything that can be checked now, then store the campaign (still a draft)."""
    if session.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise InputError(f"a campaign named {name!r} already exists")
    if not to:
        raise InputError("a campaign needs at least one principal recipient (--to)")
    load_template(template_dir)
    for header, value in [("From", sender), ("Reply-To", reply_to)]:
        if value:
            check_header(header, value)
    if not _address(sender):
        raise InputError(f"From: {sender!r} has no email address")
    for address in [*cc_addresses, *bcc]:
        check_header("Cc/Bcc", address)
    registry.select(session, list(to))
    registry.select(session, list(cc))
    campaign = Campaign(
        name=name,
        template_dir=str(template_dir.resolve()),
        sender=sender,
        reply_to=reply_to,
        cc=list(cc_addresses),
        bcc=list(bcc),
        select_to=list(to),
        select_cc=list(cc),
        letter_date=(
            datetime(letter_date.year, letter_date.month, letter_date.day, tzinfo=utcnow().tzinfo)
            if letter_date
            else None
        ),
    )
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, name: str) -> Campaign:
    campaign = session.scalar(select(Campaign).where(Campaign.name == name))
    if campaign is None:
        known = ", ".join(session.scalars(select(Campaign.name).order_by(Campaign.name))) or "none"
        raise NotFound(f"no campaign named {name!r} (known: {known})")
    return campaign


def members(session: Session, campaign: Campaign) -> list[Member]:
    """Who the campaign addresses, principals first; someone selected as both is a principal."""
    principals = registry.select(session, campaign.select_to)
    copies = registry.select(session, campaign.select_cc) if campaign.select_cc else []
    seen: set[int] = set()
    result: list[Member] = []
    for role, people in ((Role.TO, principals), (Role.CC, copies)):
        for recipient in people:
            if recipient.id not in seen:
                seen.add(recipient.id)
                channel = Channel(registry.preferred_channel(recipient))
                result.append(Member(recipient, role, channel))
    return result


def message_domain(campaign: Campaign, settings: Settings) -> str:
    """The right-hand side of this campaign's Message-IDs."""
    return settings.message_id_domain or _address(campaign.sender).rpartition("@")[2]


def create_deliveries(session: Session, campaign: Campaign, settings: Settings) -> int:
    """One delivery per member and channel, created once: running this again adds only members
    who were not there before (the unique key makes a second row impossible)."""
    existing = set(
        session.execute(
            select(Delivery.recipient_id, Delivery.channel).where(
                Delivery.campaign_id == campaign.id
            )
        ).tuples()
    )
    domain = message_domain(campaign, settings)
    now = utcnow()
    rows = [
        {
            "campaign_id": campaign.id,
            "recipient_id": m.recipient.id,
            "role": m.role,
            "channel": m.channel,
            "status": Status.PENDING,
            "message_id": make_message_id(domain),
            "address": m.recipient.email or "",
            "created_at": now,
            "updated_at": now,
        }
        for m in members(session, campaign)
        if (m.recipient.id, m.channel.value) not in existing
    ]
    if rows:
        session.execute(insert(Delivery), rows)
    return len(rows)


def release(session: Session, campaign: Campaign, batch_size: int) -> list[list[int]]:
    """Move the campaign's pending email deliveries to `queued`; returns them in batches, each
    to be sent over one SMTP connection. Post and fax wait for their own channels."""
    pending = list(
        session.scalars(
            select(Delivery.id)
            .where(
                Delivery.campaign_id == campaign.id,
                Delivery.status == Status.PENDING,
                Delivery.channel == Channel.EMAIL,
            )
            .order_by(Delivery.id)
        )
    )
    queued = deliveries.transition_many(session, pending, Status.PENDING, Status.QUEUED)
    campaign.state = CampaignState.RUNNING
    return [queued[i : i + batch_size] for i in range(0, len(queued), batch_size)]


def status_counts(
    session: Session, campaign: Campaign, channel: Channel | None = None
) -> dict[str, int]:
    """How many deliveries are in each status (one indexed GROUP BY)."""
    query = select(Delivery.status, func.count()).where(Delivery.campaign_id == campaign.id)
    if channel is not None:
        query = query.where(Delivery.channel == channel)
    return {status: n for status, n in session.execute(query.group_by(Delivery.status))}


def _address(value: str) -> str:
    return parseaddr(value)[1]
