"""End to end: the model letter's recipients, a campaign, real workers, a real SMTP server.

The CLI and the workers run as processes of their own, as a user runs them; the SMTP server is
aiosmtpd on 127.0.0.1 in the test process; the database is SQLite and the running PostgreSQL.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from outreach import db
from outreach.models import Delivery, Event
from tests.smtpd import RecordingServer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "open_letter"
REDIS_URL = "redis://127.0.0.1:6379/13"


def outreach(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the `outreach` command as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "outreach", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env["OUTREACH_HOME"],
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"outreach {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture
def letter_env(
    env: dict[str, str], database_url: str, smtp_server: RecordingServer, tmp_path: Path
) -> dict[str, str]:
    """The model letter's recipients imported and a campaign created, pointing at the server."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    run_env = {
        **env,
        "OUTREACH_HOME": str(home),
        "OUTREACH_DATABASE_URL": database_url,
        "OUTREACH_SMTP_HOST": smtp_server.host,
        "OUTREACH_SMTP_PORT": str(smtp_server.port),
        "OUTREACH_SMTP_SECURITY": "plain",
        "OUTREACH_SMTP_TIMEOUT": "5",
        "OUTREACH_RETRY_BASE_SECONDS": "600",
    }
    outreach(run_env, "recipients", "import", str(TEMPLATE / "recipients.csv"))
    return run_env


def create(env: dict[str, str], *extra: str) -> None:
    outreach(
        env, "campaign", "create", "open-letter", "--template", str(TEMPLATE),
        "--to", "tag:principal", "--cc", "tag:cc",
        "--from", "Open Dialog Foundation <office@odfoundation.example>",
        "--date", "2017-11-07", *extra,
    )  # fmt: skip


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def by_recipient(server: RecordingServer) -> dict[str, EmailMessage]:
    result: dict[str, EmailMessage] = {}
    for received in server.messages:
        message = parsed(received.data)
        address = message["To"].addresses[0].addr_spec.lower()
        assert address not in result, f"{address} got two messages"
        result[address] = message
    return result


def deliveries(url: str) -> dict[str, Delivery]:
    with db.session_scope(url) as session:
        rows = session.scalars(select(Delivery)).all()
        return {(d.address or f"id:{d.recipient_id}").lower(): d for d in rows}


EMAILS = {
    "thorbjorn.jagland@coe.int",
    "stella.kyriakides@coe.int",
    "wolfgang.schaeuble@bundestag.de",
    "axel.fischer@bundestag.de",
}


def test_embedded_send_one_personalised_message_per_recipient(
    letter_env: dict[str, str], smtp_server: RecordingServer, database_url: str
) -> None:
    create(letter_env)
    result = outreach(letter_env, "campaign", "send", "open-letter", "--yes")
    assert "sent 4" in result.stdout

    got = by_recipient(smtp_server)
    assert set(got) == EMAILS  # Gabriel has no email: no message, a post delivery instead

    jagland = got["thorbjorn.jagland@coe.int"]
    assert jagland["To"].addresses[0].display_name == "Mr Thorbjørn Jagland"
    assert jagland["From"].addresses[0].addr_spec == "office@odfoundation.example"
    text = jagland.get_body(("plain",)).get_content()
    assert "Dear Mr Jagland" in text
    assert "7 November 2017" in text
    schaeuble = got["wolfgang.schaeuble@bundestag.de"].get_body(("plain",)).get_content()
    assert "Sehr geehrter Herr Präsident" in schaeuble
    assert "Dear Mr Jagland" not in schaeuble
    fischer = got["axel.fischer@bundestag.de"].get_body(("plain",)).get_content()
    assert "Sehr geehrte Damen und Herren" in fischer

    pdfs = sorted(TEMPLATE.glob("*.pdf"))
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in pdfs}
    for message in got.values():
        attached = {
            part.get_filename(): hashlib.sha256(part.get_content()).hexdigest()
            for part in message.iter_attachments()
        }
        assert {k: attached[k] for k in expected} == expected
        assert len(set(attached) - set(expected)) == 1  # the personalised letter

    rows = deliveries(database_url)
    assert {a: d.status for a, d in rows.items() if d.channel == "email"} == dict.fromkeys(
        EMAILS, "sent"
    )
    (post,) = [d for d in rows.values() if d.channel != "email"]
    assert post.status == "pending"
    with db.session_scope(database_url) as session:
        kinds = [(e.from_status, e.to_status) for e in session.scalars(select(Event))]
    assert kinds.count(("sending", "sent")) == 4


def test_sent_message_is_rebuilt_byte_for_byte(
    letter_env: dict[str, str], smtp_server: RecordingServer, database_url: str
) -> None:
    create(letter_env)
    outreach(letter_env, "campaign", "send", "open-letter", "--yes")
    received = {parsed(r.data)["Message-ID"]: r.data for r in smtp_server.messages}
    for delivery in deliveries(database_url).values():
        if delivery.status != "sent":
            continue
        shown = subprocess.run(
            [sys.executable, "-m", "outreach", "deliveries", "show", str(delivery.id), "--eml"],
            env=letter_env, capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        assert shown.stdout == received[delivery.message_id]


def test_refused_official_fails_while_archive_bcc_accepted(
    letter_env: dict[str, str], smtp_server: RecordingServer, database_url: str
) -> None:
    smtp_server.fail_rcpt("wolfgang.schaeuble@bundestag.de", 550, "5.1.1 no such user")
    create(letter_env, "--bcc", "archive@odfoundation.example")
    outreach(letter_env, "campaign", "send", "open-letter", "--yes")
    rows = deliveries(database_url)
    refused = rows["wolfgang.schaeuble@bundestag.de"]
    assert refused.status == "failed"
    assert "550" in refused.last_error and "no such user" in refused.last_error
    for address in EMAILS - {"wolfgang.schaeuble@bundestag.de"}:
        assert rows[address].status == "sent"
    archived = [r for r in smtp_server.messages if "archive@odfoundation.example" in r.rcpt_tos]
    assert len(archived) == 4  # the archive copy went out, the official's did not


def test_451_leaves_the_delivery_for_retry(
    letter_env: dict[str, str], smtp_server: RecordingServer, database_url: str
) -> None:
    smtp_server.fail_rcpt("stella.kyriakides@coe.int", 451, "4.7.1 greylisted, try later")
    create(letter_env)
    result = outreach(letter_env, "campaign", "send", "open-letter", "--yes")
    rows = deliveries(database_url)
    deferred = rows["stella.kyriakides@coe.int"]
    assert deferred.status == "deferred"
    assert "451" in deferred.last_error and deferred.next_attempt_at is not None
    assert deferred.attempts == 1
    assert "deferred 1" in result.stdout
    assert {a for a, d in rows.items() if d.status == "sent"} == EMAILS - {
        "stella.kyriakides@coe.int"
    }


def test_dry_run_composes_everything_and_sends_nothing(
    letter_env: dict[str, str], smtp_server: RecordingServer, database_url: str
) -> None:
    create(letter_env)
    result = outreach(letter_env, "campaign", "send", "open-letter", "--dry-run")
    assert "4 message(s) composed, none sent" in result.stdout
    assert "no email address" in result.stdout  # Gabriel, by post or fax
    assert smtp_server.messages == []
    assert deliveries(database_url) == {}


@pytest.fixture
def redis_worker(letter_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A real `celery -A workers worker` process on the running Redis."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    worker_env = {**letter_env, "OUTREACH_BROKER_URL": REDIS_URL}
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "solo",
         "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
        env=worker_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield worker_env
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        if os.environ.get("OUTREACH_TEST_SHOW_WORKER"):
            print(output)


def test_redis_worker_process_sends_the_campaign(
    redis_worker: dict[str, str], smtp_server: RecordingServer, database_url: str
) -> None:
    create(redis_worker)
    started = time.monotonic()
    outreach(redis_worker, "campaign", "send", "open-letter", "--yes")
    assert time.monotonic() - started < 100
    assert set(by_recipient(smtp_server)) == EMAILS
    assert {d.status for d in deliveries(database_url).values() if d.channel == "email"} == {"sent"}
