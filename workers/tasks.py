"""The tasks: each one call into outreach. Messages carry delivery ids, never objects or secrets."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from outreach import dispatch, inbox, prepare, sending
from outreach.config import Settings, get_settings
from outreach.db import session_factory, session_scope
from outreach.errors import ConfigError
from outreach.models import utcnow
from outreach.smtp import SmtpClient
from outreach.throttle import LocalThrottle, RedisThrottle, Throttle
from workers.app import app

_kits = sending.KitCache()


@lru_cache(maxsize=4)
def _throttle(redis_url: str) -> Throttle:
    """Shared through Redis when there is one; in memory for the embedded single worker."""
    return RedisThrottle(redis_url) if redis_url else LocalThrottle()


def throttle_for(settings: Settings) -> Throttle:
    return _throttle(settings.effective_redis_url)


@app.task(name="outreach.send_batch")
def send_batch(delivery_ids: list[int]) -> dict[str, int]:
    """Send a keyed batch of deliveries over one SMTP connection."""
    settings = get_settings()
    sessions = session_factory(settings.effective_database_url)
    try:
        client = SmtpClient.from_settings(settings)
    except ConfigError as exc:  # no client to open (a password without TLS): as no connection
        return dict(sending.trip(sessions, delivery_ids, exc, settings))
    with client as transport:
        sender = sending.Sender(transport, settings, _kits, throttle_for(settings))
        return dict(sending.send_batch(sessions, delivery_ids, sender))


@app.task(name="outreach.prepare_letters")
def prepare_letters(delivery_ids: list[int]) -> dict[str, int]:
    """Render and keep the PDF letters of pending deliveries, ahead of their send."""
    sessions = session_factory(get_settings().effective_database_url)
    return dict(prepare.prepare_letters(sessions, delivery_ids, _kits))


@app.task(name="outreach.dispatch")
def dispatch_tick() -> dict[str, int]:
    """Move every campaign one step; queue what it released, after the commit."""
    settings = get_settings()
    with session_scope(settings.effective_database_url) as session:
        tick = dispatch.tick(session, settings, utcnow())
    for letters in tick.letters:
        prepare_letters.delay(letters)
    enqueue(tick.batches)  # after the commit: a worker must find them `queued`
    return {
        "queued": sum(len(b) for b in tick.batches),
        "letters": sum(len(b) for b in tick.letters),
        "unknown": tick.unknown,
    }


@app.task(name="outreach.poll_inbox")
def poll_inbox() -> dict[str, int]:
    """Read bounces and replies from the team's mailbox; without one, still presume the letters
    that drew no bounce delivered."""
    settings = get_settings()
    if not settings.imap_host:
        sessions = session_factory(settings.effective_database_url)
        return {"presumed_delivered": inbox.presume(sessions, settings)}
    report = inbox.poll_once(settings)
    return {"read": report.read, "duplicates": report.duplicates, **report.kinds}


def enqueue(batches: Iterable[list[int]]) -> None:
    for batch in batches:
        send_batch.delay(batch)
