"""A local experiment, not used by outreach: the send loop of outreach/sending.py with the changes
proposed in benchmarks/README.md, to measure them (`profile_worker.py --variant batched`).

The guarantees are kept: a delivery is claimed by compare-and-swap (`queued -> sending`) and that
is committed before its DATA; its `sent` is committed before the next DATA, in the same commit as
the next claim; the Message-ID was fixed when the delivery was created; the message is kept before
the claim's commit. What changes:

1. the batch's deliveries, recipients, campaigns and kept attachments are loaded in one go
   (4 queries per batch instead of 4 per delivery), without FOR UPDATE: the claim's
   compare-and-swap is what makes a delivery one worker's;
2. the rate limit reads the campaign already loaded (no query per delivery);
3. `sent` (or any outcome) of message k is committed with the claim of message k+1: one commit
   per message instead of two; the last outcome is committed when the batch ends;
4. the Blob existence check of `keep` is skipped for blobs this process has seen stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from outreach import deliveries, sending, suppression
from outreach.compose import compose, envelope_recipients
from outreach.dispatch import account_limits
from outreach.errors import ConfigError, OutreachError, TransientSmtpError
from outreach.messages import draft, keep, kept_spec
from outreach.models import Blob, Delivery, Status, utcnow
from outreach.throttle import acquire

_stored_blobs: set[str] = set()


def send_batch(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], sender: sending.Sender
) -> Counter[str]:
    outcome: Counter[str] = Counter()
    try:
        sender.transport.open()
    except (TransientSmtpError, ConfigError) as exc:
        with sessions.begin() as session:
            sending._trip(session, delivery_ids, exc, sender.settings)
        outcome["paused"] = len(delivery_ids)
        return outcome
    with sessions() as session:
        loaded = {
            d.id: d
            for d in session.scalars(
                select(Delivery)
                .where(Delivery.id.in_(delivery_ids))
                .options(
                    selectinload(Delivery.recipient),
                    selectinload(Delivery.campaign),
                    selectinload(Delivery.attachments),
                )
            )
        }
        for position, delivery_id in enumerate(delivery_ids):
            delivery = loaded.get(delivery_id)
            limits = account_limits(sender.settings).tighter(
                delivery.campaign.rate if delivery else None
            )
            if not acquire(
                sender.throttle,
                sender.settings.smtp_account,
                limits,
                max_wait=sender.settings.queued_timeout / 2,
            ):
                session.commit()  # the previous message's outcome
                sending._give_back(session, delivery_ids[position:], "rate limit reached")
                session.commit()
                outcome["waiting"] += len(delivery_ids) - position
                return outcome
            outcome[_send_one(session, delivery, sender)] += 1
        session.commit()  # the last message's outcome
    return outcome


def _send_one(session: Session, delivery: Delivery | None, sender: sending.Sender) -> str:
    """As sending._send_one; on entry the session may hold the previous message's outcome,
    uncommitted: every path below commits it before anything else can go wrong."""
    if delivery is None or delivery.status != Status.QUEUED:
        return "skipped"
    refusal = sending._refusal(session, delivery)
    if refusal is not None:
        target, reason = refusal
        deliveries.transition(session, delivery.id, Status.QUEUED, target, detail=reason)
        session.commit()
        return target
    try:  # pure: nothing is written before the message is known to compose
        spec = kept_spec(delivery)
        kept = spec is not None
        if spec is None:
            kit = sender.kits.get(session, delivery.campaign_id)
            spec = draft(kit, delivery.recipient, delivery.message_id, utcnow())
        data = compose(spec)
        rcpts = envelope_recipients(spec, delivery.campaign.bcc)
    except OutreachError as exc:
        deliveries.mark_failed(session, delivery.id, str(exc), source=Status.QUEUED)
        session.commit()
        return Status.FAILED
    if not deliveries.claim(session, delivery.id):  # before keep: nothing of ours to undo
        return "skipped"
    if not kept:
        if {a.sha256 for a in spec.attachments} <= _stored_blobs:
            _keep_known(delivery, spec)
        else:
            keep(session, delivery, spec)
            _stored_blobs.update(a.sha256 for a in spec.attachments)
    session.commit()  # the previous `sent` and this `sending`, on disk before this DATA
    attempts = delivery.attempts + 1
    return sending._deliver(session, delivery, attempts, spec.sender, rcpts, data, sender)


def _keep_known(delivery: Delivery, spec: object) -> None:
    """keep() without its Blob query, for blobs already stored (they are never deleted)."""
    from outreach.models import DeliveryAttachment

    delivery.headers = [
        ["Message-ID", spec.message_id],  # type: ignore[attr-defined]
        ["Date", spec.date.isoformat()],  # type: ignore[attr-defined]
        ["From", spec.sender],  # type: ignore[attr-defined]
        ["To", spec.to],  # type: ignore[attr-defined]
        ["Cc", list(spec.cc)],  # type: ignore[attr-defined]
        ["Reply-To", spec.reply_to],  # type: ignore[attr-defined]
    ]
    delivery.subject = spec.subject  # type: ignore[attr-defined]
    delivery.body_text, delivery.body_html = spec.text, spec.html  # type: ignore[attr-defined]
    for position, attachment in enumerate(spec.attachments):  # type: ignore[attr-defined]
        delivery.attachments.append(
            DeliveryAttachment(
                position=position, sha256=attachment.sha256, filename=attachment.filename
            )
        )


__all__ = ["Blob", "send_batch", "suppression"]
