"""Shared fixtures: a migrated database on SQLite and on the running PostgreSQL, settings that
point at it, and a home folder of the test's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outreach import config, db
from tests.smtpd import smtp_pki, smtp_server, tls_smtp_server  # noqa: F401

PG_ADMIN = os.environ.get("OUTREACH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"outreach_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        db.get_engine.cache_clear()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: every test that takes this runs on both engines."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'outreach.db'}"
        db.upgrade(url)
        yield url
        db.get_engine.cache_clear()
    else:
        for url in _pg_database():
            db.upgrade(url)
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only, for tests whose point is not the database."""
    url = f"sqlite:///{tmp_path / 'outreach.db'}"
    db.upgrade(url)
    yield url
    db.get_engine.cache_clear()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A clean OUTREACH_* environment rooted in the test's folder; returns it for subprocesses."""
    for key in list(os.environ):
        if key.startswith("OUTREACH_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("OUTREACH_HOME", str(home))
    config.get_settings.cache_clear()
    yield {k: v for k, v in os.environ.items()}
    config.get_settings.cache_clear()
