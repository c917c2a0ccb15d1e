"""The inbox, for real: Dovecot over TLS holding a real Postfix bounce and the common forms of
what comes back; polled twice, then once more with its memory wiped; archives imported."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
import typer
from pydantic import SecretStr
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from outreach import db, inbox, messages, registry, tracking
from outreach.cli_tracking import register
from outreach.config import Settings, load_settings
from outreach.models import (
    Delivery,
    Event,
    InboundMessage,
    InboxState,
    Response,
    Suppression,
)
from tests import inbound
from tests.dovecot import Dovecot, dovecot  # noqa: F401
from tests.inbound import Sent
from tests.postfix import Postfix, postfix  # noqa: F401

EXTRA = """\
given_name,family_name,organisation,email,language,tags
Anna,Exchange,Council of Europe,anna.exchange@coe.int,en,principal
Karl,Gmail,Bundestag Office,karl.gmail@gmail.com,de,cc
Dana,Slow,Ministry of Foreign Affairs,dana.slow@mfa.gov.kz,en,cc
"""
JAGLAND = "thorbjorn.jagland@coe.int"
KYRIAKIDES = "stella.kyriakides@coe.int"
SCHAEUBLE = "wolfgang.schaeuble@bundestag.de"
FISCHER = "axel.fischer@bundestag.de"
EXCHANGE, GMAIL, SLOW = "anna.exchange@coe.int", "karl.gmail@gmail.com", "dana.slow@mfa.gov.kz"
EXPECTED = {  # address: (outcome, best response)
    JAGLAND: ("delivered", "reply"),
    KYRIAKIDES: ("delivered", "auto_reply"),
    SCHAEUBLE: ("delivered", "reply"),
    FISCHER: ("bounced", None),
    EXCHANGE: ("bounced", None),
    GMAIL: ("bounced", None),
    SLOW: ("delayed", None),
}


@pytest.fixture
def settings(env: dict[str, str], database_url: str, dovecot: Dovecot) -> Settings:  # noqa: F811
    return load_settings(
        database_url=database_url,
        bounce_address="bounces+{token}@odfoundation.example",
        verp_secret="verp-key-for-tests",
        **dovecot.settings_overrides(),
    )


@pytest.fixture
def sent(settings: Settings, tmp_path: Path) -> dict[str, Sent]:
    extra = tmp_path / "extra.csv"
    extra.write_text(EXTRA)
    with db.session_scope(settings.effective_database_url) as session:
        registry.import_file(session, extra, settings=settings)
        campaign = inbound.send_in_database(session, settings)
        return inbound.sent(session, campaign, settings)


def real_bounce(postfix: Postfix, settings: Settings, d: Sent) -> bytes:  # noqa: F811
    """Send the delivery's very bytes to Postfix from its VERP address: Postfix bounces it."""
    with db.session_scope(settings.effective_database_url) as session:
        row = session.get(Delivery, d.id)
        assert row is not None
        data = messages.rebuild(row)
    assert data is not None
    postfix.send(d.verp, d.address, data)
    (bounce,) = postfix.bounces(1)
    assert bounce.mail_from == "<>" and bounce.rcpt_tos == [d.verp]  # null sender, to the VERP
    return f"Return-Path: <>\r\nDelivered-To: {d.verp}\r\n".encode() + bounce.data  # as an LDA


def everything(postfix: Postfix, settings: Settings, sent: dict[str, Sent]) -> list[bytes]:  # noqa: F811
    return [
        real_bounce(postfix, settings, sent[FISCHER]),
        inbound.exchange_ndr(sent[EXCHANGE]),
        inbound.gmail_plain(sent[GMAIL]),
        inbound.postfix_delay(sent[SLOW]),
        inbound.human_reply(sent[JAGLAND]),
        inbound.headerless_reply(sent[SCHAEUBLE]),
        inbound.out_of_office(sent[KYRIAKIDES]),
        inbound.unrelated(),
        inbound.malformed(),
    ]


def state(session: Session) -> dict[str, tuple[str, str | None]]:
    """Each delivery's outcome and best response kind, by address."""
    result: dict[str, tuple[str, str | None]] = {}
    for d in session.scalars(select(Delivery).where(Delivery.channel == "email")):
        kinds = session.scalars(select(Response.kind).where(Response.delivery_id == d.id)).all()
        result[d.address] = (d.outcome, "reply" if "reply" in kinds else next(iter(kinds), None))
    return result


def counts(session: Session) -> tuple[int, int, int, int]:
    return tuple(  # type: ignore[return-value]
        session.scalar(select(func.count()).select_from(t))
        for t in (InboundMessage, Response, Event, Suppression)
    )


def test_poll_sorts_everything_and_a_second_poll_changes_nothing(
    dovecot: Dovecot,  # noqa: F811
    postfix: Postfix,  # noqa: F811
    settings: Settings,
    sent: dict[str, Sent],
) -> None:
    raws = everything(postfix, settings, sent)
    assert b"report-type=delivery-status" in raws[0] and b"X-Postfix" in raws[0]
    dovecot.append(*raws)

    first = inbox.poll_once(settings)
    assert (first.read, first.recorded, first.duplicates) == (9, 9, 0)
    assert dict(first.kinds) == {
        "bounce": 3, "delay": 1, "reply": 2, "auto_reply": 1, "unmatched": 1, "malformed": 1,
    }  # fmt: skip
    with db.session_scope(settings.effective_database_url) as session:
        assert state(session) == EXPECTED
        postfix_bounce = session.scalar(
            select(InboundMessage).where(InboundMessage.delivery_id == sent[FISCHER].id)
        )
        assert postfix_bounce is not None and postfix_bounce.matched_by == "verp"
        assert "5.1.1" in postfix_bounce.detail and "unknown user" in postfix_bounce.detail
        assert postfix_bounce.raw == raws[0]  # the whole message is kept
        suppressed = set(session.scalars(select(Suppression.key)))
        assert suppressed == {FISCHER, EXCHANGE, GMAIL}
        listed = [(m.kind, m.subject) for m in tracking.unmatched(session)]
        assert listed == [("unmatched", "Invitation: Human Rights Forum 2018"), ("malformed", "")]
        before = counts(session)
    assert not any("\\Seen" in flags for flags in dovecot.flags().values())  # people's flags

    second = inbox.poll_once(settings)
    assert (second.read, second.recorded) == (0, 0)
    with db.session_scope(settings.effective_database_url) as session:
        assert counts(session) == before
        session.execute(delete(InboxState))  # the UID memory lost: Message-IDs still hold
    third = inbox.poll_once(settings)
    assert (third.read, third.recorded, third.duplicates) == (9, 0, 9)
    with db.session_scope(settings.effective_database_url) as session:
        assert counts(session) == before
        assert state(session) == EXPECTED


def test_matched_messages_move_to_the_processed_folder(
    dovecot: Dovecot,  # noqa: F811
    settings: Settings,
    sent: dict[str, Sent],
) -> None:
    dovecot.append(inbound.human_reply(sent[JAGLAND]), inbound.unrelated(), inbound.malformed())
    moving = settings.model_copy(update={"imap_processed_folder": "Outreach-Processed"})
    report = inbox.poll_once(moving)
    assert (report.recorded, report.moved) == (3, 1)
    assert len(dovecot.flags("INBOX")) == 2  # unmatched and malformed stay where people look
    assert len(dovecot.flags("Outreach-Processed")) == 1
    again = inbox.poll_once(moving)
    assert (again.read, again.recorded, again.moved) == (0, 0, 0)


def test_untrusted_certificate_and_wrong_password_are_refused(
    dovecot: Dovecot,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    from tests.smtpd import Pki

    other = Pki.create(tmp_path)
    with pytest.raises(inbox.InboxError, match="CERTIFICATE_VERIFY_FAILED"):
        inbox.poll_once(settings.model_copy(update={"imap_ca_bundle": other.ca_pem}))
    with pytest.raises(inbox.InboxError, match="LOGIN"):
        inbox.poll_once(settings.model_copy(update={"imap_password": SecretStr("wrong")}))


def test_import_mbox_maildir_and_eml_counts_each_message_once(
    settings: Settings, sent: dict[str, Sent], tmp_path: Path
) -> None:
    raws = [inbound.human_reply(sent[JAGLAND]), inbound.exchange_ndr(sent[EXCHANGE]),
            inbound.unrelated()]  # fmt: skip
    box = mailbox.mbox(tmp_path / "archive.mbox")
    for raw in raws:
        box.add(raw)
    box.flush()
    maildir = mailbox.Maildir(tmp_path / "Maildir")
    maildir.add(inbound.out_of_office(sent[KYRIAKIDES]))
    maildir.add(raws[0])  # the same reply, archived twice
    (tmp_path / "eml").mkdir()
    (tmp_path / "eml" / "delay.eml").write_bytes(inbound.postfix_delay(sent[SLOW]))
    sessions = db.session_factory(settings.effective_database_url)

    from_mbox = inbox.import_path(sessions, tmp_path / "archive.mbox", settings)
    assert (from_mbox.read, from_mbox.recorded) == (3, 3)
    from_maildir = inbox.import_path(sessions, tmp_path / "Maildir", settings)
    assert (from_maildir.read, from_maildir.recorded, from_maildir.duplicates) == (2, 1, 1)
    from_eml = inbox.import_path(sessions, tmp_path / "eml", settings)
    assert dict(from_eml.kinds) == {"delay": 1}
    again = inbox.import_path(sessions, tmp_path / "archive.mbox", settings)
    assert (again.recorded, again.duplicates) == (0, 3)
    with db.session_scope(settings.effective_database_url) as session:
        assert state(session)[EXCHANGE] == ("bounced", None)
        assert state(session)[KYRIAKIDES] == ("delivered", "auto_reply")
        assert len(session.scalars(select(Response)).all()) == 2


def test_cli_poll_and_list(
    dovecot: Dovecot,  # noqa: F811
    settings: Settings,
    sent: dict[str, Sent],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wide = {"COLUMNS": "200", "OUTREACH_DATABASE_URL": settings.database_url}
    for key, value in {**dovecot.env(), **wide}.items():
        monkeypatch.setenv(key, value)
    dovecot.append(inbound.human_reply(sent[JAGLAND]), inbound.unrelated())
    app, campaign_app = typer.Typer(), typer.Typer()
    app.add_typer(campaign_app, name="campaign")
    register(app, campaign_app)
    runner = CliRunner()
    polled = runner.invoke(app, ["inbox", "poll"])
    assert polled.exit_code == 0, polled.output
    assert "2 read, 2 recorded (reply 1, unmatched 1)" in polled.output
    listed = runner.invoke(app, ["inbox", "list"])
    assert "Invitation: Human Rights Forum" in listed.output and "1 unmatched" in listed.output
