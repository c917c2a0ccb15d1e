"""The delivery state machine: the one place that changes a delivery's send status.

Every change is a compare-and-swap (`UPDATE ... WHERE id = :id AND status = :expected`) that
writes an Event in the same transaction (on PostgreSQL, in the same statement). Two workers
racing for one delivery: one update matches a row, the other matches none and does nothing. A
transition the table below does not allow raises TransitionError before touching the database.

    pending ──> queued ──> sending ──> sent
       │          │  ▲        │ ├────> deferred ──> queued (retry due)
       │          │  └────────┘ ├────> failed
       └──────────┴─> cancelled └────> unknown ──> queued (operator resends) / sent / failed
       │              suppressed
       ├──> failed                      (its PDF letter cannot be rendered)
       └──> printed ──> posted          (letters by post: a print pack, then the team posts it)

`sending` is the uncertain window: committed before the message's content goes out, left for
`sent` (or another outcome) before the next content on the same connection. Where it goes is a
`Verdict`, decided at the server's answer and written with the next claim (`claim(after=)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    CTE,
    ColumnElement,
    FromClause,
    Insert,
    Integer,
    Select,
    String,
    Update,
    bindparam,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from outreach import db, suppression
from outreach.errors import InputError, TransitionError
from outreach.models import (
    Campaign,
    CampaignState,
    Delivery,
    DeliveryAttachment,
    Event,
    Status,
    Suppression,
    utcnow,
)

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {
            Status.QUEUED,
            Status.CANCELLED,
            Status.SUPPRESSED,
            Status.PRINTED,
            Status.FAILED,  # its PDF letter cannot be rendered (prepare.py)
        }
    ),
    Status.QUEUED: frozenset(
        {
            Status.SENDING,
            Status.QUEUED,  # requeued: the broker lost it
            Status.PENDING,  # taken back: the campaign paused, or the server refused us
            Status.CANCELLED,
            Status.SUPPRESSED,
            Status.FAILED,
        }
    ),
    Status.SENDING: frozenset({Status.SENT, Status.DEFERRED, Status.FAILED, Status.UNKNOWN}),
    Status.DEFERRED: frozenset({Status.QUEUED, Status.CANCELLED, Status.FAILED}),
    Status.UNKNOWN: frozenset({Status.QUEUED, Status.SENT, Status.FAILED}),
    Status.PRINTED: frozenset({Status.POSTED, Status.PRINTED, Status.CANCELLED}),
    Status.POSTED: frozenset(),
    Status.SENT: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.SUPPRESSED: frozenset(),
}

FINAL = frozenset(s for s, nexts in ALLOWED.items() if not nexts)


def check_allowed(source: Status, target: Status) -> None:
    """Raise unless the table allows `source -> target`."""
    if target not in ALLOWED[source]:
        raise TransitionError(f"a delivery cannot go from {source} to {target}")


def transition(
    session: Session,
    delivery_id: int,
    source: Status,
    target: Status,
    *,
    detail: str = "",
    **values: Any,
) -> bool:
    """Move one delivery from `source` to `target` if it is still in `source`.

    Returns False (and writes nothing) when another worker got there first. `values` are
    further columns to set in the same update (last_error, next_attempt_at, ...).
    """
    check_allowed(source, target)
    return _move(session, _MOVE, delivery_id, source, target, detail, values)


_ROWS = Delivery.__table__
_LOCKABLE = _ROWS.alias("lockable")  # a subquery of its own, not correlated to the UPDATE
_CAMPAIGNS, _SUPPRESSIONS = Campaign.__table__, Suppression.__table__
_ATTACHMENTS = DeliveryAttachment.__table__


def _checked(rows: FromClause, name: str) -> ColumnElement[bool]:
    """`status = :name`, as a check of the rows a statement found by id, never a way to find
    them: written as an expression no index serves. With stale statistics (a campaign's
    deliveries just created, before any ANALYZE) PostgreSQL planned a chunk of 500 ids on
    ix_deliveries_status_next instead of the primary key, and read every pending delivery for
    each chunk: a tick that queued 2,000 took 226 ms at 100k recipients and 51 at 10k (60 and
    56 since)."""
    return rows.c.status.op("||")(literal_column("''")) == bindparam(name)


def _compare_and_swap(prefix: str = "", *, attempt: bool = False) -> Update:
    """`UPDATE deliveries ... WHERE id = :id_ AND status = :source RETURNING campaign_id, id`,
    its parameters named with `prefix` (two in one statement need names of their own). With
    `attempt`, also `AND attempts = :attempt`: a verdict is its attempt's only."""
    statement = update(_ROWS).where(
        _ROWS.c.id == bindparam(f"{prefix}id_"), _checked(_ROWS, f"{prefix}source")
    )
    if attempt:
        statement = statement.where(_ROWS.c.attempts == bindparam(f"{prefix}attempt"))
    return statement.returning(_ROWS.c.campaign_id, _ROWS.c.id)


# The statements are built once, on the tables: the SET clause comes from the parameters of
# each call, so one statement and its cached compiled form serve every transition. (Built per
# call on the ORM entity, they cost more CPU than the database took to run them.)
_MOVE = _compare_and_swap()
_MOVE_ATTEMPT = _compare_and_swap(attempt=True)  # a verdict of the send loop
_SETTLE = _compare_and_swap("v_")  # a verdict written in the claim's statement (PostgreSQL)
_SETTLE_ATTEMPT = _compare_and_swap("v_", attempt=True)
_MOVE_MANY = (
    update(_ROWS)
    .where(_ROWS.c.id.in_(bindparam("ids", expanding=True)), _checked(_ROWS, "source"))
    .returning(_ROWS.c.campaign_id, _ROWS.c.id)
)
_UNLOCKED = (  # the row's id unless another transaction holds it (PostgreSQL; SQLite ignores)
    select(_LOCKABLE.c.id)
    .where(_LOCKABLE.c.id == bindparam("id_"), _checked(_LOCKABLE, "source"))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM = (
    update(_ROWS)
    .where(_ROWS.c.id == _UNLOCKED, _checked(_ROWS, "source"))
    .values(attempts=_ROWS.c.attempts + 1)
    .returning(_ROWS.c.campaign_id, _ROWS.c.id)
)
_CLAIM_TO_SEND = _CLAIM.where(  # ... only while the campaign runs and the address is not listed
    exists().where(
        _CAMPAIGNS.c.id == _ROWS.c.campaign_id, _CAMPAIGNS.c.state == CampaignState.RUNNING
    ),
    ~exists().where(_SUPPRESSIONS.c.key == bindparam("suppression_key")),
)
_EVENTS = Event.__table__
_EVENT = insert(_EVENTS)
_EVENT_COLUMNS = [  # in the order `_event` and `_moved` give them
    "campaign_id", "delivery_id", "kind", "from_status", "to_status", "detail", "created_at"
]  # fmt: skip
_KEEP_ATTACHMENTS = insert(_ATTACHMENTS)


def _moved(statement: Update, columns: tuple[str, ...], prefix: str = "") -> tuple[CTE, Select]:
    """PostgreSQL: a compare-and-swap as a CTE (`WITH moved AS (UPDATE ... RETURNING ...)`),
    and the SELECT of the Event `_event` describes for the row it moved, from the same
    parameters. A nested UPDATE takes no SET from the parameters, so it is spelled out: one
    statement per set of columns written. With two UPDATEs of one table in a statement, each
    needs a `prefix`: SQLAlchemy adds a parameter named as a column to the SET of every UPDATE
    of its table."""
    values = {c: bindparam(f"{prefix}{c}", type_=_ROWS.c[c].type) for c in columns}
    moved = statement.values(values).cte(f"{prefix}moved")
    status = _EVENTS.c.to_status.type
    event = select(
        moved.c.campaign_id,
        moved.c.id,
        literal("status", _EVENTS.c.kind.type),
        bindparam(f"{prefix}source", type_=status),
        bindparam(f"{prefix}status", type_=status),
        bindparam(f"{prefix}detail", type_=_EVENTS.c.detail.type),
        bindparam(f"{prefix}updated_at", type_=_EVENTS.c.created_at.type),
    )
    return moved, event


@lru_cache(maxsize=64)
def _with_event(statement: Update, columns: tuple[str, ...]) -> Insert:
    """PostgreSQL: the compare-and-swap and its Event in one statement, one round trip instead
    of two (`WITH moved AS (UPDATE ...) INSERT INTO events SELECT ... FROM moved`)."""
    _, event = _moved(statement, columns)
    return insert(_EVENTS).from_select(_EVENT_COLUMNS, event).returning(_EVENTS.c.delivery_id)


@lru_cache(maxsize=64)
def _claim_with_all(
    statement: Update,
    columns: tuple[str, ...],
    verdict: tuple[str, ...] | None,
    settle: Update = _SETTLE,
) -> Insert:
    """PostgreSQL: a claim, the message's kept attachment rows, the verdict held back (if any)
    and both Events in one statement, whole on its own: with the send loop's connection in
    autocommit, one round trip a message instead of five (BEGIN, verdict, claim, attachment
    rows, COMMIT). Returns the ids of the deliveries that moved."""
    claimed, events = _moved(statement, columns, "c_")
    attachments = insert(_ATTACHMENTS).from_select(
        ["delivery_id", "position", "sha256", "filename"],
        select(
            claimed.c.id,
            func.unnest(bindparam("a_position", type_=ARRAY(Integer))),
            func.unnest(bindparam("a_sha256", type_=ARRAY(String))),
            func.unnest(bindparam("a_filename", type_=ARRAY(String))),
        ),
    )
    if verdict is not None:
        _, settled = _moved(settle, verdict, "v_")
        events = union_all(settled, events)
    return (
        insert(_EVENTS)
        .from_select(_EVENT_COLUMNS, events)
        .returning(_EVENTS.c.delivery_id)
        .add_cte(attachments.cte("kept"))
    )


def _move(
    session: Session,
    statement: Update,
    delivery_id: int,
    source: Status,
    target: Status,
    detail: str,
    values: dict[str, Any],
    **where: Any,
) -> bool:
    """Run a compare-and-swap statement and, if it moved the row, write its Event. On the
    driver's cursor (`db.run_on_driver`), as the send loop's `_swapped` and `_claim_in_one`."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":  # SQLite has no UPDATE inside WITH
        events = _swapped(session, statement, delivery_id, source, target, detail, values, where)
        if events:
            db.run_on_driver(connection, _EVENT, events)
        return bool(events)
    columns = _columns(target, values, utcnow())
    params = {"id_": delivery_id, "source": source, "detail": detail, **where, **columns}
    both = _with_event(statement, tuple(sorted(columns)))
    if not db.run_on_driver(connection, both, [params]):
        return False
    expire_loaded(session, delivery_id, [*columns, "attempts"])  # attempts: a claim counts one
    return True


def _swapped(
    session: Session,
    statement: Update,
    delivery_id: int,
    source: Status,
    target: Status,
    detail: str,
    values: Mapping[str, Any],
    where: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """SQLite: run a compare-and-swap statement; the Event to write for it, [] if it missed
    (the caller writes the Events of a turn in one INSERT)."""
    now = utcnow()
    columns = _columns(target, values, now)
    params = {"id_": delivery_id, "source": source, **where, **columns}
    moved = db.run_on_driver(session.connection(), statement, [params])
    if not moved:
        return []
    expire_loaded(session, delivery_id, [*columns, "attempts"])  # attempts: a claim counts one
    [(campaign_id, _)] = moved  # RETURNING campaign_id, id
    return [_event(campaign_id, delivery_id, source, target, detail, now)]


def _columns(target: Status, values: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """What a transition sets: the new status, when, and the caller's further columns."""
    return {"status": target, "updated_at": now, **values}


def _event(
    campaign_id: int, delivery_id: int, source: Status, target: Status, detail: str, at: datetime
) -> dict[str, Any]:
    """The Event row that records one transition (on PostgreSQL `_moved` selects the same)."""
    row = (campaign_id, delivery_id, "status", source, target, detail, at)
    return dict(zip(_EVENT_COLUMNS, row, strict=True))


def expire_loaded(session: Session, delivery_id: int, attributes: list[str]) -> None:
    """The attributes just written, expired on the session's copy of the delivery if it holds
    one: the writes go through Core (the ORM's unit of work or bulk update, which write the
    values back into the session, cost more than the message's SQL), so a later read loads
    them again."""
    loaded = session.identity_map.get(session.identity_key(Delivery, delivery_id))
    if loaded is not None:
        session.expire(loaded, attributes)


def transition_many(
    session: Session,
    delivery_ids: Sequence[int],
    source: Status,
    target: Status,
    *,
    detail: str = "",
    **values: Any,
) -> list[int]:
    """The bulk form of `transition`: returns the ids that moved (those still in `source`).
    On PostgreSQL each chunk and its Events are one statement (as `_move`)."""
    check_allowed(source, target)
    now = utcnow()
    columns = _columns(target, values, now)
    params = {"source": source, **columns}
    connection = session.connection()
    moved: list[int] = []
    for chunk in _chunks(delivery_ids, 500):
        if connection.dialect.name == "postgresql":
            both = _with_event(_MOVE_MANY, tuple(sorted(columns)))
            result = connection.execute(both, {**params, "ids": list(chunk), "detail": detail})
            moved.extend(result.scalars())
            continue
        rows = connection.execute(_MOVE_MANY, {**params, "ids": list(chunk)}).all()
        if rows:
            events = [_event(r.campaign_id, r.id, source, target, detail, now) for r in rows]
            connection.execute(_EVENT, events)
        moved.extend(r.id for r in rows)
    for delivery_id in moved:
        expire_loaded(session, delivery_id, list(columns))
    return moved


ARCHIVE_ONLY = "other recipients of the message accepted"
"""Said in the history of an attempt whose message the server took for its other recipients
(the archive Bcc) while it refused the delivery's own address: the archive then holds a copy
the official never got (`reconcile` must not read it as sent)."""


@dataclass(frozen=True)
class Verdict:
    """Where a delivery goes once the server has answered, and why: decided at the answer,
    written later (the send loop writes it with the next message's claim)."""

    delivery_id: int
    target: Status
    detail: str
    values: Mapping[str, Any] = field(default_factory=dict)  # further columns to set
    source: Status = Status.SENDING
    # The attempt it is the outcome of (`attempts` as its claim left it): written only while
    # that attempt stands. A worker stalled past `sending_timeout` would otherwise write its
    # verdict over the next attempt's (the delivery found unknown, resent, claimed again):
    # a `deferred` there, and the next attempt's `sent` missing, would send the letter again.
    attempt: int | None = None


def _verdict_swap(verdict: Verdict, prefix: str = "") -> tuple[Update, dict[str, Any]]:
    """A verdict's compare-and-swap and its further parameters: of its attempt only, when it
    knows it. `prefix` "v_": in the claim's statement (PostgreSQL)."""
    plain, checked = (_SETTLE, _SETTLE_ATTEMPT) if prefix else (_MOVE, _MOVE_ATTEMPT)
    if verdict.attempt is None:
        return plain, {}
    return checked, {f"{prefix}attempt": verdict.attempt}


def sent(
    delivery_id: int, reply: str, *, at: datetime | None = None, attempt: int | None = None
) -> Verdict:
    """`at`: when the server accepted it, if the write comes later (the send loop)."""
    values = {"sent_at": at or utcnow(), "last_error": ""}
    return Verdict(delivery_id, Status.SENT, reply, values, attempt=attempt)


def failed(
    delivery_id: int,
    reason: str,
    *,
    source: Status = Status.SENDING,
    attempt: int | None = None,
) -> Verdict:
    return Verdict(delivery_id, Status.FAILED, reason, {"last_error": reason}, source, attempt)


def deferred(
    delivery_id: int, reason: str, retry_at: datetime, *, attempt: int | None = None
) -> Verdict:
    detail = f"{reason} (next attempt {retry_at:%Y-%m-%d %H:%M:%S} UTC)"
    values = {"last_error": reason, "next_attempt_at": retry_at}
    return Verdict(delivery_id, Status.DEFERRED, detail, values, attempt=attempt)


def unknown(delivery_id: int, why: str, *, attempt: int | None = None) -> Verdict:
    return Verdict(delivery_id, Status.UNKNOWN, why, {"last_error": why}, attempt=attempt)


def settle(session: Session, verdict: Verdict) -> bool:
    """Write a verdict: False (and nothing written) if the delivery has moved on meanwhile."""
    check_allowed(verdict.source, verdict.target)
    statement, where = _verdict_swap(verdict)
    return _move(
        session, statement, verdict.delivery_id, verdict.source, verdict.target,
        verdict.detail, dict(verdict.values), **where,
    )  # fmt: skip


def mark_sent(
    session: Session, delivery_id: int, reply: str, *, at: datetime | None = None
) -> bool:
    return settle(session, sent(delivery_id, reply, at=at))


def mark_failed(session: Session, delivery_id: int, reason: str, *, source: Status) -> bool:
    return settle(session, failed(delivery_id, reason, source=source))


def claim(
    session: Session,
    delivery_id: int,
    *,
    address: str | None = None,
    kept: Mapping[str, Any] | None = None,
    attachments: Sequence[tuple[str, str]] = (),
    after: Verdict | None = None,
) -> bool:
    """Take a queued delivery for sending, the attempt counted before the content goes out. Given
    the `address` it goes to (the send loop), only while its campaign runs and the address is
    not on the suppression list, checked in the same statement: no query of its own for that
    per message (`sending._refusal` tells why, when a claim misses). `kept`: the message's
    columns (`messages.kept_columns`), written by the same UPDATE; `attachments`: its
    attachments' (sha256, filename), their bytes already stored (`messages.store_attachments`).
    `after`: a verdict held back, written first (it is written even if the claim misses)."""
    if address is None:
        statement, where = _CLAIM, {}
    else:
        statement, where = _CLAIM_TO_SEND, {"suppression_key": suppression.key(address)}
    values = {"next_attempt_at": None, **(kept or {})}
    if after is not None:
        check_allowed(after.source, after.target)
    if session.connection().dialect.name == "postgresql":
        return _claim_in_one(session, statement, delivery_id, values, where, attachments, after)
    events = []
    if after is not None:
        move, checks = _verdict_swap(after)
        events = _swapped(
            session, move, after.delivery_id, after.source, after.target, after.detail,
            after.values, checks,
        )  # fmt: skip
    claimed = _swapped(
        session, statement, delivery_id, Status.QUEUED, Status.SENDING, "", values, where
    )
    connection = session.connection()  # as _move does
    if events or claimed:
        db.run_on_driver(connection, _EVENT, events + claimed)
    if claimed and attachments:
        rows = [
            {"delivery_id": delivery_id, "position": position, "sha256": sha256, "filename": name}
            for position, (sha256, name) in enumerate(attachments)
        ]
        db.run_on_driver(connection, _KEEP_ATTACHMENTS, rows)
        expire_loaded(session, delivery_id, ["attachments"])
    return bool(claimed)


def _claim_in_one(
    session: Session,
    statement: Update,
    delivery_id: int,
    values: dict[str, Any],
    where: dict[str, Any],
    attachments: Sequence[tuple[str, str]],
    after: Verdict | None,
) -> bool:
    """PostgreSQL: `claim` as one statement (`_claim_with_all`)."""
    now = utcnow()
    columns = _columns(Status.SENDING, values, now)
    params = {"id_": delivery_id, "source": Status.QUEUED, **where}
    params |= {f"c_{name}": value for name, value in columns.items()}
    params |= {"c_source": Status.QUEUED, "c_detail": ""}
    params |= {
        "a_position": list(range(len(attachments))),
        "a_sha256": [sha256 for sha256, _ in attachments],
        "a_filename": [name for _, name in attachments],
    }
    settled: tuple[str, ...] | None = None
    settle = _SETTLE
    if after is not None:
        verdict = _columns(after.target, after.values, now)
        settled = tuple(sorted(verdict))
        params |= {f"v_{name}": value for name, value in verdict.items()}
        params |= {"v_id_": after.delivery_id, "v_source": after.source, "v_detail": after.detail}
        settle, checks = _verdict_swap(after, "v_")
        params |= checks
    both = _claim_with_all(statement, tuple(sorted(columns)), settled, settle)
    moved = {row[0] for row in db.run_on_driver(session.connection(), both, [params])}
    if after is not None and after.delivery_id in moved:
        expire_loaded(session, after.delivery_id, list(settled or ()))
    if delivery_id not in moved:
        return False
    expire_loaded(session, delivery_id, [*columns, "attempts", "attachments"])
    return True


def unknown_ids(session: Session, ids: Sequence[int], *, everything: bool) -> list[int]:
    """The deliveries to resend: those named (each must be `unknown`), or every unknown one."""
    if everything:
        return list(session.scalars(select(Delivery.id).where(Delivery.status == Status.UNKNOWN)))
    if not ids:
        raise InputError("name the deliveries to resend, or give --all-unknown")
    rows = session.execute(select(Delivery.id, Delivery.status).where(Delivery.id.in_(ids)))
    found = {delivery_id: status for delivery_id, status in rows}
    wrong = [
        f"{i} ({found.get(i, 'no such delivery')})" for i in ids if found.get(i) != Status.UNKNOWN
    ]
    if wrong:
        raise InputError(f"only unknown deliveries are resent; not: {', '.join(wrong)}")
    return list(ids)


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
