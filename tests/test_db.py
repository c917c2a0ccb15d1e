"""The database module's write turns: committed at their end; on SQLite, taken one process
at a time in the kernel's queue. Statements run on SQLite's own cursor store what SQLAlchemy's
path stores."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue

import pytest
from sqlalchemy import bindparam, insert, select, text, update

from outreach import db
from outreach.models import Campaign, Delivery, Event, Recipient, Status, Suppression
from tests.test_deliveries import _one_delivery


def _take_turn(url: str, said: Queue[str]) -> None:
    with db.session_scope(url) as session:
        said.put("waiting")
        with db.write_turn(session):
            said.put("in")


def test_sqlite_writers_take_turns_across_forked_processes(sqlite_url: str) -> None:
    """As Celery's prefork pool does: the parent has taken a turn before the fork, and the
    child must still wait for it (a lock on a descriptor shared by both would not exclude)."""
    fork = multiprocessing.get_context("fork")
    said: Queue[str] = fork.Queue()
    with db.session_scope(sqlite_url) as session:
        with db.write_turn(session):
            child = fork.Process(target=_take_turn, args=(sqlite_url, said))
            child.start()
            assert said.get(timeout=30) == "waiting"
            time.sleep(0.3)
            try:
                early = said.get_nowait()
            except queue.Empty:
                early = None
            assert early is None  # not in while this process holds the turn
        assert said.get(timeout=30) == "in"
        child.join(30)
    assert child.exitcode == 0


def test_a_turn_commits_at_its_end_and_rolls_back_on_error(database_url: str) -> None:
    """Its writes are on disk when the turn is over (a reader elsewhere sees them), or none."""
    sessions = db.session_factory(database_url)
    with sessions() as session:
        with db.write_turn(session):
            session.add(Suppression(key="kept@example.org", email="kept@example.org"))
        with pytest.raises(RuntimeError), db.write_turn(session):
            session.add(Suppression(key="lost@example.org", email="lost@example.org"))
            session.flush()
            raise RuntimeError("in the middle of a turn")
    with sessions() as reader:
        assert list(reader.scalars(select(Suppression.key))) == ["kept@example.org"]


def test_turns_in_a_turn_session_commit_on_the_driver_and_keep_one_transaction(
    database_url: str,
) -> None:
    """The send loop's session (`db.turn_session`): each turn's writes are committed when it
    ends (a reader elsewhere sees them), without the Session committing a transaction of its
    own each turn; an error ends that transaction, and the next turn begins another."""
    sessions = db.session_factory(database_url)

    def keys() -> set[str]:
        with sessions() as reader:
            return set(reader.scalars(select(Suppression.key)))

    with db.turn_session(sessions) as session:
        with db.write_turn(session):
            session.add(Suppression(key="first@example.org", email="first@example.org"))
        kept = session.get_transaction()
        with db.write_turn(session):
            session.add(Suppression(key="second@example.org", email="second@example.org"))
        assert kept is not None and session.get_transaction() is kept  # no commit per turn
        assert keys() == {"first@example.org", "second@example.org"}
        with pytest.raises(RuntimeError), db.write_turn(session):
            raise RuntimeError("in the middle of a turn")
        assert session.get_transaction() is None
        with db.write_turn(session):
            session.add(Suppression(key="third@example.org", email="third@example.org"))
    assert keys() == {"first@example.org", "second@example.org", "third@example.org"}


def test_a_failed_turn_in_a_turn_session_on_sqlite_leaves_none_of_its_writes(
    sqlite_url: str,
) -> None:
    """On SQLite a turn of the send loop is several statements (the verdict, the claim, their
    Events, the kept attachments): the driver's transaction spans them all, so a turn that
    fails midway writes none of them."""
    sessions = db.session_factory(sqlite_url)
    with db.turn_session(sessions) as session:
        with pytest.raises(RuntimeError), db.write_turn(session):
            session.add(Suppression(key="lost@example.org", email="lost@example.org"))
            session.flush()
            session.execute(insert(Suppression).values(key="also@example.org", email="also@x.org"))
            raise RuntimeError("in the middle of a turn")
        with db.write_turn(session):
            session.add(Suppression(key="kept@example.org", email="kept@example.org"))
    with sessions() as reader:
        assert list(reader.scalars(select(Suppression.key))) == ["kept@example.org"]


def test_a_transaction_turn_lasts_until_its_transaction_ends(database_url: str) -> None:
    """Steps that read, decide and write (the dispatcher's tick) take turns: a second waits
    until the first's transaction ends, committed or rolled back. Writers that take no turn
    go on meanwhile: on SQLite the turn is not the write lock, so the send loop never waits
    on a tick's reads."""
    entered = threading.Event()

    def second() -> None:
        with db.session_scope(database_url) as session:
            db.transaction_turn(session, 1, "probe")
            entered.set()

    for end, address in (("commit", "a@example.org"), ("rollback", "b@example.org")):
        entered.clear()
        holder = db.session_factory(database_url)()
        db.transaction_turn(holder, 1, "probe")
        db.transaction_turn(holder, 1, "probe")  # held already: no wait on itself
        other = threading.Thread(target=second)
        other.start()
        with db.session_scope(database_url) as writer:
            writer.add(Suppression(key=address, email=address))
        assert not entered.wait(0.5), "the second turn did not wait for the first"
        getattr(holder, end)()
        assert entered.wait(10), f"the turn was still held after the {end}"
        other.join(10)
        holder.close()


def test_run_on_driver_stores_what_sqlalchemy_stores(database_url: str) -> None:
    """The send loop's statements go around SQLAlchemy's execution: what they store must be
    what its own path stores (on SQLite byte for byte: the UTC datetimes' text, JSON, enums),
    and an UPDATE's RETURNING the same rows."""
    deliveries, events = Delivery.__table__, Event.__table__
    move = (
        update(deliveries)
        .where(deliveries.c.id == bindparam("id_"), deliveries.c.status == bindparam("source"))
        .returning(deliveries.c.campaign_id, deliveries.c.id)
    )
    at = datetime(2026, 11, 26, 5, 0, 0, 123456, tzinfo=UTC)
    values = {
        "source": Status.QUEUED, "status": Status.SENDING, "updated_at": at, "sent_at": None,
        "next_attempt_at": at + timedelta(hours=1), "headers": [["To", "Mme Ö <a@example.org>"]],
        "subject": "Lettre ouverte", "last_error": "",
    }  # fmt: skip
    with db.session_scope(database_url) as session:
        campaign = Campaign(name="c", template_dir="/t", sender="S <s@example.org>")
        session.add(campaign)
        ids = []
        for n in range(2):
            recipient = Recipient(key=f"{n}@example.org", family_name="A", email=f"{n}@example.org")
            session.add(recipient)
            session.flush()
            delivery = Delivery(
                campaign_id=campaign.id, recipient_id=recipient.id, role="to", channel="email",
                status=Status.QUEUED, message_id=f"<{n}@example.org>", address=recipient.email,
            )  # fmt: skip
            session.add(delivery)
            session.flush()
            ids.append(delivery.id)
        connection = session.connection()
        theirs = connection.execute(move, {"id_": ids[0], **values}).all()
        ours = db.run_on_driver(connection, move, [{"id_": ids[1], **values}])
        assert [tuple(row) for row in theirs] == [(campaign.id, ids[0])]
        assert ours == [(campaign.id, ids[1])]
        event = {
            "campaign_id": campaign.id, "kind": "status", "from_status": Status.QUEUED,
            "to_status": Status.SENDING, "detail": "", "created_at": at,
        }  # fmt: skip
        connection.execute(insert(events), [{**event, "delivery_id": ids[0]}])
        db.run_on_driver(connection, insert(events), [{**event, "delivery_id": i} for i in ids])
        with pytest.raises(KeyError, match="'source'"):  # never bound as a silent NULL
            db.run_on_driver(connection, move, [{"id_": ids[1], "status": Status.SENT}])
    stored = "SELECT status, updated_at, sent_at, next_attempt_at, headers, subject FROM deliveries"
    logged = "SELECT to_status, created_at, delivery_id FROM events ORDER BY id"
    with db.session_scope(database_url) as session:
        theirs_row, ours_row = session.execute(text(f"{stored} ORDER BY id")).all()
        assert tuple(ours_row) == tuple(theirs_row)
        rows = [tuple(r) for r in session.execute(text(logged))]
    stamp = at if database_url.startswith("postgresql") else "2026-11-26 05:00:00.123456"
    assert theirs_row.updated_at == stamp
    assert rows == [("sending", stamp, i) for i in [ids[0], *ids]]


def test_the_kept_text_is_compressed_with_lz4_on_postgresql(database_url: str) -> None:
    """PostgreSQL compresses a kept message's text with LZ4 (migration 0006), not pglz, and
    it reads back whole. SQLite keeps it as it is."""
    text_4k = "Sehr geehrte Frau Präsidentin, wir schreiben Ihnen heute. " * 70
    delivery_id = _one_delivery(database_url)
    with db.session_scope(database_url) as session:
        kept = update(Delivery).where(Delivery.id == delivery_id)
        session.execute(kept.values(body_text=text_4k, body_html=text_4k))
        if session.get_bind().dialect.name == "postgresql":
            method = text(
                "SELECT pg_column_compression(body_text), pg_column_compression(body_html)"
                " FROM deliveries WHERE id = :id"
            )
            assert session.execute(method, {"id": delivery_id}).one() == ("lz4", "lz4")
    with db.session_scope(database_url) as session:
        assert session.scalars(select(Delivery.body_text)).one() == text_4k
