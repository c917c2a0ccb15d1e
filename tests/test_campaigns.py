"""Campaigns: who is in one, in which role, and the deliveries created for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from outreach import campaigns, compose, db, registry, sending
from outreach.config import load_settings
from outreach.models import Campaign, Delivery, Recipient, utcnow
from tests.plans import first_plan, registry_rows
from tests.test_registry import FIVE_CSV, write

TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "open_letter"
GATEWAY = "{fax}@fax.example.net"
NEWCOMER = (
    "Mr,Frank-Walter,Steinmeier,President,Bundespräsidialamt,,Spreeweg 1,,,Berlin,10557,"
    "Germany,frank-walter.steinmeier@bundespraesident.de,,,de,,principal,\n"
)


def _campaign(session: sa.orm.Session) -> Campaign:
    """Principals by tag; copies by tag and by an organisation that also holds a principal."""
    return campaigns.create_campaign(
        session, name="open-letter", template_dir=TEMPLATE,
        sender="Open Dialog <office@odfoundation.example>",
        to=["tag:principal"], cc=["tag:cc", "org:council of europe"],
    )  # fmt: skip


def _deliveries(session: sa.orm.Session) -> dict[str, Delivery]:
    """The campaign's deliveries by the recipient's family name (department for an office)."""
    rows = session.execute(sa.select(Delivery, Recipient).join(Recipient).order_by(Delivery.id))
    return {r.family_name or r.department: d for d, r in rows}


@pytest.mark.parametrize(
    ("gateway", "gabriel"),
    [(GATEWAY, ("fax", "493018173402@fax.example.net")), ("", ("post", ""))],
)
def test_one_delivery_per_member_in_its_role_by_its_channel(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    gateway: str, gabriel: tuple[str, str],
) -> None:  # fmt: skip
    settings = load_settings(database_url=database_url, fax_gateway=gateway)
    made: list[str] = []

    def recorded(domain: str) -> str:
        made.append(compose.make_message_id(domain))
        return made[-1]

    monkeypatch.setattr(campaigns, "make_message_id", recorded)
    with db.session_scope(database_url) as session:
        registry.import_file(session, write(tmp_path, "r.csv", FIVE_CSV), settings=settings)
        campaign = _campaign(session)
        assert campaigns.create_deliveries(session, campaign, settings) == 5
        found = _deliveries(session)
        assert {name: (d.role, d.channel, d.address) for name, d in found.items()} == {
            "Jagland": ("to", "email", "Thorbjorn.Jagland@coe.int"),  # a principal, not a copy
            "Schäuble": ("to", "email", "wolfgang.schaeuble@bundestag.de"),
            "Gabriel": ("to", *gabriel),
            "Kyriakides": ("cc", "email", "stella.kyriakides@coe.int"),
            "Büro Fischer": ("cc", "email", "buero.fischer@bundestag.de"),
        }
        assert sorted(d.message_id for d in found.values()) == sorted(made)
        assert all(re.fullmatch(r"<[0-9a-f]{32}@odfoundation\.example>", m) for m in made)
        for d in found.values():
            assert (d.campaign_id, d.status, d.outcome, d.attempts) == (
                campaign.id,
                "pending",
                "",
                0,
            )
            assert d.created_at == d.updated_at and d.sent_at is None and d.headers is None
        # The ORM members and the created rows come from the same selection rule.
        by_members = {
            (m.recipient.id, m.role, campaigns.delivery_channel(m, settings))
            for m in campaigns.members(session, campaign)
        }
        assert by_members == {(d.recipient_id, d.role, d.channel) for d in found.values()}


def test_running_it_again_adds_only_new_members(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=database_url, fax_gateway=GATEWAY)
    path = write(tmp_path, "r.csv", FIVE_CSV)
    with db.session_scope(database_url) as session:
        registry.import_file(session, path, settings=settings)
        campaign = _campaign(session)
        assert campaigns.create_deliveries(session, campaign, settings) == 5
        before = {name: (d.id, d.message_id) for name, d in _deliveries(session).items()}
        assert campaigns.create_deliveries(session, campaign, settings) == 0
    with path.open("a", encoding="utf-8") as file:
        file.write(NEWCOMER)
    with db.session_scope(database_url) as session:
        registry.import_file(session, path, settings=settings)
        campaign = campaigns.get_campaign(session, "open-letter")
        assert campaigns.create_deliveries(session, campaign, settings) == 1
        after = _deliveries(session)
        assert {name: (d.id, d.message_id) for name, d in after.items() if name in before} == before
        newcomer = after["Steinmeier"]
        assert (newcomer.role, newcomer.channel) == ("to", "email")
        assert newcomer.address == "frank-walter.steinmeier@bundespraesident.de"


def test_a_scheduled_campaign_is_sent_on_statistics_of_its_tables(database_url: str) -> None:
    """PostgreSQL plans on statistics, which autovacuum gathers only a minute or more after a
    bulk change. Scheduling analyses the tables the send loop reads: without that, its join of
    a batch's deliveries to their recipients read all 6,000 recipients for 50 of them (a
    sequential scan under a hash join) in every batch."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a choice of PostgreSQL's planner")
    settings = load_settings()
    with db.session_scope(database_url) as session:
        session.execute(sa.insert(Recipient), registry_rows(6000))
        campaign = campaigns.create_campaign(
            session, name="many", template_dir=TEMPLATE,
            sender="Open Dialog <office@odfoundation.example>", to=["tag:principal"],
        )  # fmt: skip
        assert campaigns.schedule(session, campaign, settings, at=utcnow()) == 6000
        batch = list(session.scalars(sa.select(Delivery.id).order_by(Delivery.id).limit(50)))
    with (
        first_plan(database_url, "SELECT deliveries.id") as plans,
        db.session_scope(database_url) as session,
    ):
        loaded = sending._load(session, batch)  # the send loop's own query
    assert [d.id for d in loaded] == batch
    assert "Seq Scan on recipients" not in plans[0], plans[0]
    with db.session_scope(database_url) as session:
        counted = dict(session.execute(sa.text(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('deliveries', 'recipients')"
        )).all())  # fmt: skip
    assert counted == {"deliveries": 6000, "recipients": 6000}
