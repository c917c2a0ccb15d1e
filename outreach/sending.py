"""The send loop for one batch of deliveries, over one SMTP connection.

The connection is opened first, while nothing is claimed: a server that is down, answers 421 or
fails TLS pauses the campaign (the circuit breaker) instead of burning attempts; so does one
that cannot be had again in the middle of a batch, for the rest of it (the one message claimed
for it is deferred). Then, for each delivery: take a token from the shared rate limit,
prepare its message while it is still `queued` (or reuse what was kept on an earlier attempt),
claim it (`queued -> sending`, only while its campaign runs and its address is not suppressed,
committed together with the kept message), send it, and commit the result before the next
message's content. So at most one message per connection is ever in the uncertain window,
and a worker that dies there leaves a `sending` row that recovery turns into `unknown` instead
of sending it twice.

A message's outcome (a `deliveries.Verdict`) is decided when the server answers but written with
the next claim, after the next message is prepared: the write transaction then spans a few
statements, not a render, which matters on SQLite, where it holds the one write lock the other
workers wait on; on PostgreSQL the verdict, the claim and their Events are one statement.

The server's answer to a message is read only once the next message's commands have gone out
behind it (RFC 2920 pipelining, where the server offers it): the answer and the replies to MAIL,
RCPT and DATA come back in one round trip, where they took two. The next message is claimed
after that answer, so its claim still carries the last verdict, and its content goes out only
once the claim is committed; a claim that misses drops the connection (the server then waits
for content no one will send, and closing is the one way to end that with no message). With
nothing owed (a batch's first message, or after a miss) the claim comes first, as before.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from outreach import campaigns, db, deliveries, suppression, tracking
from outreach.compose import compose_pieces, envelope_recipients
from outreach.config import Settings
from outreach.deliveries import Verdict
from outreach.dispatch import account_limits
from outreach.errors import (
    ConfigError,
    Conflict,
    OutreachError,
    PermanentSmtpError,
    SmtpError,
    TransientSmtpError,
    UncertainSmtpError,
    Unreachable,
)
from outreach.messages import (
    Kit,
    ahead_letter,
    draft,
    kept_columns,
    kept_spec,
    load_kit,
    store_attachments,
)
from outreach.models import Campaign, CampaignState, Channel, Delivery, Event, Status, utcnow
from outreach.smtp import Refused, Transport, classify
from outreach.throttle import Limits, Throttle, acquire

log = logging.getLogger("outreach.sending")

KIT_TTL = 60.0  # seconds a worker trusts its prepared campaign before reading it again


class KitCache:
    """Per worker process: one prepared Kit per campaign, refreshed after KIT_TTL."""

    def __init__(self) -> None:
        self._kits: dict[int, tuple[float, Kit]] = {}

    def get(self, session: Session, campaign_id: int) -> Kit:
        now = time.monotonic()
        cached = self._kits.get(campaign_id)
        if cached is None or now - cached[0] > KIT_TTL:
            # Loaded in a session of its own, closed at once (which detaches without expiring):
            # the kit outlives the caller's session, whose rollback (a claim lost to another
            # worker) would otherwise expire the campaign the kit holds for every later batch.
            with Session(session.get_bind().engine) as own:
                campaign = own.get(Campaign, campaign_id)
                if campaign is None:
                    raise OutreachError(f"campaign {campaign_id} no longer exists")
                cached = (now, load_kit(own, campaign))
            self._kits[campaign_id] = cached
        return cached[1]


@dataclass(frozen=True)
class Sender:
    """What a batch needs besides the deliveries: the connection, the settings, the caches."""

    transport: Transport
    settings: Settings
    kits: KitCache
    throttle: Throttle


@dataclass(frozen=True)
class _Owed:
    """A message whose content went out and whose answer the server still owes."""

    delivery: Delivery
    attempt: int
    refused: Refused


@dataclass(frozen=True)
class _Cut:
    """A message that could not go because the server could no longer be reached: its
    verdict, and why, for the circuit breaker to take the rest of the batch."""

    verdict: Verdict
    error: OutreachError


Held = Verdict | _Owed | None
"""The last message's outcome, not yet written: its verdict, or the message until it is answered."""


def _settle(session: Session, last: Verdict | None) -> None:
    """Write the last message's verdict, if one is held back."""
    if last is not None:
        deliveries.settle(session, last)


def retry_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, times 0.8 to 1.2."""
    base = settings.retry_base_seconds * 2 ** max(attempts - 1, 0)
    seconds = min(base, settings.retry_max_seconds)
    return timedelta(seconds=seconds * (rng or random).uniform(0.8, 1.2))


def send_batch(
    sessions: sessionmaker[Session], delivery_ids: Sequence[int], sender: Sender
) -> Counter[str]:
    """Send the given deliveries; returns how many ended in each status. Deliveries that are no
    longer `queued` (sent by another worker, cancelled) are skipped untouched.

    One session for the batch, loaded in one query. Each message's outcome is written and
    committed with the next message's claim (one commit per message, both on disk before the
    next message's content), and at once when the rate limit may make the worker wait: no write
    waits on a token. Every write is in a `db.write_turn`, which ends with its commit."""
    outcome: Counter[str] = Counter()
    try:
        sender.transport.open()
    except (SmtpError, ConfigError) as exc:
        return trip(sessions, delivery_ids, exc, sender.settings)
    with db.turn_session(sessions) as session:
        batch = _load(session, delivery_ids)
        held: Held = None
        limits_of: dict[int, Limits] = {}  # per campaign, as loaded with the batch
        for position, delivery in enumerate(batch):
            if delivery.status != Status.QUEUED:
                outcome["skipped"] += 1
                continue
            limits = limits_of.get(delivery.campaign_id)
            if limits is None:
                limits = account_limits(sender.settings).tighter(delivery.campaign.rate)
                limits_of[delivery.campaign_id] = limits
            if not limits.unlimited:
                last = _decided(session, held, sender, outcome)
                with db.write_turn(session):
                    _settle(session, last)
                held = None
                if not _take_token(limits, sender):
                    rest = [d.id for d in batch[position:]]
                    with db.write_turn(session):
                        _give_back(session, rest, "rate limit reached")
                    outcome["waiting"] += len(rest)
                    break
            result = _send_one(session, delivery, sender, held, outcome)
            if isinstance(result, _Cut):  # as when no connection could be had at the start
                rest = [d.id for d in batch[position + 1 :]]
                with db.write_turn(session):
                    _settle(session, result.verdict)
                    _trip(session, [delivery.id, *rest], result.error, sender.settings)
                outcome[result.verdict.target] += 1
                outcome["paused"] += len(rest)
                held = None
                break
            held = result
        last = _decided(session, held, sender, outcome)
        with db.write_turn(session):
            _settle(session, last)
    return outcome


def _load(session: Session, delivery_ids: Sequence[int]) -> list[Delivery]:
    """The batch's deliveries with what every message needs, in the order given, in two
    queries (the recipients joined: 15 % less than loading them by a query of their own). What
    few need is loaded when asked for: the kept attachments (a retry) and the letter rendered
    ahead (a PDF letter; none is asked of the database when there is none)."""
    rows = session.scalars(
        select(Delivery)
        .where(Delivery.id.in_(delivery_ids))
        .options(joinedload(Delivery.recipient, innerjoin=True), selectinload(Delivery.campaign))
    )
    by_id = {d.id: d for d in rows}
    return [by_id[i] for i in delivery_ids if i in by_id]


def _take_token(limits: Limits, sender: Sender) -> bool:
    return acquire(
        sender.throttle,
        sender.settings.smtp_account,
        limits,
        max_wait=sender.settings.queued_timeout / 2,
    )


def trip(
    sessions: sessionmaker[Session],
    delivery_ids: Sequence[int],
    exc: OutreachError,
    settings: Settings,
) -> Counter[str]:
    """The circuit breaker, for a batch that can have no connection (the server is down or
    refuses us, or the settings allow none): nothing of it was claimed. Without it the batch's
    deliveries would wait in `queued` for the dispatcher to requeue them into the same error,
    for ever."""
    with sessions.begin() as session:
        _trip(session, delivery_ids, exc, settings)
    return Counter(paused=len(delivery_ids))


def _trip(
    session: Session, delivery_ids: Sequence[int], exc: OutreachError, settings: Settings
) -> None:
    """Pause the batch's campaigns rather than retry message by message. A transient refusal
    resumes by itself after the cool-off; a permanent one (554 at the greeting) and a
    configuration error (certificate, login) wait for the team."""
    resume_at = None
    if isinstance(exc, TransientSmtpError):
        resume_at = utcnow() + timedelta(seconds=settings.breaker_cooloff)
    campaign_ids = set(
        session.scalars(select(Delivery.campaign_id).where(Delivery.id.in_(delivery_ids)))
    )
    for campaign in session.scalars(select(Campaign).where(Campaign.id.in_(campaign_ids))):
        if campaign.state == CampaignState.RUNNING:
            try:
                campaigns.pause(session, campaign, f"SMTP: {exc}", resume_at=resume_at)
            except Conflict:  # the team (or another breaker) moved it meanwhile: theirs stands
                continue
    _give_back(session, delivery_ids, f"not sent: {exc}")
    log.warning("circuit breaker: %s; campaigns %s paused", exc, sorted(campaign_ids))


def _give_back(session: Session, delivery_ids: Sequence[int], reason: str) -> None:
    """Deliveries this batch will not send go back to `pending` for the dispatcher."""
    deliveries.transition_many(
        session, list(delivery_ids), Status.QUEUED, Status.PENDING, detail=reason
    )


def _send_one(
    session: Session, delivery: Delivery, sender: Sender, held: Held, outcome: Counter[str]
) -> Held | _Cut:
    """One message: prepare it; claim it with what `held` came to, and commit; hand it to the
    server. Returns what is held for the next claim to write, or the batch cut short."""
    delivery_id = delivery.id
    spec = kept_spec(delivery)
    fresh = spec is None
    try:
        if spec is None:
            kit = sender.kits.get(session, delivery.campaign_id)
            spec = draft(
                kit,
                delivery.recipient,
                delivery.message_id,
                utcnow(),
                channel=Channel(delivery.channel),
                address=delivery.address,
                ahead=ahead_letter(delivery),
            )
        data = compose_pieces(spec)
        rcpts = envelope_recipients(spec, delivery.campaign.bcc)
    except OutreachError as exc:  # nothing of this delivery is written yet
        last = _decided(session, held, sender, outcome)
        with db.write_turn(session):
            _settle(session, last)
            status = _refuse(session, delivery)
            if status is None:
                deliveries.mark_failed(session, delivery_id, str(exc), source=Status.QUEUED)
        outcome[status or Status.FAILED] += 1
        return None
    # This attempt's number, read before the claim: the claim also increments
    # `delivery.attempts`, so reading it afterwards would count one too many.
    attempt = delivery.attempts + 1
    kept = kept_columns(spec) if fresh else None
    transport, settings = sender.transport, sender.settings
    message = {
        "sender": tracking.return_path(delivery, settings),
        "recipients": rcpts,
        "data": data,
        "smtputf8": settings.smtp_utf8,
    }
    ahead = isinstance(held, _Owed)  # this message's commands go out before that answer
    if ahead:
        transport.begin(**message)
    last = _decided(session, held, sender, outcome)
    with db.write_turn(session):  # its commit opens the uncertain window, before the content
        claimed = deliveries.claim(
            session,
            delivery_id,
            address=delivery.address,
            kept=kept,
            attachments=store_attachments(session, spec.attachments) if fresh else (),
            after=last,
        )
        refused = None if claimed else _refuse(session, delivery)
    if not claimed:  # nothing of ours to undo
        if ahead:
            transport.abort()
        outcome[refused or "skipped"] += 1
        return None
    if not ahead:
        transport.begin(**message)
    try:
        refused_rcpts = transport.ready()
        transport.transmit()
    except Unreachable as exc:  # nothing was sent, and the server is not the recipient's
        verdict = _defer(session, delivery_id, attempt, f"not sent: {exc}", settings)
        return _Cut(verdict, exc.error)
    except (SmtpError, ConfigError) as exc:  # nothing was sent
        return _failure(session, delivery_id, attempt, exc, settings)
    return _Owed(delivery, attempt, refused_rcpts)


def _refuse(session: Session, delivery: Delivery) -> Status | None:
    """Take a delivery the claim refused out of the queue, if the campaign or the suppression
    list is why (not another worker having it); the status it went to, or None."""
    refusal = _refusal(session, delivery)
    if refusal is None:
        return None
    target, reason = refusal
    moved = deliveries.transition(session, delivery.id, Status.QUEUED, target, detail=reason)
    return target if moved else None


def _refusal(session: Session, delivery: Delivery) -> tuple[Status, str] | None:
    """Why this delivery must not go now: the campaign was paused or cancelled, or the address
    is on the do-not-contact list. Asked only when the claim, which checks both, missed."""
    state = session.scalar(select(Campaign.state).where(Campaign.id == delivery.campaign_id))
    if state == CampaignState.CANCELLED:
        return Status.CANCELLED, "campaign cancelled"
    if state != CampaignState.RUNNING:
        return Status.PENDING, f"campaign {state}"
    reason = suppression.reason_for(session, delivery.address)
    if reason is not None:
        return Status.SUPPRESSED, f"on the suppression list: {reason}"
    return None


def _decided(
    session: Session, held: Held, sender: Sender, outcome: Counter[str]
) -> Verdict | None:
    """The verdict `held` comes to, reading the server's answer if it is still owed; each
    verdict is counted in `outcome` here, once."""
    if isinstance(held, _Owed):
        error = None
        try:
            sender.transport.answer()
        except (SmtpError, ConfigError) as exc:
            error = exc
        held = _answered(session, held, error, sender.settings)
    if held is not None:
        outcome[held.target] += 1
    return held


def _answered(
    session: Session, owed: _Owed, error: OutreachError | None, settings: Settings
) -> Verdict:
    """What a message comes to by its answer (`error`: refused, or no answer at all). The
    delivery's own address refused at RCPT, while other recipients of the message (the archive
    Bcc) were accepted, decides it whatever the answer: that address got nothing, even when the
    answer was lost (not `unknown`, which `deliveries reconcile` could find sent in the
    archive's copy)."""
    delivery_id, address = owed.delivery.id, owed.delivery.address
    mine = next((r for a, r in owed.refused.items() if a.lower() == address.lower()), None)
    if mine is not None:
        code, text = mine
        reason = f"{code} {text} (refused {address}; {deliveries.ARCHIVE_ONLY})"
        return _failure(session, delivery_id, owed.attempt, classify(code)(reason), settings)
    if error is not None:
        return _failure(session, delivery_id, owed.attempt, error, settings)
    others = ", ".join(f"{a}: {c} {t}" for a, (c, t) in owed.refused.items())
    reply = f"accepted; also refused {others}" if others else "accepted"
    return deliveries.sent(delivery_id, reply, at=utcnow(), attempt=owed.attempt)


def _failure(
    session: Session, delivery_id: int, attempts: int, exc: OutreachError, settings: Settings
) -> Verdict:
    """What a message the server did not take comes to: failed if it never will, unknown if it
    may have taken it after all (never retried without an operator: no second letter), else
    deferred (a transient refusal, a lost connection, a setting to fix)."""
    if isinstance(exc, PermanentSmtpError):
        return deliveries.failed(delivery_id, str(exc), attempt=attempts)
    if isinstance(exc, UncertainSmtpError):
        return deliveries.unknown(delivery_id, str(exc), attempt=attempts)
    return _defer(session, delivery_id, attempts, str(exc), settings)


def _defer(
    session: Session, delivery_id: int, attempts: int, reason: str, settings: Settings
) -> Verdict:
    """A transient failure: try again later, unless out of attempts or too old (as an MTA)."""
    first = session.scalar(
        select(func.min(Event.created_at)).where(
            Event.delivery_id == delivery_id, Event.to_status == Status.SENDING
        )
    )
    age = utcnow() - first if first else timedelta(0)
    if attempts >= settings.max_attempts or age > timedelta(hours=settings.max_age_hours):
        why = f"{attempts} attempts over {age.total_seconds() / 3600:.1f} h"
        return deliveries.failed(delivery_id, f"{reason}; gave up after {why}", attempt=attempts)
    retry_at = utcnow() + retry_delay(attempts, settings)
    return deliveries.deferred(delivery_id, reason, retry_at, attempt=attempts)
