"""The do-not-contact list: addresses no campaign writes to, checked as each message is sent."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from outreach.errors import InputError, NotFound
from outreach.models import Suppression


def key(email: str) -> str:
    """An address as the list holds it: the same address in any case is one address."""
    return email.strip().lower()


def add(session: Session, email: str, reason: str) -> bool:
    """Put an address on the list; False if it was there already (the first reason stays)."""
    if "@" not in email or any(c in email for c in "\r\n"):
        raise InputError(f"{email!r} is not an email address")
    if session.scalar(select(Suppression.id).where(Suppression.key == key(email))) is not None:
        return False
    session.add(Suppression(key=key(email), email=email.strip(), reason=reason))
    session.flush()
    return True


def remove(session: Session, email: str) -> None:
    result = session.execute(delete(Suppression).where(Suppression.key == key(email)))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"{email} is not on the suppression list")


def reason_for(session: Session, email: str) -> str | None:
    """Why this address must not be written to, or None if it may."""
    return session.scalar(select(Suppression.reason).where(Suppression.key == key(email)))


def listed(session: Session) -> list[Suppression]:
    return list(session.scalars(select(Suppression).order_by(Suppression.created_at)))
