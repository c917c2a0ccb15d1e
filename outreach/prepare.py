"""PDF letters rendered ahead of their send, so that laying one out (about 160 ms) never holds up
the email path.

A letter reaches a delivery in one of three ways:
- `campaign send` and `campaign schedule` check every message before they create anything, and
  render each letter on the way: `keep_checked` keeps those with the new deliveries;
- for the letters still missing (a campaign scheduled through the API, not the CLI), the
  dispatcher asks the workers for a few at a time (`dispatch.py`), before the campaign starts
  if it is scheduled, and `prepare_letters` renders them in worker processes beside the sends;
- the send itself renders a letter that was not kept, or whose key no longer matches what it
  would be rendered from now (an address changed, the layout was edited): never a stale letter.

The dispatcher releases a campaign's email and fax deliveries only once their letter is kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from outreach import deliveries
from outreach.errors import OutreachError
from outreach.messages import letter_for, store_blob
from outreach.models import Campaign, Channel, Delivery, Event, Status
from outreach.pdf import Letter
from outreach.sending import KitCache


def keep_letter(session: Session, delivery: Delivery, letter: Letter) -> None:
    """Store the letter's bytes (once by sha256) and tie it to the delivery, with an event."""
    pdf = letter.attachment
    store_blob(session, pdf)
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id)
        .values(letter_sha256=pdf.sha256, letter_filename=pdf.filename, letter_key=letter.key)
    )
    session.execute(
        insert(Event).values(
            campaign_id=delivery.campaign_id,
            delivery_id=delivery.id,
            kind="letter",
            detail=f"PDF letter rendered: {pdf.filename} ({len(pdf.data):,} bytes)",
        )
    )


def keep_checked(session: Session, campaign: Campaign, letters: Mapping[int, Letter]) -> int:
    """Keep the letters `campaign check` rendered (by recipient id) with the campaign's
    deliveries that have none yet; returns how many."""
    query = select(Delivery).where(
        Delivery.campaign_id == campaign.id, Delivery.letter_sha256.is_(None)
    )
    kept = 0
    for delivery in session.scalars(query):
        letter = letters.get(delivery.recipient_id)
        if letter is not None:
            keep_letter(session, delivery, letter)
            kept += 1
    return kept


def prepare_letters(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], kits: KitCache
) -> Counter[str]:
    """Render and keep the letters of these deliveries, each committed as soon as it is kept.
    Deliveries no longer pending, or whose letter is already kept, are skipped. A letter that
    cannot be rendered fails its delivery with the reason: the campaign goes on without it."""
    done: Counter[str] = Counter()
    with sessions() as session:
        query = (
            select(Delivery)
            .where(
                Delivery.id.in_(delivery_ids),
                Delivery.status == Status.PENDING,
                Delivery.letter_sha256.is_(None),
            )
            .options(selectinload(Delivery.recipient))
            .order_by(Delivery.id)
        )
        for delivery in session.scalars(query).all():
            kit = kits.get(session, delivery.campaign_id)
            if kit.pdf is None and delivery.channel == Channel.EMAIL:
                done["skipped"] += 1  # the layout was removed: the email goes without a letter
                continue
            try:
                letter = letter_for(kit, delivery.recipient)
            except OutreachError as exc:
                reason = f"the PDF letter cannot be rendered: {exc}"
                deliveries.mark_failed(session, delivery.id, reason, source=Status.PENDING)
                done["failed"] += 1
            else:
                keep_letter(session, delivery, letter)
                done["prepared"] += 1
            session.commit()
    return done
