"""Answers that do not come by email: a letter by post, a fax, a call, a meeting.

The team records them by hand (`outreach responses add`), with the date, a kind (acknowledged,
answered, declined, meeting, other), a note and optionally a file (a scan of the letter), kept
in the database by sha256 like attachments. They sit beside the email replies that tracking
records, so reports and follow-ups see every answer the same way.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from outreach import campaigns, registry
from outreach.errors import InputError, NotFound
from outreach.models import (
    Blob,
    Channel,
    Delivery,
    Response,
    ResponseChannel,
    ResponseKind,
)

MANUAL_KINDS = (
    ResponseKind.ACKNOWLEDGED,
    ResponseKind.ANSWERED,
    ResponseKind.DECLINED,
    ResponseKind.MEETING,
    ResponseKind.OTHER,
)
MANUAL_CHANNELS = (
    ResponseChannel.POST,
    ResponseChannel.FAX,
    ResponseChannel.PHONE,
    ResponseChannel.MEETING,
    ResponseChannel.EMAIL,
)


def find_delivery(session: Session, campaign_name: str, recipient: str) -> Delivery:
    """The delivery of a campaign to a recipient (id or email); email first if there are two."""
    campaign = campaigns.get_campaign(session, campaign_name)
    person = registry.find_recipient(session, recipient)
    rows = session.scalars(
        select(Delivery).where(
            Delivery.campaign_id == campaign.id, Delivery.recipient_id == person.id
        )
    ).all()
    if not rows:
        raise NotFound(f"{recipient} is not a recipient of campaign {campaign_name}")
    return sorted(rows, key=lambda d: d.channel != Channel.EMAIL)[0]


def add_response(
    session: Session,
    delivery: Delivery,
    *,
    kind: str,
    channel: str,
    received_at: datetime,
    note: str = "",
    sender: str = "",
    file: Path | None = None,
) -> Response:
    """Record an answer received outside the mailbox; the file, if any, is kept whole."""
    if kind not in MANUAL_KINDS:
        raise InputError(f"kind must be one of {', '.join(MANUAL_KINDS)}, not {kind!r}")
    if channel not in MANUAL_CHANNELS:
        raise InputError(f"channel must be one of {', '.join(MANUAL_CHANNELS)}, not {channel!r}")
    if received_at.tzinfo is None:
        raise InputError("the date of an answer needs a time zone")
    response = Response(
        delivery_id=delivery.id, kind=kind, channel=channel, received_at=received_at,
        note=note, sender=sender,
    )  # fmt: skip
    if file is not None:
        response.file_name, response.file_sha256 = file.name, _store(session, file)
    session.add(response)
    session.flush()
    return response


def _store(session: Session, path: Path) -> str:
    """Keep a file's bytes once by sha256; its digest."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        session.add(Blob(sha256=digest, size=len(data), content_type=kind, data=data))
    return digest


def list_responses(session: Session, campaign_name: str | None = None) -> Sequence[Response]:
    """Every response, by email or by hand, oldest first; optionally of one campaign."""
    query = (
        select(Response)
        .join(Delivery)
        .options(
            selectinload(Response.delivery).selectinload(Delivery.recipient),
            selectinload(Response.delivery).selectinload(Delivery.campaign),
        )
    )
    if campaign_name:
        query = query.where(
            Delivery.campaign_id == campaigns.get_campaign(session, campaign_name).id
        )
    return session.scalars(query.order_by(Response.received_at, Response.id)).all()
