"""Campaigns: create one, resolve who is in it and in which role, create its deliveries and
release them for sending. The role (to or cc) belongs to the campaign, not to the registry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Table, bindparam, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from outreach import db, deliveries, registry
from outreach.compose import make_message_id, parse_address
from outreach.config import Settings
from outreach.errors import Conflict, InputError, NotFound
from outreach.fax import fax_address
from outreach.letters import load_template
from outreach.models import (
    Campaign,
    CampaignState,
    Channel,
    Delivery,
    Event,
    Recipient,
    Role,
    Status,
    utcnow,
)
from outreach.windows import Window


@dataclass(frozen=True)
class Member:
    """A recipient as this campaign addresses them."""

    recipient: Recipient
    role: Role
    channel: Channel


class _Reach(NamedTuple):
    """What a delivery needs of its recipient: who, and where to reach them."""

    id: int
    email: str | None
    fax: str


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
    # Each one address, as every message will need it: a Bcc is read only at the send, where
    # one that is not an address would fail every delivery of the campaign.
    addresses = [("From", sender), ("Reply-To", reply_to)] if reply_to else [("From", sender)]
    addresses += [("Cc", value) for value in cc_addresses] + [("Bcc", value) for value in bcc]
    for header, value in addresses:
        parse_address(header, value)
    registry.select_rows(session, list(to))  # each selector must match someone
    registry.select_rows(session, list(cc))
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
    return [
        Member(row[1], role, registry.preferred_channel(row[1]))
        for row, role in _roles(session, campaign, Recipient)
    ]


def addresses(session: Session, campaign: Campaign, recipient_id: int) -> bool:
    """Whether the campaign addresses this recipient, by the rule of `members` without loading
    every member (a preview of one letter in a 100k campaign read 100k recipients)."""
    return any(row[0] == recipient_id for row, _ in _roles(session, campaign))


def _roles(
    session: Session, campaign: Campaign, *columns: Any
) -> list[tuple[tuple[Any, ...], Role]]:
    """Each member's (id, *columns) and role, principals first; someone selected as both is a
    principal. `members` and `create_deliveries` (columns only) both go through this rule."""
    principals = registry.select_rows(session, campaign.select_to, *columns)
    copies = registry.select_rows(session, campaign.select_cc or [], *columns)
    seen: set[int] = set()
    result: list[tuple[tuple[Any, ...], Role]] = []
    for role, rows in ((Role.TO, principals), (Role.CC, copies)):
        for row in rows:
            if row[0] not in seen:
                seen.add(row[0])
                result.append((row, role))
    return result


def message_domain(campaign: Campaign, settings: Settings) -> str:
    """The right-hand side of this campaign's Message-IDs."""
    return settings.message_id_domain or parse_address("From", campaign.sender).domain


def create_deliveries(session: Session, campaign: Campaign, settings: Settings) -> int:
    """One delivery per member and channel, created once: running this again adds only members
    who were not there before (the unique key makes a second row impossible). Members are read
    as the columns needed, not as ORM recipients, and inserted through Core (`_insert`): at
    100k, loading ORM recipients and the ORM bulk insert were 88 % of the time."""
    existing = {
        (recipient_id, channel)
        for recipient_id, channel in session.execute(
            select(Delivery.recipient_id, Delivery.channel).where(
                Delivery.campaign_id == campaign.id
            )
        )
    }
    domain = message_domain(campaign, settings)
    now = utcnow()
    fixed = {
        "campaign_id": campaign.id,
        "status": Status.PENDING,
        "created_at": now,
        "updated_at": now,
    }
    rows = []
    for row, role in _roles(session, campaign, Recipient.email, Recipient.fax):
        person = _Reach(*row)
        channel = _channel_for(registry.preferred_channel(person), settings)
        if (person.id, channel.value) in existing:
            continue
        rows.append(
            {
                "recipient_id": person.id,
                "role": role,
                "channel": channel,
                "message_id": make_message_id(domain),
                "address": _address_for(person, channel, settings),
            }
        )
    if rows:
        _insert(session, Delivery.__table__, fixed, rows)
    return len(rows)


def _insert(
    session: Session, table: Table, fixed: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """Insert `rows` (dicts with the same keys), each with the `fixed` values as well. On
    PostgreSQL as one INSERT ... SELECT over unnest() of an array per column: psycopg runs an
    executemany as one INSERT per row (100k deliveries: 3.2 s, this 1.9 s). SQLite's
    executemany loops in C and stays."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(table), [{**fixed, **row} for row in rows])
        return
    names = list(rows[0])
    arrays = [
        bindparam(f"{name}_array", [row[name] for row in rows], type_=ARRAY(table.c[name].type))
        for name in names
    ]
    source = func.unnest(*arrays).table_valued(*names).render_derived()
    constants = [literal(value, table.c[name].type).label(name) for name, value in fixed.items()]
    query = select(*constants, *source.c)
    session.execute(insert(table).from_select([*fixed, *names], query))


def schedule(
    session: Session,
    campaign: Campaign,
    settings: Settings,
    *,
    at: datetime,
    timezone: str = "",
    window: Window | None = None,
    rate: dict[str, float] | None = None,
) -> int:
    """Fix the campaign's deliveries now and let the dispatcher start it at `at` (aware).
    Returns how many deliveries were created. Nothing waits in the broker until then."""
    if campaign.state not in (CampaignState.DRAFT, CampaignState.SCHEDULED):
        raise InputError(f"campaign {campaign.name} is {campaign.state}; it cannot be scheduled")
    created = create_deliveries(session, campaign, settings)
    if created:  # the tables the send loop joins, just filled: planned on their statistics
        db.analyze(session, Delivery.__tablename__, Recipient.__tablename__)
    _move(
        session, campaign, CampaignState.SCHEDULED, scheduled_at=at, timezone=timezone,
        send_window=window.to_json() if window else None, rate=rate or None,
    )  # fmt: skip
    when = at.astimezone(ZoneInfo(timezone)) if timezone else at
    log(session, campaign, f"scheduled for {when:%Y-%m-%d %H:%M %Z}")
    return created


def pause(
    session: Session, campaign: Campaign, reason: str, resume_at: datetime | None = None
) -> None:
    """Stop releasing deliveries and take back those waiting in the broker; a message already
    on the wire finishes. `resume_at` is for the circuit breaker; the team resumes by hand."""
    if campaign.state not in (CampaignState.RUNNING, CampaignState.SCHEDULED, CampaignState.PAUSED):
        raise InputError(f"campaign {campaign.name} is {campaign.state}; it cannot be paused")
    _move(session, campaign, CampaignState.PAUSED, paused_reason=reason, resume_at=resume_at)
    _take_back(session, campaign, reason)
    log(session, campaign, f"paused: {reason}")


def resume(session: Session, campaign: Campaign) -> None:
    if campaign.state != CampaignState.PAUSED:
        raise InputError(f"campaign {campaign.name} is {campaign.state}, not paused")
    due = campaign.scheduled_at is None or campaign.scheduled_at <= utcnow()
    target = CampaignState.RUNNING if due else CampaignState.SCHEDULED
    _move(session, campaign, target, paused_reason="", resume_at=None)
    log(session, campaign, "resumed")


def cancel(session: Session, campaign: Campaign) -> int:
    """Cancel every delivery not yet sent; returns how many. Sent ones stay sent."""
    if campaign.state in (CampaignState.DONE, CampaignState.CANCELLED):
        raise InputError(f"campaign {campaign.name} is already {campaign.state}")
    _move(session, campaign, CampaignState.CANCELLED)
    count = 0
    for source in (Status.PENDING, Status.QUEUED, Status.DEFERRED):
        ids = _ids(session, campaign, source)
        count += len(deliveries.transition_many(session, ids, source, Status.CANCELLED))
    log(session, campaign, f"cancelled; {count} deliveries not sent")
    return count


TICK_TURN = 0x6F7574726561  # the dispatcher's tick's turn: PostgreSQL's advisory lock ("outrea")


def tick_turn(session: Session) -> None:
    """Wait for a dispatcher tick running elsewhere to commit, and make the next one wait for
    this transaction (`db.transaction_turn`): for what decides on the tick's reading of a
    campaign's deliveries."""
    db.transaction_turn(session, TICK_TURN, "tick")


def resend(session: Session, delivery_ids: Sequence[int]) -> list[int]:
    """Queue `unknown` deliveries again, on the operator's word; a campaign that was done runs
    again until they are settled. In the tick's turn: a tick that found nothing open (before
    this commit) and marks the campaign done (after this read it running) would leave the
    resent deliveries in a done campaign, where a claim misses and they go back to `pending`
    for good."""
    tick_turn(session)
    requeued = deliveries.transition_many(
        session, list(delivery_ids), Status.UNKNOWN, Status.QUEUED, detail="resent by the operator"
    )
    theirs = select(Delivery.campaign_id).where(Delivery.id.in_(requeued))
    done = select(Campaign).where(Campaign.state == CampaignState.DONE, Campaign.id.in_(theirs))
    for campaign in list(session.scalars(done)):
        if advance(session, campaign, CampaignState.DONE, CampaignState.RUNNING):
            log(session, campaign, "running again: deliveries were resent")
    return requeued


def advance(
    session: Session, campaign: Campaign, source: str, target: CampaignState, **values: object
) -> bool:
    """Move a campaign from `source` to `target`, writing `values` with it, only if it is still
    in `source`: a compare-and-swap. Every change of a campaign's state goes through here, so a
    move another process committed after this one read the campaign (the team's cancel, the
    dispatcher's `done`) stands instead of being written over. False if it was lost."""
    moved = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state == source)
        .values(state=target, **values)
        .execution_options(synchronize_session=False)
    )
    session.expire(campaign)  # read again, as it now is
    return bool(moved.rowcount)


def _move(session: Session, campaign: Campaign, target: CampaignState, **values: object) -> None:
    """A command's move of a campaign from the state it read; if another process moved it
    since, the command changes nothing and says so."""
    name, source = campaign.name, campaign.state
    if not advance(session, campaign, source, target, **values):
        raise Conflict(
            f"campaign {name} changed while this command ran: it was {source} and is now "
            f"{campaign.state}; nothing was changed (run the command again if it still applies)"
        )


def in_motion(
    session: Session, campaign: Campaign, now: datetime, channels: Sequence[Channel]
) -> int:
    """Deliveries that are moving or may move now: queued, sending, or pending and due.
    Zero means the campaign waits (for retries, a send window, its schedule) or is over."""
    if campaign.state not in (CampaignState.RUNNING, CampaignState.SCHEDULED):
        return 0
    if campaign.state == CampaignState.SCHEDULED and (campaign.scheduled_at or now) > now:
        return 0
    moving = Delivery.status.in_((Status.QUEUED, Status.SENDING))
    due = (Delivery.status == Status.PENDING) & (
        Delivery.next_attempt_at.is_(None) | (Delivery.next_attempt_at <= now)
    )
    query = select(func.count()).where(
        Delivery.campaign_id == campaign.id, Delivery.channel.in_(channels), moving | due
    )
    return session.scalar(query) or 0


def sent_since(session: Session, campaign: Campaign, since: datetime) -> int:
    query = select(func.count()).where(
        Delivery.campaign_id == campaign.id, Delivery.sent_at >= since
    )
    return session.scalar(query) or 0


def _take_back(session: Session, campaign: Campaign, reason: str) -> None:
    ids = _ids(session, campaign, Status.QUEUED)
    deliveries.transition_many(session, ids, Status.QUEUED, Status.PENDING, detail=reason)


def _ids(session: Session, campaign: Campaign, status: Status) -> list[int]:
    query = select(Delivery.id).where(
        Delivery.campaign_id == campaign.id, Delivery.status == status
    )
    return list(session.scalars(query))


def log(session: Session, campaign: Campaign, detail: str) -> None:
    """An event on the campaign itself (scheduled, paused, ...), beside its deliveries' events."""
    session.add(Event(campaign_id=campaign.id, kind="campaign", detail=detail))


def status_counts(
    session: Session, campaign: Campaign, channels: Sequence[Channel] = ()
) -> dict[str, int]:
    """How many deliveries are in each status (one indexed GROUP BY)."""
    query = select(Delivery.status, func.count()).where(Delivery.campaign_id == campaign.id)
    if channels:
        query = query.where(Delivery.channel.in_(channels))
    return {status: n for status, n in session.execute(query.group_by(Delivery.status))}


def delivery_channel(member: Member, settings: Settings) -> Channel:
    """The channel a member's delivery goes by (see `_channel_for`)."""
    return _channel_for(member.channel, settings)


def _channel_for(preferred: Channel, settings: Settings) -> Channel:
    """The registry's preference, except that fax needs a gateway: without one, by post."""
    if preferred == Channel.FAX and not settings.fax_gateway:
        return Channel.POST
    return preferred


def sendable_channels(settings: Settings) -> tuple[Channel, ...]:
    """The channels the workers send by email: email itself, and fax through a gateway."""
    return (Channel.EMAIL, Channel.FAX) if settings.fax_gateway else (Channel.EMAIL,)


def _address_for(recipient: Recipient | _Reach, channel: Channel, settings: Settings) -> str:
    """Where the delivery goes: the email address, or the fax gateway's address for the number."""
    if channel == Channel.FAX:
        return fax_address(recipient.fax, settings)
    return recipient.email or ""
