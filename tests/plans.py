"""PostgreSQL's plan of a statement the code under test runs, read as it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from outreach import db


def registry_rows(n: int) -> list[dict[str, Any]]:
    """`n` recipients tagged `principal`, their rows as wide as a real registry's: over narrow
    ones a scan may rightly cost the planner less than the lookups a test expects."""
    return [
        {"key": f"m{i}@example.org", "email": f"m{i}@example.org", "given_name": "Maria",
         "family_name": f"Member-{i:06d}", "position": "Member of Parliament",
         "organisation": "Chambre des représentants",
         "department": "Commission des affaires étrangères",
         "address_lines": [f"Rue de la Loi {i % 200 + 1}", "Bureau 4.12"], "city": "Bruxelles",
         "postcode": "1000", "country": "BE", "language": "fr", "tags": ["principal"],
         "notes": "Rapporteur; asked for the annex in French."}
        for i in range(n)
    ]  # fmt: skip


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
