"""From a campaign and one of its recipients to the bytes of that recipient's message.

The one path used by `campaign check`, `preview`, `send --dry-run`, the workers, and
`deliveries show --eml`: what was checked is what is sent, and what was sent can be rebuilt.
A `Kit` holds what is the same for every message of a campaign (compiled templates, attachment
bytes, the To and CC lists), so a worker prepares it once per campaign, not per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from outreach import campaigns, followups
from outreach.compose import Attachment, MessageSpec, attachment_from_path, compose, format_address
from outreach.config import Settings
from outreach.errors import OutreachError, TemplateError
from outreach.letters import (
    LetterRenderer,
    build_context,
    load_template,
    recipient_view,
    template_problems,
    variables,
)
from outreach.models import (
    Blob,
    Campaign,
    Channel,
    Delivery,
    Recipient,
    Role,
    utcnow,
)
from outreach.pdf import Letter, layout_problems, render_all, renderer_for

if TYPE_CHECKING:
    from outreach.typeset import PdfRenderer


@dataclass(frozen=True)
class Kit:
    """Everything a campaign's messages share."""

    campaign: Campaign
    renderer: LetterRenderer
    attachments: tuple[Attachment, ...]
    principals: tuple[dict[str, Any], ...]
    copies: tuple[dict[str, Any], ...]
    place: str
    sender_info: dict[str, Any]
    pdf: PdfRenderer | None = None  # the letter layout, when the folder has one
    # A follow-up's first letter as each recipient got it, by recipient id.
    originals: dict[int, dict[str, Any]] = field(default_factory=dict)

    def letter_date(self) -> date:
        return (self.campaign.letter_date or utcnow()).date()


def load_kit(session: Session, campaign: Campaign) -> Kit:
    """Load and compile the campaign's template and read its attachments, once. The To and CC
    lists are built only when a template prints them: a mass mailing's would not fit a worker."""
    template = load_template(Path(campaign.template_dir))
    used = variables(template)
    people = campaigns.members(session, campaign) if {"principals", "copies"} & used else []
    return Kit(
        campaign=campaign,
        renderer=LetterRenderer(template),
        attachments=tuple(attachment_from_path(p) for p in template.attachments),
        principals=tuple(recipient_view(m.recipient) for m in people if m.role == Role.TO),
        copies=tuple(recipient_view(m.recipient) for m in people if m.role == Role.CC),
        place=template.place,
        sender_info=dict(template.sender),
        pdf=renderer_for(Path(campaign.template_dir)),
        originals=_originals(session, campaign),
    )


def _originals(session: Session, campaign: Campaign) -> dict[int, dict[str, Any]]:
    """A follow-up's first letter as each of its recipients got it (for threading, too)."""
    if not campaign.follow_up_of:
        return {}
    return {
        m.recipient.id: followups.original_for(session, campaign, m.recipient)
        for m in campaigns.members(session, campaign)
    }


def _context(kit: Kit, recipient: Recipient) -> dict[str, Any]:
    campaign = kit.campaign
    return build_context(
        recipient=recipient_view(recipient),
        campaign={"name": campaign.name, "sender": campaign.sender},
        sender=kit.sender_info,
        principals=kit.principals,
        copies=kit.copies,
        letter_date=kit.letter_date(),
        place=kit.place,
        original=kit.originals.get(recipient.id, {}),
    )


def letter_for(kit: Kit, recipient: Recipient, ahead: Letter | None = None) -> Letter:
    """The recipient's personalised PDF letter, the bytes their message carries: `ahead` if it
    was rendered from what would be rendered now (TemplateError)."""
    return _letter(kit, _context(kit, recipient), ahead)


def _letter(kit: Kit, context: dict[str, Any], ahead: Letter | None) -> Letter:
    if kit.pdf is None:
        raise TemplateError(f"{kit.campaign.template_dir}: no letter layout (letter.html)")
    return kit.pdf.letter(context, kit.letter_date(), ahead)


def ahead_letter(delivery: Delivery) -> Letter | None:
    """The letter rendered for this delivery ahead of its send, if any (`prepare.py`). The key
    is read first: asking the relationship runs SQLAlchemy's lazy loader even when there is
    nothing to load (5 % of a worker's CPU, per message)."""
    if delivery.letter_sha256 is None or delivery.letter is None:
        return None
    data = delivery.letter.data
    pdf = Attachment(filename=delivery.letter_filename, content_type="application/pdf", data=data)
    return Letter(delivery.letter_key, pdf)


def draft(
    kit: Kit,
    recipient: Recipient,
    message_id: str,
    when: datetime,
    *,
    channel: Channel = Channel.EMAIL,
    address: str = "",
    ahead: Letter | None = None,
) -> MessageSpec:
    """Render the letter for one recipient and address it to them (TemplateError, HeaderError).
    By fax, the message goes to `address` (the fax gateway's) and carries only the PDF letter,
    the one rendered `ahead` when it still matches."""
    campaign = kit.campaign
    context = _context(kit, recipient)
    view = context["recipient"]
    letter = kit.renderer.render(context)
    attachments = kit.attachments
    if channel == Channel.FAX:
        attachments = (_letter(kit, context, ahead).attachment,)
    elif kit.pdf is not None:
        attachments = (*attachments, _letter(kit, context, ahead).attachment)
    return MessageSpec(
        message_id=message_id,
        date=when,
        sender=campaign.sender,
        to=format_address(
            view["display_name"] or view["department"] or view["organisation"],
            address or recipient.email or "",
        ),
        cc=tuple(campaign.cc),
        reply_to=campaign.reply_to,
        subject=letter.subject,
        text=letter.text,
        html=letter.html,
        attachments=attachments,
        extra_headers=followups.thread_headers(context["original"]),
    )


def kept_columns(spec: MessageSpec) -> dict[str, Any]:
    """The delivery's columns that keep what is about to be sent, so that it can be rebuilt
    byte for byte: written by the claim's own UPDATE (`deliveries.claim(..., kept=)`), not by
    a statement of their own."""
    return {
        "headers": [
            ["Message-ID", spec.message_id],
            ["Date", spec.date.isoformat()],
            ["From", spec.sender],
            ["To", spec.to],
            ["Cc", list(spec.cc)],
            ["Reply-To", spec.reply_to],
            ["Extra", [list(pair) for pair in spec.extra_headers]],
        ],
        "subject": spec.subject,
        "body_text": spec.text,
        "body_html": spec.html,
    }


def store_attachments(
    session: Session, attachments: tuple[Attachment, ...]
) -> tuple[tuple[str, str], ...]:
    """The attachments' bytes stored once by sha256; what a delivery keeps of them, (sha256,
    filename) in order, for its claim to write (`deliveries.claim(..., attachments=)`)."""
    stored = set(_stored_blobs(session, attachments))  # + this transaction's, locally
    for attachment in attachments:
        if attachment.sha256 not in stored:
            store_blob(session, attachment)
            stored.add(attachment.sha256)
    return tuple((a.sha256, a.filename) for a in attachments)


_KNOWN_BLOBS: WeakKeyDictionary[Engine, set[str]] = WeakKeyDictionary()
"""Per engine (one database), read from committed rows; blobs are never deleted."""


def _stored_blobs(session: Session, attachments: tuple[Attachment, ...]) -> set[str]:
    """The sha256 of the blobs already stored: asked of the database once per new attachment,
    not once per message (the campaign's fixed attachments recur in every one)."""
    # By the engine, not its URL: rendering the URL for each message cost 2 % of the send loop.
    known = _KNOWN_BLOBS.setdefault(session.get_bind().engine, set())
    unknown = [a.sha256 for a in attachments if a.sha256 not in known]
    if unknown:
        known.update(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(unknown))))
    return known


def store_blob(session: Session, attachment: Attachment) -> None:
    """Insert the bytes unless another worker just did (INSERT ... ON CONFLICT DO NOTHING)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    values = {
        "sha256": attachment.sha256,
        "size": len(attachment.data),
        "content_type": attachment.content_type,
        "data": attachment.data,
    }
    session.execute(insert(Blob).values(**values).on_conflict_do_nothing())


def kept_spec(delivery: Delivery) -> MessageSpec | None:
    """The message as it was kept when sent, or None if it was never prepared."""
    if delivery.headers is None:
        return None
    h = {name: value for name, value in delivery.headers}
    return MessageSpec(
        message_id=h["Message-ID"],
        date=datetime.fromisoformat(h["Date"]),
        sender=h["From"],
        to=h["To"],
        cc=tuple(h["Cc"]),
        reply_to=h["Reply-To"],
        extra_headers=tuple((name, value) for name, value in h.get("Extra", [])),
        subject=delivery.subject,
        text=delivery.body_text,
        html=delivery.body_html,
        attachments=tuple(
            Attachment(filename=a.filename, content_type=a.blob.content_type, data=a.blob.data)
            for a in delivery.attachments
        ),
    )


def rebuild(delivery: Delivery) -> bytes | None:
    """The exact bytes that were sent (composition is deterministic)."""
    spec = kept_spec(delivery)
    return compose(spec) if spec is not None else None


@dataclass
class CheckReport:
    """What `campaign check` found: problems stop a send; notes do not."""

    problems: list[str]
    notes: list[str]
    drafts: list[tuple[Recipient, Role, MessageSpec]]
    # The PDF letters rendered on the way, by recipient id: kept with the deliveries when the
    # campaign is sent or scheduled, so that no worker renders them again.
    letters: dict[int, Letter] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    session: Session,
    campaign: Campaign,
    settings: Settings,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Render and compose every message of the campaign, sending none; report every problem.
    The PDF letters are rendered on all cores (`render_all`); `progress(total)` is called
    once per recipient checked."""
    folder = Path(campaign.template_dir)
    report = CheckReport(
        problems=template_problems(folder) + layout_problems(folder), notes=[], drafts=[]
    )
    if report.problems:
        return report
    kit = load_kit(session, campaign)
    members = campaigns.members(session, campaign)
    letters: Iterator[Letter | str | None] = repeat(None)
    if kit.pdf is not None:
        contexts = [_context(kit, m.recipient) for m in members]
        letters = render_all(kit.pdf.root, contexts, kit.letter_date())
    now = utcnow()
    for member, letter in zip(members, letters, strict=False):  # `repeat` has no end
        _check_one(report, kit, member, letter, settings, now)
        if progress is not None:
            progress(len(members))
    return report


def _check_one(
    report: CheckReport,
    kit: Kit,
    member: campaigns.Member,
    letter: Letter | str | None,
    settings: Settings,
    now: datetime,
) -> None:
    """One recipient's message (or, by post or fax, their letter) checked; `letter` is their
    PDF letter as rendered, why it could not be, or None without a layout."""
    recipient = member.recipient
    who = _who(recipient)
    if isinstance(letter, str):
        report.problems.append(f"{who}: {letter}")
        return
    if letter is not None:
        report.letters[recipient.id] = letter
    channel = campaigns.delivery_channel(member, settings)
    if channel != Channel.EMAIL:
        report.notes.append(f"{who}: no email address; to be reached by {channel}")
        if letter is None:
            report.problems.append(f"{who}: no letter layout (letter.html) to print or fax")
        return
    try:
        spec = draft(kit, recipient, f"<check-{recipient.id}@outreach>", now, ahead=letter)
        compose(spec)
    except OutreachError as exc:
        report.problems.append(f"{who}: {exc}")
        return
    report.drafts.append((recipient, member.role, spec))


def _who(recipient: Recipient) -> str:
    name = recipient.full_name or recipient.organisation
    return f"{name} <{recipient.email}>" if recipient.email else name
