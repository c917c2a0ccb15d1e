"""A campaign's report: what was done, what happened, who answered; as counts and timelines.

Counts are by send status, by outcome and by response, overall, by role (to, cc) and by
organisation. A recipient's response is the most telling one they gave, in the order of
`PRECEDENCE` ("none" if none; an automatic answer alone is "auto_reply", which is no answer).
Each recipient's timeline merges the delivery's events (status and outcome) and the responses.

Exports are CSV (one row per recipient) and JSON (everything). In CSV every cell that a
spreadsheet would take for a formula (one beginning with =, +, -, @, a tab or a carriage
return) is prefixed with an apostrophe: a recipient named "=HYPERLINK(...)" stays text.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only, selectinload

from outreach.models import Campaign, Delivery, Event, Response, ResponseKind

PRECEDENCE = (
    ResponseKind.ANSWERED,
    ResponseKind.DECLINED,
    ResponseKind.MEETING,
    ResponseKind.ACKNOWLEDGED,
    ResponseKind.REPLY,
    ResponseKind.OTHER,
    ResponseKind.AUTO_REPLY,
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
AXES = ("status", "outcome", "response")
CSV_COLUMNS = (
    "delivery_id", "role", "name", "organisation", "address", "channel", "status", "outcome",
    "response", "responded_at", "sent_at", "timeline",
)  # fmt: skip


@dataclass(frozen=True)
class Step:
    """One line of a recipient's timeline."""

    at: datetime
    what: str  # "status: sent", "outcome: bounced", "response: reply (email)"
    detail: str

    def line(self) -> str:
        detail = f" — {self.detail}" if self.detail else ""
        return f"{self.at:%Y-%m-%d %H:%M} {self.what}{detail}"


@dataclass
class Row:
    """One recipient of the campaign (one delivery)."""

    delivery_id: int
    role: str
    name: str
    organisation: str
    address: str
    channel: str
    status: str
    outcome: str
    response: str
    responded_at: datetime | None
    sent_at: datetime | None
    timeline: list[Step] = field(default_factory=list)


@dataclass
class Report:
    campaign: str
    rows: list[Row]

    def counts(self, axis: str, rows: list[Row] | None = None) -> dict[str, int]:
        """How many recipients have each value of `axis` (status, outcome or response)."""
        found = Counter(getattr(r, axis) or "—" for r in (self.rows if rows is None else rows))
        return dict(sorted(found.items()))

    def grouped(self, by: str) -> dict[str, dict[str, dict[str, int]]]:
        """The counts of every axis for each value of `by` (role or organisation)."""
        groups: dict[str, list[Row]] = {}
        for row in self.rows:
            groups.setdefault(getattr(row, by) or "—", []).append(row)
        return {g: {a: self.counts(a, rows) for a in AXES} for g, rows in sorted(groups.items())}


def build_report(session: Session, campaign: Campaign) -> Report:
    """Read the campaign's deliveries, their events and responses into a Report: the
    deliveries without the message each keeps (4 KB and more a row), the events as plain rows
    in one query (three a delivery, more with bounces and retries: as ORM objects, loaded by
    IN lists of 500, they were most of the time of a report over 100k)."""
    deliveries = session.scalars(
        select(Delivery)
        .where(Delivery.campaign_id == campaign.id)
        .options(load_only(*_REPORTED), selectinload(Delivery.recipient))
        .order_by(Delivery.role.desc(), Delivery.id)
    ).all()
    events: dict[int, list[Step]] = {}
    for delivery_id, at, kind, to_status, detail in session.execute(
        select(Event.delivery_id, Event.created_at, Event.kind, Event.to_status, Event.detail)
        .join(Delivery, Delivery.id == Event.delivery_id)
        .where(Delivery.campaign_id == campaign.id)
        .order_by(Event.delivery_id, Event.id)
    ):
        what = f"{kind}: {to_status}" if to_status else kind
        events.setdefault(delivery_id, []).append(Step(at, what, detail))
    responses: dict[int, list[Response]] = {}
    for response in session.scalars(
        select(Response)  # joined, not an IN list: 100k ids pass PostgreSQL's 65,535 parameters
        .join(Delivery, Delivery.id == Response.delivery_id)
        .where(Delivery.campaign_id == campaign.id)
        .order_by(Response.received_at, Response.id)
    ):
        responses.setdefault(response.delivery_id, []).append(response)
    return Report(
        campaign.name,
        [_row(d, events.get(d.id, []), responses.get(d.id, [])) for d in deliveries],
    )


_REPORTED = (  # what a report reads of a delivery
    Delivery.id, Delivery.role, Delivery.address, Delivery.channel, Delivery.status,
    Delivery.outcome, Delivery.sent_at, Delivery.recipient_id,
)  # fmt: skip


def best_response(responses: list[Response]) -> Response | None:
    """The most telling response, the earliest of its kind."""
    ranked = [r for r in responses if r.kind in PRECEDENCE]
    return min(
        ranked, key=lambda r: (PRECEDENCE.index(ResponseKind(r.kind)), r.received_at), default=None
    )


def _row(delivery: Delivery, events: list[Step], responses: list[Response]) -> Row:
    person = delivery.recipient
    best = best_response(responses)
    steps = events + [
        Step(r.received_at, f"response: {r.kind} ({r.channel})", r.excerpt or r.note)
        for r in responses
    ]
    return Row(
        delivery_id=delivery.id,
        role=delivery.role,
        name=person.full_name or person.department or person.organisation,
        organisation=person.organisation,
        address=delivery.address,
        channel=delivery.channel,
        status=delivery.status,
        outcome=delivery.outcome,
        response=best.kind if best is not None else "none",
        responded_at=best.received_at if best is not None else None,
        sent_at=delivery.sent_at,
        timeline=sorted(steps, key=lambda s: s.at),
    )


def neutralise(value: object) -> str:
    """A CSV cell a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else value.isoformat() if isinstance(value, datetime) else str(value)
    return f"'{text}" if text.startswith(FORMULA_START) else text


def to_csv(report: Report) -> str:
    """One row per recipient; the timeline in one cell, a line per step."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in report.rows:  # not `asdict`, which copies each timeline deeply first
        timeline = "\n".join(step.line() for step in row.timeline)
        values = [timeline if c == "timeline" else getattr(row, c) for c in CSV_COLUMNS]
        writer.writerow([neutralise(value) for value in values])
    return buffer.getvalue()


def to_json(report: Report) -> str:
    """Everything: counts overall, by role and by organisation, and each recipient's timeline."""
    document: dict[str, Any] = {
        "campaign": report.campaign,
        "counts": {
            "overall": {axis: report.counts(axis) for axis in AXES},
            "by_role": report.grouped("role"),
            "by_organisation": report.grouped("organisation"),
        },
        "recipients": [asdict(row) for row in report.rows],
    }
    return json.dumps(document, default=_json_value, ensure_ascii=False, indent=2)


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
