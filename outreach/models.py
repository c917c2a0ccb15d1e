"""The tables, as SQLAlchemy 2.0 typed models.

Two axes on a delivery: `status` says what we did (the state machine in `deliveries.py` is the
only code that changes it); `outcome` says what happened to the message afterwards (tracking).
Rendered parts and attachment bytes are kept, so the message a recipient got can be rebuilt.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which drops the zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Role(StrEnum):
    TO = "to"
    CC = "cc"


class Channel(StrEnum):
    EMAIL = "email"
    POST = "post"
    FAX = "fax"


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    PRINTED = "printed"  # a letter by post, in a print pack
    POSTED = "posted"  # ... and marked as put in the post by the team


class CampaignState(StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"  # waits in the database until its time
    RUNNING = "running"  # the dispatcher releases its deliveries
    PAUSED = "paused"  # by the team, or by the circuit breaker until `resume_at`
    DONE = "done"
    CANCELLED = "cancelled"


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Recipient(Base):
    """An official or an office, as the registry knows them."""

    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Upsert key (registry.recipient_key): the address lower-cased, else name and organisation.
    key: Mapped[str] = mapped_column(String(400), unique=True)
    honorific: Mapped[str] = mapped_column(String(40), default="")
    given_name: Mapped[str] = mapped_column(String(200), default="")
    family_name: Mapped[str] = mapped_column(String(200), default="")
    position: Mapped[str] = mapped_column(String(300), default="")
    organisation: Mapped[str] = mapped_column(String(300), default="")
    department: Mapped[str] = mapped_column(String(300), default="")
    address_lines: Mapped[list[str]] = mapped_column(default=list)
    city: Mapped[str] = mapped_column(String(200), default="")
    postcode: Mapped[str] = mapped_column(String(40), default="")
    country: Mapped[str] = mapped_column(String(2), default="")  # ISO 3166 alpha-2
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str] = mapped_column(String(40), default="")  # E.164
    fax: Mapped[str] = mapped_column(String(40), default="")  # E.164
    language: Mapped[str] = mapped_column(String(16), default="en")
    timezone: Mapped[str] = mapped_column(String(64), default="")  # IANA; else from country
    salutation: Mapped[str] = mapped_column(String(300), default="")  # override
    tags: Mapped[list[str]] = mapped_column(default=list)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def full_name(self) -> str:
        return " ".join(p for p in (self.given_name, self.family_name) if p)

    @property
    def is_person(self) -> bool:
        return bool(self.family_name)


class Campaign(Base):
    """One letter to a chosen set of recipients, each in a role (to or cc)."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    template_dir: Mapped[str] = mapped_column(String(1000))
    sender: Mapped[str] = mapped_column(String(400))  # "Name <address>"
    reply_to: Mapped[str] = mapped_column(String(400), default="")
    cc: Mapped[list[str]] = mapped_column(default=list)  # campaign-wide Cc addresses
    bcc: Mapped[list[str]] = mapped_column(default=list)  # e.g. an archive copy
    # Selectors such as "tag:principal", "org:Council of Europe", "email:a@b.eu", "id:7".
    select_to: Mapped[list[str]] = mapped_column(default=list)
    select_cc: Mapped[list[str]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(20), default=CampaignState.DRAFT)
    letter_date: Mapped[datetime | None] = mapped_column()  # the date written on the letter
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column()
    timezone: Mapped[str] = mapped_column(String(64), default="")  # as the team scheduled it
    # Office hours in the recipient's own time zone: {"days": [0..6], "start": "08:00", ...}
    send_window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Lower limits than the SMTP account's: {"second": 2, "minute": 60, "hour": ..., "day": ...}
    rate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    paused_reason: Mapped[str] = mapped_column(Text, default="")
    resume_at: Mapped[datetime | None] = mapped_column()  # set by the circuit breaker
    # A follow-up campaign names the campaign it reminds of (tracking, followups.py).
    follow_up_of: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="SET NULL")
    )

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="campaign")


class Delivery(Base):
    """One message to one recipient of one campaign on one channel."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("campaign_id", "recipient_id", "channel"),
        # With the id: the dispatcher reads pending deliveries in id order (migration 0005).
        Index("ix_deliveries_campaign_status", "campaign_id", "status", "id"),
        Index("ix_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id"))
    role: Mapped[str] = mapped_column(String(4))
    channel: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING)
    outcome: Mapped[str] = mapped_column(String(24), default="")
    outcome_at: Mapped[datetime | None] = mapped_column()  # when the outcome last changed
    message_id: Mapped[str] = mapped_column(String(300), unique=True)
    address: Mapped[str] = mapped_column(String(320), default="")  # where it went, as sent
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    # What was sent: the headers in order, the rendered parts; attachments by sha256.
    headers: Mapped[list[Any] | None] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(Text, default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text)
    # The PDF letter rendered ahead of the send (`prepare.py`), and the digest of what it was
    # rendered from: the send uses it only while the letter would still come out the same.
    letter_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    letter_filename: Mapped[str] = mapped_column(String(500), default="")
    letter_key: Mapped[str] = mapped_column(String(64), default="")
    letter_requested_at: Mapped[datetime | None] = mapped_column()

    campaign: Mapped[Campaign] = relationship(back_populates="deliveries")
    recipient: Mapped[Recipient] = relationship()
    attachments: Mapped[list[DeliveryAttachment]] = relationship(
        order_by="DeliveryAttachment.position", cascade="all, delete-orphan"
    )
    events: Mapped[list[Event]] = relationship(order_by="Event.id", viewonly=True)
    letter: Mapped[Blob | None] = relationship()


class Event(Base):
    """One change on a delivery (or a campaign): the history nobody rewrites."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))  # "status", "outcome", "campaign", ...
    from_status: Mapped[str] = mapped_column(String(16), default="")
    to_status: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(Base):
    """An address on the do-not-contact list: checked when each message is about to go."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(320), unique=True)  # the address lower-cased
    email: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Blob(Base):
    """An attachment's bytes, stored once whatever the number of deliveries that carry it."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(200))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DeliveryAttachment(Base):
    __tablename__ = "delivery_attachments"

    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    filename: Mapped[str] = mapped_column(String(500))

    blob: Mapped[Blob] = relationship()


class Outcome(StrEnum):
    """What happened to a sent message afterwards (the second axis; tracking.py writes it)."""

    DELAYED = "delayed"  # a DSN says the receiving side is still trying
    DELIVERED = "delivered"  # confirmed by a DSN, or presumed: no bounce within the window
    BOUNCED = "bounced"  # a DSN or an MTA's plain-text notice says it failed


class InboundKind(StrEnum):
    BOUNCE = "bounce"
    DELAY = "delay"
    DELIVERED = "delivered"  # a DSN that confirms delivery (rarely asked for)
    REPLY = "reply"
    AUTO_REPLY = "auto_reply"
    UNMATCHED = "unmatched"  # kept and listed: nothing ties it to a delivery
    MALFORMED = "malformed"  # kept and listed: it cannot be read as a message


class InboundMessage(Base):
    """One message read from the team's mailbox or an archive, kept whole whatever it is."""

    __tablename__ = "inbound_messages"
    __table_args__ = (UniqueConstraint("folder", "uidvalidity", "uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Its Message-ID, else "sha256:" and the digest of its bytes: a message is counted once.
    dedup_key: Mapped[str] = mapped_column(String(998), unique=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    matched_by: Mapped[str] = mapped_column(String(40), default="")  # how it was tied
    source: Mapped[str] = mapped_column(String(1000), default="")  # "imap" or the imported path
    folder: Mapped[str | None] = mapped_column(String(300))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uid: Mapped[int | None] = mapped_column(BigInteger)
    sender: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime | None] = mapped_column()  # its Date header
    detail: Mapped[str] = mapped_column(Text, default="")  # DSN status and diagnostic, or why
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InboxState(Base):
    """The highest UID read in one IMAP folder: a poll fetches only what came after it."""

    __tablename__ = "inbox_state"

    folder: Mapped[str] = mapped_column(String(300), primary_key=True)  # "user@host/INBOX"
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)


class ResponseKind(StrEnum):
    REPLY = "reply"  # an email answer (tracking)
    AUTO_REPLY = "auto_reply"  # an out-of-office or other machine answer: not an answer
    ACKNOWLEDGED = "acknowledged"
    ANSWERED = "answered"
    DECLINED = "declined"
    MEETING = "meeting"
    OTHER = "other"


class ResponseChannel(StrEnum):
    EMAIL = "email"
    POST = "post"
    FAX = "fax"
    PHONE = "phone"
    MEETING = "meeting"


class Response(Base):
    """An answer from one recipient to one delivery, by email or recorded by the team."""

    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column()
    sender: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    excerpt: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    inbound_id: Mapped[int | None] = mapped_column(
        ForeignKey("inbound_messages.id", ondelete="SET NULL"), unique=True
    )
    file_name: Mapped[str] = mapped_column(String(500), default="")
    file_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    delivery: Mapped[Delivery] = relationship()

    @property
    def counts_as_answer(self) -> bool:
        return self.kind != ResponseKind.AUTO_REPLY
