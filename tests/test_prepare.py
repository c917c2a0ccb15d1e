"""PDF letters rendered ahead of the send: asked by the dispatcher, rendered and kept by
`prepare_letters`, used by the send only while they still match. Real WeasyPrint, both databases."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from outreach import campaigns, db, dispatch, messages, prepare, registry
from outreach.compose import Attachment
from outreach.config import load_settings
from outreach.models import Campaign, Delivery, Event, Recipient, Status
from outreach.pdf import Letter
from outreach.sending import KitCache

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "open_letter"
MONDAY_NOON = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)


@pytest.fixture
def template(tmp_path: Path) -> Path:
    folder = tmp_path / "open_letter"
    shutil.copytree(TEMPLATE, folder)
    return folder


def _create(session: Session, template: Path) -> Campaign:
    """The model letter's recipients and campaign."""
    registry.import_file(session, TEMPLATE / "recipients.csv", settings=load_settings())
    return campaigns.create_campaign(
        session, name="c", template_dir=template, sender="S <s@example.org>",
        to=["tag:principal"], cc=["tag:cc"], letter_date=date(2017, 11, 7),
    )  # fmt: skip


def _schedule(url: str, template: Path) -> None:
    """The campaign scheduled for Monday noon through the API: no check rendered its letters."""
    with db.session_scope(url) as session:
        campaigns.schedule(session, _create(session, template), load_settings(), at=MONDAY_NOON)


def _tick(url: str, now: datetime, **settings: object) -> dispatch.Tick:
    with db.session_scope(url) as session:
        return dispatch.tick(session, load_settings(**settings), now)


def _prepare(url: str, ids: list[int]) -> dict[str, int]:
    return dict(prepare.prepare_letters(db.session_factory(url), ids, KitCache()))


def _emails(url: str) -> list[Delivery]:
    with db.session_scope(url) as session:
        query = select(Delivery).where(Delivery.channel == "email").order_by(Delivery.id)
        return list(session.scalars(query))


def test_letters_are_asked_for_before_the_start_and_released_once_kept(
    database_url: str, template: Path
) -> None:
    _schedule(database_url, template)
    early = _tick(database_url, MONDAY_NOON - timedelta(hours=1))
    asked = sorted(i for b in early.letters for i in b)
    assert asked == [d.id for d in _emails(database_url)] and early.batches == []
    assert _tick(database_url, MONDAY_NOON - timedelta(minutes=59)).letters == []  # asked once

    assert _prepare(database_url, asked) == {"prepared": 4}
    assert _prepare(database_url, asked) == {}  # kept already: nothing rendered twice
    due = _tick(database_url, MONDAY_NOON)
    assert sorted(i for b in due.batches for i in b) == asked
    with db.session_scope(database_url) as session:
        for delivery in session.scalars(select(Delivery).where(Delivery.id.in_(asked))):
            assert delivery.letter is not None and delivery.letter.data.startswith(b"%PDF-")
            name = delivery.recipient.family_name or delivery.recipient.organisation
            assert delivery.letter_filename == f"Open-letter-{name}-2017-11-07.pdf"
            assert [e.detail for e in delivery.events if e.kind == "letter"] == [
                f"PDF letter rendered: {delivery.letter_filename} "
                f"({len(delivery.letter.data):,} bytes)"
            ]


def test_no_delivery_goes_before_its_letter_is_kept(database_url: str, template: Path) -> None:
    _schedule(database_url, template)
    tick = _tick(database_url, MONDAY_NOON, letters_ahead=2)
    assert tick.batches == [] and sum(len(b) for b in tick.letters) == 2  # two asked at a time
    first_two = [i for b in tick.letters for i in b]
    assert _tick(database_url, MONDAY_NOON, letters_ahead=2).letters == []
    _prepare(database_url, first_two)
    tick = _tick(database_url, MONDAY_NOON, letters_ahead=2)
    assert sorted(i for b in tick.batches for i in b) == first_two  # those two go
    assert sum(len(b) for b in tick.letters) == 2  # and the next two are asked for


def test_a_request_the_broker_lost_is_asked_again(database_url: str, template: Path) -> None:
    _schedule(database_url, template)
    asked = _tick(database_url, MONDAY_NOON, queued_timeout=300).letters
    assert (
        _tick(database_url, MONDAY_NOON + timedelta(seconds=200), queued_timeout=300).letters == []
    )
    again = _tick(database_url, MONDAY_NOON + timedelta(seconds=400), queued_timeout=300).letters
    assert sorted(i for b in again for i in b) == sorted(i for b in asked for i in b)


def test_a_letter_that_cannot_be_rendered_fails_its_delivery_only(
    database_url: str, template: Path
) -> None:
    _schedule(database_url, template)
    with db.session_scope(database_url) as session:  # one address too long for the window
        jagland = session.scalar(select(Recipient).where(Recipient.family_name == "Jagland"))
        assert jagland is not None
        jagland.address_lines = [f"Line {n}" for n in range(12)]
    asked = [i for b in _tick(database_url, MONDAY_NOON).letters for i in b]
    assert _prepare(database_url, asked) == {"prepared": 3, "failed": 1}
    failed = [d for d in _emails(database_url) if d.status == Status.FAILED]
    assert len(failed) == 1 and "the PDF letter cannot be rendered" in failed[0].last_error
    assert "envelope window" in failed[0].last_error
    assert sum(len(b) for b in _tick(database_url, MONDAY_NOON).batches) == 3


def test_the_send_uses_a_kept_letter_only_while_it_still_matches(
    database_url: str, template: Path
) -> None:
    _schedule(database_url, template)
    asked = [i for b in _tick(database_url, MONDAY_NOON).letters for i in b]
    _prepare(database_url, asked)
    with db.session_scope(database_url) as session:
        delivery = session.get(Delivery, asked[0])
        assert delivery is not None
        kit = messages.load_kit(session, session.get(Campaign, delivery.campaign_id))  # type: ignore[arg-type]
        kept = messages.ahead_letter(delivery)
        assert kept is not None
        # The kept bytes are used as they are: a forged stand-in with the right key goes out.
        stand_in = Letter(
            kept.key, Attachment(kept.attachment.filename, "application/pdf", b"%PDF-kept")
        )
        same = messages.letter_for(kit, delivery.recipient, stand_in)
        assert same.attachment.data == b"%PDF-kept"
        # The recipient moved after the letter was rendered: the send renders it again.
        session.execute(
            update(Recipient)
            .where(Recipient.id == delivery.recipient_id)
            .values(city="Kehl", postcode="77694")
        )
        session.refresh(delivery.recipient)
        fresh = messages.letter_for(kit, delivery.recipient, stand_in)
        assert fresh.key != kept.key and fresh.attachment.data.startswith(b"%PDF-1")
        assert hashlib.sha256(fresh.attachment.data).hexdigest() != delivery.letter_sha256


def test_send_and_schedule_keep_the_letters_the_check_rendered(
    database_url: str, template: Path
) -> None:
    settings = load_settings()
    with db.session_scope(database_url) as session:
        campaign = _create(session, template)
        report = messages.check(session, campaign, settings)
        campaigns.schedule(session, campaign, settings, at=MONDAY_NOON)
        assert prepare.keep_checked(session, campaign, report.letters) == 5  # 4 emails, 1 post
        assert prepare.keep_checked(session, campaign, report.letters) == 0
        letters = list(session.scalars(select(Event).where(Event.kind == "letter")))
        assert len(letters) == 5
    tick = _tick(database_url, MONDAY_NOON)
    assert tick.letters == [] and sum(len(b) for b in tick.batches) == 4


def _write_layout(folder: Path) -> Path:
    """A small letter with an address block in the envelope's window: quick to render 50 times."""
    folder.mkdir()
    (folder / "letter.toml").write_text('subject = "Open letter to {{ recipient.full_name }}"\n')
    (folder / "body.txt").write_text("{{ salutation }},\n\nPlease read our letter.\n")
    (folder / "letter.html").write_text(
        '<html><body><div class="window"><div id="address">'
        "{% for line in recipient.address_block %}{{ line }}<br>{% endfor %}</div>"
        '<div id="address-end"></div></div><p>{{ salutation }},</p></body></html>\n'
    )
    (folder / "letter.css").write_text(
        "@page { size: A4; margin: 20mm }\n.window { position: absolute; left: 5mm; top: 30mm }\n"
    )
    return folder


def test_check_renders_many_letters_in_parallel_as_one_process_would(
    database_url: str, tmp_path: Path
) -> None:
    rows = ["honorific,given_name,family_name,organisation,country,email,language,tags"]
    rows += [
        f"Ms,Anna,Official{i:02d},Parliament,BE,official{i:02d}@parliament.example,en,x"
        for i in range(50)
    ]
    rows.append("Mr,Long,Address,Parliament,BE,long@parliament.example,en,x")
    (tmp_path / "people.csv").write_text("\n".join(rows) + "\n")
    folder = _write_layout(tmp_path / "letter")
    settings = load_settings()
    with db.session_scope(database_url) as session:
        registry.import_file(session, tmp_path / "people.csv", settings=settings)
        long = session.scalar(select(Recipient).where(Recipient.family_name == "Address"))
        assert long is not None
        long.address_lines = [f"Line {n}" for n in range(12)]  # too long for the window
        campaign = campaigns.create_campaign(
            session, name="c", template_dir=folder, sender="S <s@example.org>", to=["tag:x"]
        )
        seen: list[int] = []
        report = messages.check(session, campaign, settings, lambda total: seen.append(total))
        assert len(seen) == 51 and set(seen) == {51}  # one step per recipient, of 51
        assert len(report.problems) == 1
        assert report.problems[0].startswith("Long Address <long@parliament.example>: ")
        assert "envelope window" in report.problems[0]
        kit = messages.load_kit(session, campaign)
        for recipient, _role, spec in report.drafts[::10]:  # the same bytes as rendered here
            alone = messages.letter_for(kit, recipient)
            assert report.letters[recipient.id] == alone
            assert spec.attachments[-1].data == alone.attachment.data
