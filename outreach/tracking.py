"""Tracking: what happened to each message after it left, from what comes back.

Every inbound message is kept whole (`InboundMessage`), sorted, and tied to a delivery where the
message itself says which one, in this order:

    1. VERP: it came to the delivery's return path, `bounces+<id>-<mac>@...` (`return_path`);
       the MAC makes a token that cannot be made up from a delivery id alone
    2. its In-Reply-To or References name a delivery's Message-ID
    3. a bounce's returned original (message/rfc822, text/rfc822-headers, or the quoted text of
       an MTA's plain-text notice) names a delivery's Message-ID or VERP address
    4. last, and recorded as such: a reply that lost its headers, from the very address a
       delivery went to, with that delivery's subject behind "Re:", "AW:", "Automatic reply:"...
       when exactly one delivery fits

Sorting: an RFC 3464 report (`multipart/report; report-type=delivery-status`) is a bounce
(Action: failed), a delay (delayed) or a confirmation (delivered, relayed); an MTA's plain-text
notice (Exchange, Gmail, Postfix or qmail forms) is recognised by its sender and wording; an
automatic answer (RFC 3834 Auto-Submitted, X-Autoreply, X-Autorespond, Precedence: auto_reply,
out-of-office subjects) is an `auto_reply`, which is kept but does not count as an answer.
Nothing is dropped: a message tied to no delivery is `unmatched`, one that cannot be read as a
message is `malformed`; both are listed by `inbox list`.

The outcome is the second axis of a sent delivery; a change never goes down this order, and each
change writes an Event (kind "outcome"):

    ""  <  delayed  <  delivered (a DSN, a reply, or presumed after the window)  <  bounced

A hard bounce (Action: failed with a 5.x.x status) puts the address on the suppression list.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import hashlib
import hmac
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from functools import lru_cache

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from outreach import deliveries, suppression
from outreach.config import Settings
from outreach.errors import ConfigError
from outreach.models import (
    Campaign,
    Channel,
    Delivery,
    Event,
    InboundKind,
    InboundMessage,
    Outcome,
    Response,
    ResponseChannel,
    ResponseKind,
    Status,
    utcnow,
)

RANK = {"": 0, Outcome.DELAYED: 1, Outcome.DELIVERED: 2, Outcome.BOUNCED: 3}
MESSAGE_ID = re.compile(r"<[^<>\s@]{1,250}@[^<>\s@]{1,250}>")
ENHANCED_STATUS = re.compile(r"\b([245])\.\d{1,3}\.\d{1,3}\b")
SMTP_REPLY = re.compile(r"(?<![\d.])([45])\d\d(?=[ -]\S)")
VERP_SHAPE = r"(\d{1,18}-[a-z2-7]{10})"
BOUNCE_SENDER = re.compile(
    r"mailer-daemon|postmaster|mail delivery (subsystem|system)|microsoftexchange", re.I
)
BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|delivery status notification|delivery (failure|has failed)|"
    r"failure notice|mail delivery failed|could not be delivered|nicht zustellbar|"
    r"unzustellbar|non remis|warning: message|delayed mail",
    re.I,
)
DELAY_WORDS = re.compile(
    r"\bdelay(ed)?\b|will (continue|keep) trying|not yet been delivered|still trying|"
    r"will retry|verzögert",
    re.I,
)
HARD_WORDS = re.compile(
    r"permanent(ly)?|does not exist|user unknown|unknown user|no such user|"
    r"recipient not found|address rejected|mailbox unavailable",
    re.I,
)
OUT_OF_OFFICE = re.compile(
    r"out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response)|autoreply|"
    r"vacation|abwesenheit|automatische antwort|réponse automatique|absence du bureau|"
    r"risposta automatica|respuesta automática|fuera de la oficina|odpowiedź automatyczna|"
    r"nieobecno",
    re.I,
)
REPLY_PREFIX = re.compile(
    r"^(\s*(re|aw|sv|vs|antw|wg|fw|fwd|tr|rif|r|automatic reply|automatische antwort|"
    r"réponse automatique|out of office|abwesend|autoreply|auto-reply)\s*(\[\d+\])?\s*:)+",
    re.I,
)
QUOTE_START = re.compile(
    r"^(on .+ wrote:|am .+ schrieb .+:|le .+ a écrit ?:|-+ ?original message ?-+|from: .+)$",
    re.I,
)
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To", "Cc")
EXCERPT_CHARS = 300


# --- VERP -------------------------------------------------------------------------------------


def _verp_parts(settings: Settings) -> tuple[str, str]:
    """The text before and after "{token}" in the bounce address template."""
    template = settings.bounce_address
    if template.count("{token}") != 1 or "@" not in template.partition("{token}")[2]:
        raise ConfigError(
            f"OUTREACH_BOUNCE_ADDRESS: {template!r} must hold one {{token}} before the @, "
            'like "bounces+{token}@example.org"'
        )
    prefix, _, suffix = template.partition("{token}")
    return prefix, suffix


def verp_token(delivery_id: int, message_id: str, settings: Settings) -> str:
    """`<id>-<mac>`: the delivery id, and a MAC over it and its random Message-ID."""
    key = settings.verp_secret.get_secret_value().encode()
    digest = hmac.new(key, f"{delivery_id}:{message_id}".encode(), hashlib.sha256).digest()
    return f"{delivery_id}-{base64.b32encode(digest).decode().lower()[:10]}"


def return_path(delivery: Delivery, settings: Settings) -> str:
    """The envelope sender for one delivery: its VERP address, or From's address without one."""
    if not settings.bounce_address:
        return _address(delivery.campaign.sender)
    prefix, suffix = _verp_parts(settings)
    return f"{prefix}{verp_token(delivery.id, delivery.message_id, settings)}{suffix}"


@lru_cache(maxsize=64)
def _address(sender: str) -> str:
    """A From's bare address, parsed once per campaign sender, not per message."""
    return parseaddr(sender)[1]


def parse_verp(address: str, settings: Settings) -> str | None:
    """The token of a VERP address of ours, or None (MTAs may change the case of local parts)."""
    if not settings.bounce_address:
        return None
    prefix, suffix = _verp_parts(settings)
    found = re.fullmatch(re.escape(prefix) + VERP_SHAPE + re.escape(suffix), address.strip(), re.I)
    return found.group(1).lower() if found else None


def find_by_token(session: Session, token: str, settings: Settings) -> Delivery | None:
    """The delivery a token names, if its MAC is right."""
    delivery = session.get(Delivery, int(token.partition("-")[0]))
    if delivery is None:
        return None
    expected = verp_token(delivery.id, delivery.message_id, settings)
    return delivery if hmac.compare_digest(expected, token) else None


# --- reading a message ------------------------------------------------------------------------


def read_message(raw: bytes) -> EmailMessage | None:
    """The message, or None when the bytes cannot be read as one (no header at all)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not message.keys():
        return None
    if not any(_header(message, h) for h in ("From", "Date", "Message-ID", "Subject")):
        return None
    return message


def _header(message: Message, name: str) -> str:
    """A header as text; one that cannot be parsed at all counts as absent, never as fatal."""
    try:
        value = message.get(name)
    except Exception:  # the parser's errors on broken headers are of many kinds
        return ""
    return str(value).strip() if value is not None else ""


def dedup_key(message: EmailMessage | None, raw: bytes) -> str:
    """What makes a message the same message when it is read twice."""
    found = MESSAGE_ID.search(_header(message, "Message-ID")) if message is not None else None
    return found.group(0) if found else f"sha256:{hashlib.sha256(raw).hexdigest()}"


def sent_date(message: EmailMessage) -> datetime | None:
    """The Date header as an aware datetime, or None."""
    try:
        value = message.get("Date")
        when = getattr(value, "datetime", None)
    except Exception:  # an unparseable Date is no date
        return None
    return when if isinstance(when, datetime) and when.tzinfo is not None else None


def _text_of(part: Message) -> str:
    """A part's text, decoded leniently (unknown charsets and bad bytes included)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1")


def _all_text(message: Message) -> str:
    """Every text part, and the headers of returned originals, as one string to search."""
    chunks: list[str] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind.startswith("text/"):
            chunks.append(_text_of(part))
        elif kind == "message/rfc822" and isinstance(part.get_payload(), list):
            original = part.get_payload(0)
            chunks.extend(f"{k}: {_header(original, k)}" for k in original)
    return "\n".join(chunks)


def body_text(message: EmailMessage) -> str:
    """The readable body: the plain part, else the HTML part without its tags."""
    try:
        part = message.get_body(("plain", "html"))
    except Exception:  # a broken MIME structure has no body to read
        part = None
    if part is None:
        return ""
    text = _text_of(part)
    if part.get_content_type() == "text/html":
        text = html.unescape(
            re.sub(r"<[^>]+>", " ", re.sub(r"(?is)<(style|script).*?</\1>", "", text))
        )
    return text


def excerpt(message: EmailMessage) -> str:
    """The new words of a reply: quoted lines and the quoted letter left out, then shortened."""
    kept: list[str] = []
    for line in body_text(message).splitlines():
        if QUOTE_START.match(line.strip()):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line.strip())
    text = " ".join(" ".join(kept).split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


# --- sorting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """What a delivery status notice says about one recipient."""

    action: str  # failed, delayed, delivered, relayed, expanded
    status: str  # "5.1.1", or "" when the notice gives none
    recipients: tuple[str, ...]  # final and original recipient, lower-cased
    diagnostic: str

    @property
    def hard(self) -> bool:
        return self.action == "failed" and self.status.startswith("5")

    def describe(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.action}{status}: {self.diagnostic}".strip()


@dataclass(frozen=True)
class Sorting:
    """What an inbound message is, before it is tied to a delivery."""

    kind: InboundKind
    notices: tuple[Notice, ...] = ()
    ids: tuple[str, ...] = ()  # Message-IDs it names, most telling first
    addresses: tuple[str, ...] = ()  # addresses that may be our VERP addresses
    text: str = field(default="", repr=False)  # searched for co-recipients of a bounce


ACTION_KIND = {
    "failed": InboundKind.BOUNCE,
    "delayed": InboundKind.DELAY,
    "delivered": InboundKind.DELIVERED,
    "relayed": InboundKind.DELIVERED,
    "expanded": InboundKind.DELIVERED,
}
ACTION_ORDER = ("failed", "delayed", "delivered", "relayed", "expanded")


def sort_message(message: EmailMessage) -> Sorting:
    """Bounce, delay, confirmation, automatic answer or reply: what the message says it is."""
    report = _delivery_status(message)
    if report:
        return _bounce_sorting(message, report)
    if report is not None or _looks_like_bounce(message):  # a report without fields: its words
        return _bounce_sorting(message, [_plain_notice(message)])
    kind = InboundKind.AUTO_REPLY if is_automatic(message) else InboundKind.REPLY
    return Sorting(kind=kind, ids=_reply_ids(message), addresses=_recipient_addresses(message))


def _delivery_status(message: EmailMessage) -> list[Notice] | None:
    """The per-recipient fields of an RFC 3464 report, or None if there is none."""
    for part in message.walk():
        if part.get_content_type() == "message/delivery-status":
            blocks = part.get_payload()
            if isinstance(blocks, list) and blocks:
                return [_notice(block) for block in blocks[1:] if _header(block, "Action")]
    return None


def _notice(block: Message) -> Notice:
    status = ENHANCED_STATUS.search(_header(block, "Status"))
    recipients = tuple(
        _after_type(_header(block, name)).lower()
        for name in ("Final-Recipient", "Original-Recipient")
        if _header(block, name)
    )
    return Notice(
        action=_header(block, "Action").lower().split()[0] if _header(block, "Action") else "",
        status=status.group(0) if status else "",
        recipients=recipients,
        diagnostic=" ".join(_after_type(_header(block, "Diagnostic-Code")).split()),
    )


def _after_type(value: str) -> str:
    """`rfc822; a@b` → `a@b`; `smtp; 550 ...` → `550 ...`."""
    return value.partition(";")[2].strip() if ";" in value else value


def _looks_like_bounce(message: EmailMessage) -> bool:
    """An MTA's plain-text notice: from a mailer daemon or to a null sender, in bounce words."""
    sender = _header(message, "From")
    null_sender = _header(message, "Return-Path") in {"<>", ""} and "Return-Path" in message
    subject = _header(message, "Subject")
    return bool(BOUNCE_SUBJECT.search(subject)) and (
        bool(BOUNCE_SENDER.search(sender)) or null_sender
    )


def _plain_notice(message: EmailMessage) -> Notice:
    """What a plain-text notice says: delayed or failed, its status code and its words."""
    text = body_text(message)
    words = f"{_header(message, 'Subject')}\n{text}"
    status = ENHANCED_STATUS.search(text)
    reply = SMTP_REPLY.search(text)
    if DELAY_WORDS.search(words) and not (status and status.group(1) == "5"):
        action = "delayed"
    else:
        action = "failed"
    code = status.group(0) if status else ""
    if (
        action == "failed"
        and not code
        and (HARD_WORDS.search(text) or (reply and reply.group(1) == "5"))
    ):
        code = "5.0.0"
    return Notice(action=action, status=code, recipients=(), diagnostic=_diagnostic_line(text))


def _diagnostic_line(text: str) -> str:
    """The line of a notice that says why: the one with a status code, else the first words."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if ENHANCED_STATUS.search(line) or SMTP_REPLY.search(line):
            return line[:300]
    return " ".join(lines[:3])[:300]


def _bounce_sorting(message: EmailMessage, notices: list[Notice]) -> Sorting:
    """A notice: its kind from its gravest action, and the ids its returned original names."""
    notices.sort(key=lambda n: ACTION_ORDER.index(n.action) if n.action in ACTION_ORDER else 9)
    kind = ACTION_KIND.get(notices[0].action, InboundKind.BOUNCE) if notices else InboundKind.BOUNCE
    own = dedup_key(message, b"")
    text = _all_text(message)
    named = re.findall(r"(?im)^\s*message-id:\s*(<[^<>\s]+>)", text)  # the original's own id
    ids = tuple(dict.fromkeys(i for i in [*named, *MESSAGE_ID.findall(text)] if i != own))
    addresses = (*_recipient_addresses(message), *re.findall(r"[\w.+=-]+@[\w.-]+", text))
    return Sorting(kind, tuple(notices), ids, tuple(dict.fromkeys(addresses)), text.lower())


def is_automatic(message: EmailMessage) -> bool:
    """An automatic answer per RFC 3834 and the common non-standard marks."""
    auto = _header(message, "Auto-Submitted").lower().split(";")[0].strip()
    if auto and auto != "no":
        return True
    if _header(message, "X-Autoreply") or _header(message, "X-Autorespond"):
        return True
    if _header(message, "Precedence").lower() == "auto_reply":
        return True
    return bool(OUT_OF_OFFICE.search(_header(message, "Subject")))


def _reply_ids(message: EmailMessage) -> tuple[str, ...]:
    """In-Reply-To first, then References from the newest to the oldest."""
    parent = MESSAGE_ID.findall(_header(message, "In-Reply-To"))
    ancestors = MESSAGE_ID.findall(_header(message, "References"))[::-1]
    return tuple(dict.fromkeys([*parent, *ancestors]))


def _recipient_addresses(message: EmailMessage) -> tuple[str, ...]:
    values = [_header(message, name) for name in RECIPIENT_HEADERS]
    return tuple(a for _, a in getaddresses([v for v in values if v]) if a)


# --- matching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    delivery: Delivery
    matched_by: str  # "verp", "in-reply-to", "returned-original", "sender+subject"


def match(
    session: Session, message: EmailMessage, sorting: Sorting, settings: Settings
) -> Match | None:
    """The delivery the message is about, found in the order the module docstring gives."""
    for address in sorting.addresses:
        token = parse_verp(address, settings)
        found = find_by_token(session, token, settings) if token else None
        if found is not None:
            return Match(found, "verp")
    by_id = _by_message_ids(session, sorting.ids)
    if by_id is not None:
        replying = sorting.kind in (InboundKind.REPLY, InboundKind.AUTO_REPLY)
        return Match(by_id, "in-reply-to" if replying else "returned-original")
    if sorting.kind in (InboundKind.REPLY, InboundKind.AUTO_REPLY):
        found = _by_sender_and_subject(session, message)
        return Match(found, "sender+subject") if found is not None else None
    return None


def _by_message_ids(session: Session, ids: Sequence[str]) -> Delivery | None:
    """The delivery whose Message-ID comes first in `ids`."""
    if not ids:
        return None
    rows = {
        d.message_id: d
        for d in session.scalars(select(Delivery).where(Delivery.message_id.in_(ids[:200])))
    }
    return next((rows[i] for i in ids if i in rows), None)


def bare_subject(subject: str) -> str:
    """A subject without its reply and auto-reply prefixes, spaces and case."""
    return " ".join(REPLY_PREFIX.sub("", subject).split()).casefold()


def _by_sender_and_subject(session: Session, message: EmailMessage) -> Delivery | None:
    """The one sent delivery to this sender with this subject; None if none or several."""
    sender = parseaddr(_header(message, "From"))[1].lower()
    subject = bare_subject(_header(message, "Subject"))
    if not sender or not subject:
        return None
    candidates = session.scalars(
        select(Delivery).where(
            func.lower(Delivery.address) == sender,
            Delivery.status.in_([Status.SENT, Status.UNKNOWN]),
        )
    ).all()
    fits = [d for d in candidates if bare_subject(d.subject) == subject]
    return fits[0] if len(fits) == 1 else None


# --- recording --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where an inbound message was read: an IMAP folder and UID, or an imported file."""

    source: str
    folder: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None


def record(
    session: Session, raw: bytes, settings: Settings, origin: Origin
) -> InboundMessage | None:
    """Keep, sort, match and apply one inbound message; None when it was already recorded."""
    message = read_message(raw)
    key = dedup_key(message, raw)[:998]
    if session.scalar(select(InboundMessage.id).where(InboundMessage.dedup_key == key)):
        return None
    inbound = InboundMessage(
        dedup_key=key, raw=raw, source=origin.source, folder=origin.folder,
        uidvalidity=origin.uidvalidity, uid=origin.uid, kind=InboundKind.MALFORMED,
    )  # fmt: skip
    found: Match | None = None
    sorting: Sorting | None = None
    if message is not None:
        sorting = sort_message(message)
        found = match(session, message, sorting, settings)
        _describe(inbound, message, sorting, found)
    if not _insert(session, inbound):
        return None
    if found is not None and sorting is not None and message is not None:
        apply(session, inbound, message, sorting, found.delivery)
    return inbound


def _describe(
    inbound: InboundMessage, message: EmailMessage, sorting: Sorting, found: Match | None
) -> None:
    inbound.kind = sorting.kind if found is not None else InboundKind.UNMATCHED
    inbound.delivery_id = found.delivery.id if found is not None else None
    inbound.matched_by = found.matched_by if found is not None else ""
    inbound.sender = _header(message, "From")
    inbound.subject = _header(message, "Subject")
    inbound.sent_at = sent_date(message)
    details = "; ".join(n.describe() for n in sorting.notices)
    inbound.detail = (
        details if found is not None else f"looks like a {sorting.kind}. {details}".strip()
    )


def _insert(session: Session, inbound: InboundMessage) -> bool:
    """Add the row; False if another poller recorded the same message meanwhile."""
    try:
        with session.begin_nested():
            session.add(inbound)
            session.flush()
    except IntegrityError:
        return False
    return True


def apply(
    session: Session,
    inbound: InboundMessage,
    message: EmailMessage,
    sorting: Sorting,
    delivery: Delivery,
) -> None:
    """Turn a matched message into an outcome, a suppression or a response."""
    now = utcnow()
    if delivery.status == Status.UNKNOWN:  # something came back: the server had accepted it
        deliveries.transition(
            session, delivery.id, Status.UNKNOWN, Status.SENT,
            detail=f"accepted: inbound message {inbound.id} ({inbound.kind}) refers to it",
        )  # fmt: skip
    if sorting.kind in (InboundKind.REPLY, InboundKind.AUTO_REPLY):
        _add_reply(session, inbound, message, sorting.kind, delivery, now)
        set_outcome(session, delivery.id, Outcome.DELIVERED, f"{sorting.kind} received", now)
        return
    notice = _notice_for(delivery, sorting)
    if notice is None:
        inbound.detail = f"about a co-recipient, not {delivery.address}. {inbound.detail}"
        return
    outcome = {
        InboundKind.BOUNCE: Outcome.BOUNCED,
        InboundKind.DELAY: Outcome.DELAYED,
        InboundKind.DELIVERED: Outcome.DELIVERED,
    }[sorting.kind if notice.action != "failed" else InboundKind.BOUNCE]
    set_outcome(session, delivery.id, outcome, notice.describe(), now)
    if notice.hard and delivery.address:
        suppress(session, delivery.address, f"hard bounce: {notice.describe()}")


def _notice_for(delivery: Delivery, sorting: Sorting) -> Notice | None:
    """The notice about this delivery's own address; None when it is about a co-recipient."""
    address = delivery.address.lower()
    for notice in sorting.notices:
        if address in notice.recipients:
            return notice
    named = [n for n in sorting.notices if n.recipients]
    campaign: Campaign = delivery.campaign
    others = {a.lower() for v in [*campaign.cc, *campaign.bcc] for _, a in getaddresses([v])}
    if named and all(set(n.recipients) & others for n in named):
        return None
    if not named and address not in sorting.text and any(o in sorting.text for o in others):
        return None
    return sorting.notices[0] if sorting.notices else None


def _add_reply(
    session: Session, inbound: InboundMessage, message: EmailMessage, kind: InboundKind,
    delivery: Delivery, now: datetime,
) -> None:  # fmt: skip
    when = min(inbound.sent_at or now, now)
    session.add(
        Response(
            delivery_id=delivery.id,
            kind=ResponseKind.AUTO_REPLY if kind == InboundKind.AUTO_REPLY else ResponseKind.REPLY,
            channel=ResponseChannel.EMAIL,
            received_at=when,
            sender=inbound.sender,
            subject=inbound.subject,
            excerpt=excerpt(message),
            inbound_id=inbound.id,
        )
    )


# --- outcome and suppression ------------------------------------------------------------------


def set_outcome(
    session: Session, delivery_id: int, outcome: Outcome, detail: str, now: datetime
) -> bool:
    """Raise a delivery's outcome (never lower it), writing an Event; False if nothing changed."""
    current = session.scalar(select(Delivery.outcome).where(Delivery.id == delivery_id))
    if current is None or RANK[outcome] <= RANK.get(current, 0):
        return False
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.outcome == current)
        .values(outcome=outcome, outcome_at=now)
        .returning(Delivery.campaign_id)
    )
    row = result.first()
    if row is None:  # another poller changed it meanwhile: read again and decide again
        return set_outcome(session, delivery_id, outcome, detail, now)
    session.execute(
        insert(Event).values(
            campaign_id=row.campaign_id, delivery_id=delivery_id, kind="outcome",
            from_status=current, to_status=outcome, detail=detail, created_at=now,
        )
    )  # fmt: skip
    return True


def suppress(session: Session, address: str, reason: str) -> None:
    """Put an address on the do-not-contact list (another poller adding it first is fine)."""
    with contextlib.suppress(IntegrityError), session.begin_nested():
        suppression.add(session, address, reason)


def presume_delivered(session: Session, now: datetime, settings: Settings) -> int:
    """Sent messages that drew no bounce within the window are delivered, as letter services
    count them; a delay notice followed by silence for the window counts the same."""
    window = timedelta(hours=settings.presumed_delivered_after_hours)
    cutoff = now - window
    hours = f"{settings.presumed_delivered_after_hours:g} h"
    due = session.execute(
        select(Delivery.id, Delivery.campaign_id, Delivery.outcome).where(
            Delivery.channel == Channel.EMAIL,
            Delivery.status == Status.SENT,
            ((Delivery.outcome == "") & (Delivery.sent_at <= cutoff))
            | ((Delivery.outcome == Outcome.DELAYED) & (Delivery.outcome_at <= cutoff)),
        )
    ).all()
    moved = [r for r in due if _raise_outcome(session, r.id, r.outcome, now)]
    if moved:
        session.execute(
            insert(Event),
            [
                {
                    "campaign_id": r.campaign_id, "delivery_id": r.id, "kind": "outcome",
                    "from_status": r.outcome, "to_status": Outcome.DELIVERED,
                    "detail": f"presumed: no bounce within {hours}", "created_at": now,
                }
                for r in moved
            ],
        )  # fmt: skip
    return len(moved)


def _raise_outcome(session: Session, delivery_id: int, expected: str, now: datetime) -> bool:
    result = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.outcome == expected)
        .values(outcome=Outcome.DELIVERED, outcome_at=now)
    )
    return bool(result.rowcount)


def unmatched(session: Session) -> Iterable[InboundMessage]:
    """Messages kept but tied to no delivery, oldest first: for the team to look at."""
    return session.scalars(
        select(InboundMessage)
        .where(InboundMessage.kind.in_([InboundKind.UNMATCHED, InboundKind.MALFORMED]))
        .order_by(InboundMessage.id)
    ).all()
