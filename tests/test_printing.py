"""The print pack and posting, on SQLite and PostgreSQL: real PDFs read back with pypdf."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import typer
from pypdf import PdfReader
from sqlalchemy import select
from typer.testing import CliRunner

from outreach import campaigns, config, db, messages, prepare, printing, registry
from outreach.cli_letters import register
from outreach.config import load_settings
from outreach.models import Delivery, Event, utcnow
from outreach.typeset import PdfRenderer
from tests.test_send_pipeline import TEMPLATE

POSTAL = """\
- {honorific: Ms, given_name: Eva, family_name: Post, position: Ombudsperson,
   organisation: "=HYPERLINK(\\"http://evil.example\\")", address_lines: [Rue Haute 1],
   city: Bruxelles, postcode: "1000", country: BE, language: fr, tags: [cc]}
- {honorific: Mr, given_name: Jan, family_name: Brief, organisation: Sejm,
   address_lines: [ul. Wiejska 4], city: Warszawa, postcode: 00-902, country: PL,
   language: pl, tags: [cc]}
"""


@pytest.fixture
def campaign_url(database_url: str, tmp_path: Path) -> str:
    """The model letter's recipients plus two reached only by post, in one campaign."""
    people = tmp_path / "postal.yaml"
    people.write_text(POSTAL, encoding="utf-8")
    settings = load_settings(database_url=database_url)
    with db.session_scope(database_url) as session:
        registry.import_file(session, TEMPLATE / "recipients.csv", settings=settings)
        registry.import_file(session, people, settings=settings)
        campaigns.create_campaign(
            session, name="open-letter", template_dir=TEMPLATE,
            sender="Open Dialog <office@odfoundation.example>",
            to=["tag:principal"], cc=["tag:cc"],
        )  # fmt: skip
    return database_url


def pack(url: str, folder: Path) -> printing.PrintPack:
    """The print pack, with a fax gateway: Gabriel (fax only) goes by fax, not in the pack."""
    settings = load_settings(database_url=url, fax_gateway="{fax}@fax.example.net")
    with db.session_scope(url) as session:
        campaign = campaigns.get_campaign(session, "open-letter")
        return printing.print_pack(session, campaign, settings, folder)


def statuses(url: str) -> dict[str, str]:
    with db.session_scope(url) as session:
        rows = session.scalars(select(Delivery)).all()
        return {d.recipient.family_name or d.recipient.organisation: d.status for d in rows}


def test_print_pack_starts_each_letter_on_an_odd_page(campaign_url: str, tmp_path: Path) -> None:
    result = pack(campaign_url, tmp_path / "out")
    assert [(item.first_page, item.pages) for item in result.letters] == [(1, 3), (5, 3)]
    reader = PdfReader(result.pdf)
    assert len(reader.pages) == 8  # 3 + blank + 3 + blank
    first, second = (reader.pages[i].extract_text() for i in (0, 4))
    assert "Ms Eva Post" in first and "Brief" not in first.split("To:")[0]
    assert "Jan Brief" in second and "Ms Eva Post" not in second.split("To:")[0]
    assert reader.pages[3].extract_text().strip() == ""
    assert reader.pages[7].extract_text().strip() == ""


def test_envelope_csv_is_safe_to_open_in_a_spreadsheet(campaign_url: str, tmp_path: Path) -> None:
    result = pack(campaign_url, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(result.csv.read_text(encoding="utf-8"))))
    assert [row["name"] for row in rows] == ["Ms Eva Post", "Mr Jan Brief"]
    assert rows[0]["address"].startswith("'=HYPERLINK(")  # shown as text, never run
    assert rows[1]["address"].splitlines()[-2:] == ["00-902 Warszawa", "Poland"]
    assert [row["first_page"] for row in rows] == ["1", "5"]
    assert printing.safe_cell("+49 30 1") == "'+49 30 1" and printing.safe_cell("Sejm") == "Sejm"


def test_printed_then_posted_with_events_and_the_letter_kept(
    campaign_url: str, tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = pack(campaign_url, tmp_path / "out")
    after = statuses(campaign_url)
    assert after["Post"] == after["Brief"] == "printed"
    assert after["Jagland"] == "pending"  # email is not printed
    assert pack(campaign_url, tmp_path / "again").letters == []  # nothing printed twice
    with db.session_scope(campaign_url) as session:
        printed = session.scalars(select(Delivery).where(Delivery.status == "printed")).all()
        kept = {d.attachments[0].blob.data for d in printed}
        ids = [d.id for d in printed]
    assert kept == {item.letter.data for item in result.letters}

    app, campaign_app, deliveries_app = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(campaign_app, name="campaign")
    app.add_typer(deliveries_app, name="deliveries")
    register(campaign_app, deliveries_app)
    monkeypatch.setenv("OUTREACH_DATABASE_URL", campaign_url)
    config.get_settings.cache_clear()
    done = CliRunner().invoke(app, ["deliveries", "mark-posted", str(ids[0])])
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(app, ["deliveries", "mark-posted", "--campaign", "open-letter"])
    assert done.exit_code == 0 and "posted: 1" in done.output
    assert statuses(campaign_url)["Post"] == statuses(campaign_url)["Brief"] == "posted"
    with db.session_scope(campaign_url) as session:
        moves = [(e.from_status, e.to_status) for e in session.scalars(select(Event))]
    assert moves.count(("pending", "printed")) == 2 and moves.count(("printed", "posted")) == 2


def test_the_pack_takes_the_letters_the_check_rendered(
    campaign_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(database_url=campaign_url, fax_gateway="{fax}@fax.example.net")
    with db.session_scope(campaign_url) as session:
        campaign = campaigns.get_campaign(session, "open-letter")
        report = messages.check(session, campaign, settings)
        campaigns.schedule(session, campaign, settings, at=utcnow())
        prepare.keep_checked(session, campaign, report.letters)

    def no_layout(*_: object) -> None:
        raise AssertionError("a letter was laid out again")

    monkeypatch.setattr(PdfRenderer, "_render", no_layout)
    result = pack(campaign_url, tmp_path / "out")
    with db.session_scope(campaign_url) as session:
        printed = session.scalars(select(Delivery).where(Delivery.status == "printed")).all()
        kept = {d.letter.data for d in printed if d.letter is not None}
    assert len(result.letters) == 2 and {item.letter.data for item in result.letters} == kept
