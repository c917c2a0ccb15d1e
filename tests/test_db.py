"""The database module's write turns: committed at their end; on SQLite, taken one process
at a time in the kernel's queue."""

from __future__ import annotations

import multiprocessing
import queue
import time
from multiprocessing.queues import Queue

import pytest
from sqlalchemy import select

from outreach import db
from outreach.models import Suppression


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
