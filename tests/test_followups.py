"""Follow-ups: who is reminded (no answer, no bounce, long enough ago), the link to the first
campaign, and what the reminder's template learns of the first letter."""

from __future__ import annotations

import email
import email.policy
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from outreach import campaigns, db, deliveries, followups, messages, tracking
from outreach.cli_tracking import register
from outreach.compose import compose
from outreach.config import Settings, load_settings
from outreach.errors import InputError
from outreach.letters import LetterRenderer, build_context, load_template, recipient_view
from outreach.models import Campaign, Delivery, utcnow
from outreach.salutations import format_date
from tests import inbound
from tests.inbound import Sent

JAGLAND = "thorbjorn.jagland@coe.int"
KYRIAKIDES = "stella.kyriakides@coe.int"
SCHAEUBLE = "wolfgang.schaeuble@bundestag.de"
FISCHER = "axel.fischer@bundestag.de"


@pytest.fixture
def settings(env: dict[str, str], database_url: str) -> Settings:
    return load_settings(database_url=database_url)


@pytest.fixture
def session(settings: Settings) -> Session:
    with db.session_scope(settings.effective_database_url) as session:
        yield session  # type: ignore[misc]


@pytest.fixture
def reminder(tmp_path: Path) -> Path:
    """A reminder template that quotes the first letter's subject and date."""
    folder = tmp_path / "reminder"
    folder.mkdir()
    (folder / "letter.toml").write_text('subject = "Reminder: {{ original.subject }}"\n')
    (folder / "body.txt").write_text(
        "{{ salutation }},\n\nOn {{ original.date }} we wrote to you about "
        "“{{ original.subject }}”. We would welcome your answer.\n"
    )
    return folder


@pytest.fixture
def first(session: Session, settings: Settings) -> tuple[Campaign, dict[str, Sent]]:
    """The model letter sent 20 days ago; Jagland answered, Kyriakides is away, Schäuble's
    server bounced it, Fischer is silent."""
    campaign = inbound.send_in_database(session, settings)
    sent = inbound.sent(session, campaign, settings)
    session.execute(
        update(Delivery)
        .where(Delivery.campaign_id == campaign.id)
        .values(sent_at=utcnow() - timedelta(days=20))
    )
    for raw in (
        inbound.human_reply(sent[JAGLAND]),
        inbound.out_of_office(sent[KYRIAKIDES]),
        inbound.gmail_plain(sent[SCHAEUBLE]),
    ):
        tracking.record(session, raw, settings, tracking.Origin("test"))
    return campaign, sent


def addresses(session: Session, campaign: Campaign) -> dict[str, str]:
    return {m.recipient.email or "": m.role for m in campaigns.members(session, campaign)}


def test_follow_up_reminds_the_silent_and_the_away_only(
    session: Session, first: tuple[Campaign, dict[str, Sent]], reminder: Path
) -> None:
    original, _ = first
    follow_up = followups.create_follow_up(
        session, original, template_dir=reminder, no_answer_after=timedelta(days=14), now=utcnow()
    )
    assert follow_up.name == "open-letter-follow-up" and follow_up.follow_up_of == original.id
    assert follow_up.state == "draft"
    assert addresses(session, follow_up) == {KYRIAKIDES: "to", FISCHER: "cc"}
    again = followups.create_follow_up(
        session, original, template_dir=reminder, no_answer_after=timedelta(days=14), now=utcnow()
    )
    assert again.name == "open-letter-follow-up-2"


def test_too_recent_letters_wait(
    session: Session, first: tuple[Campaign, dict[str, Sent]], reminder: Path
) -> None:
    original, sent = first
    session.execute(
        update(Delivery)
        .where(Delivery.id == sent[FISCHER].id)
        .values(sent_at=utcnow() - timedelta(days=3))
    )
    follow_up = followups.create_follow_up(
        session, original, template_dir=reminder, no_answer_after=timedelta(days=14), now=utcnow()
    )
    assert addresses(session, follow_up) == {KYRIAKIDES: "to"}
    with pytest.raises(InputError, match="nobody to remind"):
        followups.create_follow_up(
            session, original, template_dir=reminder, no_answer_after=timedelta(days=30),
            now=utcnow(),
        )  # fmt: skip


def test_template_gets_the_first_letters_date_and_subject(
    session: Session, first: tuple[Campaign, dict[str, Sent]], reminder: Path
) -> None:
    original, sent = first
    follow_up = followups.create_follow_up(
        session, original, template_dir=reminder, no_answer_after=timedelta(days=14), now=utcnow()
    )
    person = next(m.recipient for m in campaigns.members(session, follow_up) if m.role == "to")
    context = followups.original_for(session, follow_up, person)
    first_delivery = session.get(Delivery, sent[KYRIAKIDES].id)
    assert first_delivery is not None and first_delivery.sent_at is not None
    assert context["subject"] == sent[KYRIAKIDES].subject
    assert context["date"] == format_date(first_delivery.sent_at.date(), "en")
    assert followups.thread_headers(context) == (
        ("In-Reply-To", sent[KYRIAKIDES].message_id), ("References", sent[KYRIAKIDES].message_id),
    )  # fmt: skip
    view = recipient_view(person)
    letter = LetterRenderer(load_template(reminder)).render({
        **build_context(recipient=view, campaign={"name": follow_up.name, "sender": ""},
                        sender={}, principals=[view], copies=[], letter_date=utcnow().date(),
                        place=""),
        "original": context,
    })  # fmt: skip
    assert letter.subject == f"Reminder: {sent[KYRIAKIDES].subject}"
    assert f"On {context['date']} we wrote to you" in letter.text
    assert followups.original_for(session, original, person) == {}  # not a follow-up


@pytest.mark.parametrize(("text", "days"), [("14d", 14), ("2w", 14), ("36h", 1.5)])
def test_parse_age(text: str, days: float) -> None:
    assert followups.parse_age(text) == timedelta(days=days)


def test_parse_age_refuses_nonsense() -> None:
    with pytest.raises(InputError, match="14d"):
        followups.parse_age("two weeks")


def test_cli_follow_up(
    settings: Settings,
    first: tuple[Campaign, dict[str, Sent]],
    session: Session,
    reminder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session.commit()
    monkeypatch.setenv("OUTREACH_DATABASE_URL", settings.database_url)
    app, campaign_app = typer.Typer(), typer.Typer()
    app.add_typer(campaign_app, name="campaign")
    register(app, campaign_app)
    result = CliRunner().invoke(app, [
        "campaign", "follow-up", "open-letter", "--no-answer-after", "14d",
        "--template", str(reminder), "--name", "open-letter-reminder",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "campaign open-letter-reminder created for 2 recipient(s)" in result.output


def test_the_reminder_is_drafted_threaded_and_kept_as_sent(
    session: Session, first: tuple[Campaign, dict[str, Sent]], reminder: Path
) -> None:
    """Through the same path the workers use: the message names the first letter in its
    subject and body, is threaded to it, and is rebuilt byte for byte from what was kept."""
    original, sent = first
    follow_up = followups.create_follow_up(
        session, original, template_dir=reminder, no_answer_after=timedelta(days=14), now=utcnow()
    )
    person = next(m.recipient for m in campaigns.members(session, follow_up) if m.role == "to")
    first_letter = next(s for s in sent.values() if s.address == person.email)
    kit = messages.load_kit(session, follow_up)
    spec = messages.draft(kit, person, "<reminder-1@odfoundation.example>", utcnow())
    message = email.message_from_bytes(compose(spec), policy=email.policy.default)
    assert message["Subject"] == f"Reminder: {first_letter.subject}"
    assert message["In-Reply-To"] == first_letter.message_id
    assert message["References"] == first_letter.message_id
    delivery = Delivery(
        campaign_id=follow_up.id, recipient_id=person.id, role="to", channel="email",
        message_id=spec.message_id, address=person.email or "", status="queued",
    )  # fmt: skip
    session.add(delivery)
    session.flush()
    kept = messages.kept_columns(spec)
    attachments = messages.store_attachments(session, spec.attachments)
    assert deliveries.claim(session, delivery.id, kept=kept, attachments=attachments)
    session.refresh(delivery)
    assert messages.rebuild(delivery) == compose(spec)
