"""The tasks: each one call into outreach. Messages carry delivery ids, never objects or secrets."""

from __future__ import annotations

from collections.abc import Iterable

from outreach import sending
from outreach.config import get_settings
from outreach.db import session_factory, session_scope
from outreach.models import utcnow
from outreach.smtp import SmtpClient
from workers.app import app

_kits = sending.KitCache()


@app.task(name="outreach.send_batch")
def send_batch(delivery_ids: list[int]) -> dict[str, int]:
    """Send a keyed batch of deliveries over one SMTP connection."""
    settings = get_settings()
    sessions = session_factory(settings.effective_database_url)
    with SmtpClient.from_settings(settings) as transport:
        counts = sending.send_batch(
            sessions, delivery_ids, transport=transport, settings=settings, kits=_kits
        )
    return dict(counts)


@app.task(name="outreach.sweep")
def sweep() -> int:
    """Queue the deferred deliveries whose next attempt is due (retry times live in the rows)."""
    settings = get_settings()
    with session_scope(settings.effective_database_url) as session:
        batches = sending.due_for_retry(session, utcnow(), settings.batch_size)
    enqueue(batches)  # after the commit: a worker must find them `queued`
    return sum(len(b) for b in batches)


def enqueue(batches: Iterable[list[int]]) -> None:
    for batch in batches:
        send_batch.delay(batch)
