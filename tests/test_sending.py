"""The send loop in process (`sending.send_batch`, as the task runs it) against a real SMTP
server, both databases: each message's answer read after the next one's commands went out, and
what becomes of a message when the claim misses or the answer goes wrong in that overlap."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from outreach import campaigns, db, dispatch, registry, sending, suppression
from outreach.config import Settings, load_settings
from outreach.models import Campaign, CampaignState, Delivery, Status
from outreach.smtp import SmtpClient
from outreach.throttle import LocalThrottle
from tests.smtpd import BadServer, RecordingServer

RECIPIENTS = Path(__file__).resolve().parents[1] / "templates/open_letter/recipients.csv"
MONDAY_NOON = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)


@pytest.fixture
def queued(database_url: str, tmp_path: Path) -> list[tuple[int, str]]:
    """The model letter's four email deliveries, queued by the dispatcher: (id, address)."""
    template = tmp_path / "letter"
    template.mkdir()
    (template / "letter.toml").write_text('subject = "An open letter"\n')
    (template / "body.txt").write_text("{{ salutation }},\n\nWe write to you.\n")
    settings = load_settings()
    with db.session_scope(database_url) as session:
        registry.import_file(session, RECIPIENTS, settings=settings)
        campaign = campaigns.create_campaign(
            session, name="c", template_dir=template, sender="S <s@example.org>",
            to=["tag:principal"], cc=["tag:cc"], letter_date=date(2017, 11, 7),
        )  # fmt: skip
        campaigns.schedule(session, campaign, settings, at=MONDAY_NOON)
    with db.session_scope(database_url) as session:
        tick = dispatch.tick(session, settings, MONDAY_NOON)
    ids = [i for batch in tick.batches for i in batch]
    with db.session_scope(database_url) as session:
        query = select(Delivery.id, Delivery.address).where(Delivery.id.in_(ids))
        address = {i: a for i, a in session.execute(query)}
    assert len(ids) == 4
    return [(i, address[i]) for i in ids]


def send(url: str, server: RecordingServer, ids: list[int]) -> Counter[str]:
    settings: Settings = load_settings(**server.settings_overrides())
    with SmtpClient.from_settings(settings) as transport:
        sender = sending.Sender(transport, settings, sending.KitCache(), LocalThrottle())
        return sending.send_batch(db.session_factory(url), ids, sender)


def statuses(url: str) -> dict[str, Status]:
    with db.session_scope(url) as session:
        rows = session.scalars(select(Delivery))
        return {d.address: Status(d.status) for d in rows if d.address}


def received(server: RecordingServer) -> list[str]:
    return [rcpt for m in server.messages for rcpt in m.rcpt_tos]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "lockstep"])
def test_each_answer_is_read_after_the_next_messages_commands(
    database_url: str, queued: list[tuple[int, str]], pipelining: bool
) -> None:
    with RecordingServer(pipelining=pipelining, answer_delay=0.2) as server:
        outcome = send(database_url, server, [i for i, _ in queued])
    assert outcome == {Status.SENT: 4}
    assert received(server) == [a for _, a in queued]
    assert server.ahead_of_answer == [pipelining] * 3 + [False]  # the last has none behind it
    assert server.connections == 1
    assert set(statuses(database_url).values()) == {Status.SENT}


def test_a_claim_missed_behind_a_message_sends_nothing_of_it(
    database_url: str, queued: list[tuple[int, str]]
) -> None:
    """The second address is put on the do-not-contact list after it was queued: its commands
    went out behind the first message, its claim missed, nothing of it reached the server (the
    connection was closed on its 354) and the rest went over a new connection."""
    with db.session_scope(database_url) as session:
        suppression.add(session, queued[1][1], "asked not to be written to")
    with RecordingServer(answer_delay=0.05) as server:
        outcome = send(database_url, server, [i for i, _ in queued])
    assert outcome == {Status.SENT: 3, Status.SUPPRESSED: 1}
    assert received(server) == [queued[0][1], *(a for _, a in queued[2:])]
    assert server.connections == 2
    assert statuses(database_url)[queued[1][1]] == Status.SUPPRESSED


def test_no_answer_to_a_message_with_the_next_one_begun(
    database_url: str, queued: list[tuple[int, str]]
) -> None:
    """The server hangs up after the first message's final dot, the second's commands already
    sent: the first is `unknown` (never sent again by itself), the others go, once each."""
    with RecordingServer() as server:
        server.drop_at_data(queued[0][1], times=1)
        outcome = send(database_url, server, [i for i, _ in queued])
    assert outcome == {Status.SENT: 3, Status.UNKNOWN: 1}
    assert received(server) == [a for _, a in queued[1:]]
    assert statuses(database_url)[queued[0][1]] == Status.UNKNOWN


def test_a_server_that_refuses_us_mid_batch_pauses_the_rest(
    database_url: str, queued: list[tuple[int, str]]
) -> None:
    """After the first message the server goes, and what answers on its port greets with 554.
    The second message was claimed, but its recipient is not why it cannot go: it is deferred,
    not failed; the rest of the batch goes back to pending and the campaign is paused for the
    team, as when no connection could be had at the batch's start. Without this, each of the
    rest was claimed in turn and failed for good."""
    server = RecordingServer().start()
    refusing: list[BadServer] = []

    def replace_the_server() -> None:  # once the first message is answered
        time.sleep(0.2)
        server.stop()
        refusing.append(BadServer("554 5.7.1 access denied", port=server.port).start())

    server.on_data(queued[0][1], lambda _: threading.Thread(target=replace_the_server).start())
    settings = load_settings(**server.settings_overrides(), rate_per_second=1)  # a second's gap
    try:
        with SmtpClient.from_settings(settings) as transport:
            sender = sending.Sender(transport, settings, sending.KitCache(), LocalThrottle())
            ids = [i for i, _ in queued]
            outcome = sending.send_batch(db.session_factory(database_url), ids, sender)
    finally:
        for bad in refusing:
            bad.stop()
    assert outcome == {Status.SENT: 1, Status.DEFERRED: 1, "paused": 2}
    assert received(server) == [queued[0][1]] and refusing[0].connections == 1
    addresses = [a for _, a in queued]
    assert [statuses(database_url)[a] for a in addresses] == [
        Status.SENT, Status.DEFERRED, Status.PENDING, Status.PENDING
    ]  # fmt: skip
    with db.session_scope(database_url) as session:
        campaign = session.scalars(select(Campaign)).one()
        assert campaign.state == CampaignState.PAUSED and campaign.resume_at is None
        assert "554 5.7.1 access denied" in campaign.paused_reason
        deferred = session.get(Delivery, queued[1][0])
        assert deferred is not None and "not sent: cannot reconnect" in deferred.last_error


def test_own_address_refused_then_no_answer_is_failed_not_unknown(
    database_url: str, queued: list[tuple[int, str]]
) -> None:
    """The official's address refused at RCPT, the archive's Bcc accepted, then no answer after
    the dot: whatever became of the message, the official got nothing. Not `unknown`, which
    `deliveries reconcile` could find sent in the archive's copy."""
    archive = "archive@example.org"
    with db.session_scope(database_url) as session:
        session.scalars(select(Campaign)).one().bcc = [archive]
    first = queued[0][1]
    with RecordingServer() as server:
        server.fail_rcpt(first, 550, "5.1.1 no such user", times=1)
        server.drop_at_data(archive, times=1)
        outcome = send(database_url, server, [i for i, _ in queued])
    assert outcome == {Status.SENT: 3, Status.FAILED: 1}
    assert received(server) == [a for _, a in queued[1:] for a in (a, archive)]
    with db.session_scope(database_url) as session:
        refused = session.get(Delivery, queued[0][0])
        assert refused is not None and refused.status == Status.FAILED
        assert "550 5.1.1 no such user" in refused.last_error


@pytest.mark.parametrize(("code", "status"), [(554, Status.FAILED), (451, Status.DEFERRED)])
def test_content_refused_with_the_next_message_begun(
    database_url: str, queued: list[tuple[int, str]], code: int, status: Status
) -> None:
    with RecordingServer() as server:
        server.fail_data(queued[1][1], code, "said the server", times=1)
        outcome = send(database_url, server, [i for i, _ in queued])
    assert outcome == {Status.SENT: 3, status: 1}
    assert received(server) == [queued[0][1], *(a for _, a in queued[2:])]
    assert server.connections == 1
    with db.session_scope(database_url) as session:
        refused = session.get(Delivery, queued[1][0])
        assert refused is not None and refused.status == status
        assert f"{code} said the server" in refused.last_error
