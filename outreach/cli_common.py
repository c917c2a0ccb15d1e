"""What the CLI's modules share: the consoles, and a session on the configured database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from sqlalchemy.orm import Session

from outreach import db
from outreach.config import get_settings

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@contextmanager
def open_session() -> Iterator[Session]:
    """All or nothing: committed when the command's block ends well, rolled back otherwise."""
    with db.session_scope(get_settings().effective_database_url) as current:
        yield current
