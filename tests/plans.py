"""PostgreSQL's plan of a statement the code under test runs, read as it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from outreach import db


@contextmanager
def first_plan(url: str, starts: str) -> Iterator[list[str]]:
    """In the block, the `EXPLAIN` of the first statement starting with `starts`, with the
    parameters it ran with: the list holds that plan's text once the block has run it."""
    plans: list[str] = []

    def explain(_c: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith(starts) and not plans:
            cursor.execute(f"EXPLAIN {statement}", parameters)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    engine = db.get_engine(url)
    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)
