"""Letters by post: a print pack for the campaign's postal recipients, and their posting.

`print_pack` renders every pending postal letter (the same PDF as the email would carry), keeps
each on its delivery (bytes once by sha256, as for email), and writes two files: one PDF with all
the letters, each starting on an odd page so that duplex printing never puts two recipients on one
sheet, and a CSV of envelopes in the same order. Only then do the deliveries move
`pending -> printed`; the team marks them `posted` once they are in the post (`mark_posted`).
Everything is rendered before anything is written: one bad letter stops the pack.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from outreach import campaigns, deliveries, messages
from outreach.compose import Attachment
from outreach.config import Settings
from outreach.errors import OutreachError, TemplateError
from outreach.letters import recipient_view
from outreach.models import Campaign, Channel, Delivery, DeliveryAttachment, Status

ENVELOPE_COLUMNS = (
    "delivery", "first_page", "pages", "name", "address", "postcode", "city", "country",
)  # fmt: skip
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell


@dataclass(frozen=True)
class Printed:
    """One letter in the pack."""

    delivery: Delivery
    letter: Attachment
    first_page: int
    pages: int


@dataclass(frozen=True)
class PrintPack:
    letters: list[Printed]
    pdf: Path
    csv: Path


def print_pack(
    session: Session, campaign: Campaign, settings: Settings, folder: Path, *, reprint: bool = False
) -> PrintPack:
    """Render, write the pack and its CSV into `folder`, and mark the deliveries printed."""
    campaigns.create_deliveries(session, campaign, settings)
    sources = (Status.PENDING, Status.PRINTED) if reprint else (Status.PENDING,)
    rows = _postal(session, campaign, sources)
    kit = messages.load_kit(session, campaign)
    letters = _laid_out(rows, [_render(kit, d) for d in rows])
    folder.mkdir(parents=True, exist_ok=True)
    pack = PrintPack(
        letters=letters,
        pdf=folder / f"{campaign.name}-letters.pdf",
        csv=folder / f"{campaign.name}-envelopes.csv",
    )
    pack.pdf.write_bytes(_merged(letters))
    pack.csv.write_text(envelopes_csv(letters), encoding="utf-8", newline="")
    for item in letters:
        _keep(session, item.delivery, item.letter)
    for source in sources:
        ids = [item.delivery.id for item in letters if item.delivery.status == source]
        deliveries.transition_many(
            session, ids, source, Status.PRINTED, detail=f"print pack {pack.pdf.name}"
        )
    return pack


def _postal(session: Session, campaign: Campaign, sources: Sequence[Status]) -> list[Delivery]:
    """The campaign's postal deliveries in the given statuses, in a stable order."""
    query = (
        select(Delivery)
        .where(
            Delivery.campaign_id == campaign.id,
            Delivery.channel == Channel.POST,
            Delivery.status.in_(list(sources)),
        )
        .options(
            selectinload(Delivery.recipient),
            selectinload(Delivery.attachments),
            selectinload(Delivery.letter),
        )
        .order_by(Delivery.id)
    )
    return list(session.scalars(query))


def _render(kit: messages.Kit, delivery: Delivery) -> Attachment:
    """One recipient's letter, the one kept by the check if it still matches; its problem named
    with the recipient and delivery."""
    try:
        return messages.letter_for(
            kit, delivery.recipient, messages.ahead_letter(delivery)
        ).attachment
    except OutreachError as exc:
        who = delivery.recipient.full_name or delivery.recipient.organisation
        raise TemplateError(f"delivery {delivery.id} ({who}): {exc}") from exc


def _laid_out(rows: list[Delivery], letters: list[Attachment]) -> list[Printed]:
    """Each letter's first page in the pack: always odd, a blank page after an odd-length one."""
    from pypdf import PdfReader  # here, not at the top: a tenth of a second only packs need

    result, page = [], 1
    for delivery, letter in zip(rows, letters, strict=True):
        pages = len(PdfReader(io.BytesIO(letter.data)).pages)
        result.append(Printed(delivery, letter, first_page=page, pages=pages))
        page += pages + pages % 2
    return result


def _merged(letters: list[Printed]) -> bytes:
    """One PDF of all letters, padded with blank pages so that each starts on a new sheet."""
    from pypdf import PdfReader, PdfWriter  # as in _laid_out

    writer = PdfWriter()
    for item in letters:
        reader = PdfReader(io.BytesIO(item.letter.data))
        writer.append(reader)
        if item.pages % 2:
            box = reader.pages[-1].mediabox
            writer.add_blank_page(width=box.width, height=box.height)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def safe_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: one starting with = + - @ would run as a formula."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def envelopes_csv(letters: list[Printed]) -> str:
    """The posting list, one row per envelope, in the pack's order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ENVELOPE_COLUMNS)
    for item in letters:
        view = recipient_view(item.delivery.recipient)
        name = view["display_name"] or view["department"] or view["organisation"]
        cells = [
            str(item.delivery.id), str(item.first_page), str(item.pages), name,
            "\n".join(view["address_block"]), view["postcode"], view["city"],
            view["country_name"],
        ]  # fmt: skip
        writer.writerow([safe_cell(cell) for cell in cells])
    return out.getvalue()


def _keep(session: Session, delivery: Delivery, letter: Attachment) -> None:
    """The printed letter on its delivery, bytes once by sha256, so it can be shown again."""
    if any(a.sha256 == letter.sha256 for a in delivery.attachments):
        return
    messages.store_blob(session, letter)
    position = len(delivery.attachments)
    delivery.attachments.append(
        DeliveryAttachment(position=position, sha256=letter.sha256, filename=letter.filename)
    )


def mark_posted(session: Session, delivery_ids: Sequence[int]) -> list[int]:
    """Printed letters put in the post: returns the ids that moved (the others were not printed)."""
    return deliveries.transition_many(session, delivery_ids, Status.PRINTED, Status.POSTED)


def printed_ids(session: Session, campaign: Campaign) -> list[int]:
    """The campaign's letters that are printed and not yet posted."""
    query = select(Delivery.id).where(
        Delivery.campaign_id == campaign.id, Delivery.status == Status.PRINTED
    )
    return list(session.scalars(query.order_by(Delivery.id)))
