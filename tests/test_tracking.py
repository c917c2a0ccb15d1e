"""Tracking: VERP, sorting and matching each form of what comes back, outcomes, suppression."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from outreach import db, deliveries, tracking
from outreach.config import Settings, load_settings
from outreach.errors import ConfigError
from outreach.models import (
    Delivery,
    Event,
    InboundMessage,
    Response,
    Status,
    Suppression,
    utcnow,
)
from tests import inbound
from tests.inbound import Sent

JAGLAND = "thorbjorn.jagland@coe.int"
KYRIAKIDES = "stella.kyriakides@coe.int"
SCHAEUBLE = "wolfgang.schaeuble@bundestag.de"
FISCHER = "axel.fischer@bundestag.de"


@pytest.fixture
def settings(env: dict[str, str], database_url: str) -> Settings:
    return load_settings(
        database_url=database_url,
        bounce_address="bounces+{token}@odfoundation.example",
        verp_secret="verp-key-for-tests",
    )


@pytest.fixture
def session(settings: Settings) -> Session:
    with db.session_scope(settings.effective_database_url) as session:
        yield session  # type: ignore[misc]


@pytest.fixture
def sent(session: Session, settings: Settings) -> dict[str, Sent]:
    campaign = inbound.send_in_database(session, settings)
    return inbound.sent(session, campaign, settings)


def record(session: Session, raw: bytes, settings: Settings) -> InboundMessage | None:
    return tracking.record(session, raw, settings, tracking.Origin("test"))


def delivery(session: Session, sent: Sent) -> Delivery:
    row = session.get(Delivery, sent.id)
    assert row is not None
    session.refresh(row)
    return row


# --- VERP -------------------------------------------------------------------------------------


def test_return_path_names_one_delivery_and_cannot_be_forged(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[JAGLAND]
    local, _, domain = d.verp.partition("@")
    assert domain == "odfoundation.example" and local.startswith(f"bounces+{d.id}-")
    token = tracking.parse_verp(d.verp.upper(), settings)  # an MTA may change the case
    assert token is not None
    found = tracking.find_by_token(session, token, settings)
    assert found is not None and found.id == d.id
    forged = f"{sent[KYRIAKIDES].id}-{token.partition('-')[2]}"  # another id, the same MAC
    assert tracking.find_by_token(session, forged, settings) is None
    assert tracking.parse_verp("office@odfoundation.example", settings) is None


def test_without_bounce_address_the_return_path_is_from(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    plain = settings.model_copy(update={"bounce_address": ""})
    row = delivery(session, sent[JAGLAND])
    assert tracking.return_path(row, plain) == "office@odfoundation.example"
    assert tracking.parse_verp(sent[JAGLAND].verp, plain) is None
    broken = settings.model_copy(update={"bounce_address": "bounces@odfoundation.example"})
    with pytest.raises(ConfigError, match="token"):
        tracking.return_path(row, broken)


# --- bounces ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "status"),
    [
        (inbound.exchange_ndr, "5.1.10"),
        (inbound.gmail_plain, "5.1.1"),
        (inbound.qmail_failure, "5.1.1"),
    ],
)
def test_hard_bounce_in_each_form_bounces_and_suppresses(
    session: Session, sent: dict[str, Sent], settings: Settings, builder: object, status: str
) -> None:
    d = sent[SCHAEUBLE]
    kept = record(session, builder(d), settings)  # type: ignore[operator]
    assert kept is not None
    assert (kept.kind, kept.delivery_id, kept.matched_by) == ("bounce", d.id, "returned-original")
    assert status in kept.detail
    row = delivery(session, d)
    assert (row.status, row.outcome) == ("sent", "bounced")  # two axes: the send status stays
    suppression = session.scalar(select(Suppression).where(Suppression.key == SCHAEUBLE))
    assert suppression is not None and status in suppression.reason
    (event,) = session.scalars(select(Event).where(Event.kind == "outcome")).all()
    assert (event.delivery_id, event.from_status, event.to_status) == (d.id, "", "bounced")


def test_real_postfix_form_with_verp_and_a_delay_first(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[FISCHER]
    delay = record(session, inbound.postfix_delay(d), settings)
    assert delay is not None and (delay.kind, delay.matched_by) == ("delay", "verp")
    assert "4.4.1" in delay.detail and "Connection timed out" in delay.detail
    assert delivery(session, d).outcome == "delayed"
    assert session.scalar(select(Suppression.id)) is None  # a delay suppresses nothing
    record(session, inbound.exchange_ndr(d), settings)
    assert delivery(session, d).outcome == "bounced"
    later = inbound.postfix_delay(d).replace(b"A1B2C3.", b"D4E5F6.")
    record(session, later, settings)  # a late delay notice never lowers the outcome
    assert delivery(session, d).outcome == "bounced"
    outcomes = session.scalars(select(Event.to_status).where(Event.kind == "outcome")).all()
    assert outcomes == ["delayed", "bounced"]


def test_bounce_of_a_campaign_wide_cc_leaves_the_delivery_alone(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[JAGLAND]
    row = delivery(session, d)
    row.campaign.cc = ["press@odfoundation.example"]
    session.flush()
    cc_copy = Sent(d.id, d.message_id, "press@odfoundation.example", d.subject, d.verp)
    kept = record(session, inbound.exchange_ndr(cc_copy), settings)
    assert kept is not None and kept.delivery_id == d.id and "co-recipient" in kept.detail
    assert delivery(session, d).outcome == ""
    assert session.scalar(select(Suppression.id)) is None


# --- replies ----------------------------------------------------------------------------------


def test_reply_is_a_response_with_its_own_words(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[JAGLAND]
    kept = record(session, inbound.human_reply(d), settings)
    assert kept is not None and (kept.kind, kept.matched_by) == ("reply", "in-reply-to")
    (response,) = session.scalars(select(Response)).all()
    assert (response.delivery_id, response.kind, response.channel) == (d.id, "reply", "email")
    assert response.subject == f"Re: {d.subject}" and JAGLAND in response.sender
    assert response.excerpt.startswith("Dear Ms Kozlovska, Thank you for your letter.")
    assert "On behalf of" not in response.excerpt  # the quoted letter is left out
    assert response.received_at.isoformat() == "2017-11-13T10:30:00+00:00"
    assert response.counts_as_answer
    assert delivery(session, d).outcome == "delivered"


def test_reply_that_lost_its_headers_is_matched_by_sender_and_subject(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[SCHAEUBLE]
    kept = record(session, inbound.headerless_reply(d), settings)
    assert kept is not None and (kept.kind, kept.matched_by) == ("reply", "sender+subject")
    (response,) = session.scalars(select(Response)).all()
    assert response.delivery_id == d.id
    assert "vielen Dank" in response.excerpt and "Präsident" not in response.excerpt


def test_out_of_office_is_kept_but_is_no_answer(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[KYRIAKIDES]
    kept = record(session, inbound.out_of_office(d), settings)
    assert kept is not None and kept.kind == "auto_reply"
    (response,) = session.scalars(select(Response)).all()
    assert response.kind == "auto_reply" and not response.counts_as_answer


@pytest.mark.parametrize(
    "header",
    ["Auto-Submitted: auto-generated", "X-Autoreply: yes", "X-Autorespond: yes",
     "Precedence: auto_reply"],
)  # fmt: skip
def test_automatic_marks(header: str) -> None:
    raw = f"From: a@b.example\r\nSubject: Re: letter\r\n{header}\r\n\r\nAway.\r\n".encode()
    message = tracking.read_message(raw)
    assert message is not None and tracking.is_automatic(message)
    human = tracking.read_message(b"From: a@b.example\r\nSubject: Re: letter\r\n\r\nYes.\r\n")
    assert human is not None and not tracking.is_automatic(human)
    no = tracking.read_message(b"From: a@b.example\r\nAuto-Submitted: no\r\n\r\nYes.\r\n")
    assert no is not None and not tracking.is_automatic(no)


def test_unrelated_and_malformed_are_kept_and_listed(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    other = record(session, inbound.unrelated(), settings)
    broken = record(session, inbound.malformed(), settings)
    assert other is not None and other.kind == "unmatched" and other.delivery_id is None
    assert broken is not None and broken.kind == "malformed"
    assert broken.raw == inbound.malformed()
    assert [m.id for m in tracking.unmatched(session)] == [other.id, broken.id]


def test_nothing_is_counted_twice(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    raws = [inbound.human_reply(sent[JAGLAND]), inbound.gmail_plain(sent[SCHAEUBLE]),
            inbound.malformed()]  # fmt: skip
    assert all(record(session, raw, settings) is not None for raw in raws)
    assert all(record(session, raw, settings) is None for raw in raws)
    assert len(session.scalars(select(Response)).all()) == 1
    assert len(session.scalars(select(Event).where(Event.kind == "outcome")).all()) == 2


def test_reply_to_an_unknown_delivery_proves_it_was_sent(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[JAGLAND]
    session.execute(update(Delivery).where(Delivery.id == d.id).values(status=Status.UNKNOWN))
    record(session, inbound.human_reply(d), settings)
    assert delivery(session, d).status == "sent"


# --- presumed delivered -----------------------------------------------------------------------


def test_silence_after_the_window_is_presumed_delivery(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    now = utcnow()
    old = now - timedelta(hours=49)
    ids = [sent[JAGLAND].id, sent[KYRIAKIDES].id, sent[SCHAEUBLE].id]
    session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(sent_at=old))
    record(session, inbound.exchange_ndr(sent[SCHAEUBLE]), settings)  # bounced: stays so
    assert tracking.presume_delivered(session, now, settings) == 2
    assert tracking.presume_delivered(session, now, settings) == 0
    outcomes = {a: delivery(session, s).outcome for a, s in sent.items()}
    assert outcomes == {JAGLAND: "delivered", KYRIAKIDES: "delivered", SCHAEUBLE: "bounced",
                        FISCHER: ""}  # fmt: skip
    details = session.scalars(select(Event.detail).where(Event.to_status == "delivered")).all()
    assert details == ["presumed: no bounce within 48 h"] * 2


def test_a_delay_then_silence_is_presumed_delivery(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[FISCHER]
    record(session, inbound.postfix_delay(d), settings)
    later = utcnow() + timedelta(hours=49)
    assert tracking.presume_delivered(session, later, settings) == 4  # the silent ones too
    assert delivery(session, d).outcome == "delivered"
    assert tracking.presume_delivered(session, later + timedelta(days=9), settings) == 0


def test_a_bounce_after_presumed_delivery_still_bounces(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    d = sent[JAGLAND]
    session.execute(
        update(Delivery).where(Delivery.id == d.id).values(sent_at=utcnow() - timedelta(days=3))
    )
    tracking.presume_delivered(session, utcnow(), settings)
    record(session, inbound.gmail_plain(d), settings)
    assert delivery(session, d).outcome == "bounced"


def test_state_machine_is_untouched_by_outcomes(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    record(session, inbound.exchange_ndr(sent[JAGLAND]), settings)
    statuses = session.scalars(select(Event.to_status).where(Event.kind == "status")).all()
    assert "bounced" not in statuses
    assert {Status.SENT} <= deliveries.FINAL


def test_a_given_up_4xx_bounces_without_suppression_and_a_success_dsn_delivers(
    session: Session, sent: dict[str, Sent], settings: Settings
) -> None:
    expired = (
        inbound.postfix_delay(sent[FISCHER])
        .replace(b"Action: delayed", b"Action: failed")
        .replace(b"Status: 4.4.1", b"Status: 4.4.7")
    )
    kept = record(session, expired, settings)
    assert kept is not None and kept.kind == "bounce"
    assert delivery(session, sent[FISCHER]).outcome == "bounced"
    assert session.scalar(select(Suppression.id)) is None  # soft: the address may work later
    success = (
        inbound.postfix_delay(sent[JAGLAND])
        .replace(b"Action: delayed", b"Action: delivered")
        .replace(b"Status: 4.4.1", b"Status: 2.0.0")
    )
    kept = record(session, success, settings)
    assert kept is not None and kept.kind == "delivered"
    assert delivery(session, sent[JAGLAND]).outcome == "delivered"
