"""Fax through an email gateway: the address from the number, the delivery, the message."""

from __future__ import annotations

import email
import email.policy
from datetime import date
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from outreach import campaigns, db, messages, registry
from outreach.compose import compose
from outreach.config import load_settings
from outreach.errors import ConfigError
from outreach.fax import fax_address
from outreach.models import Channel, Delivery, utcnow
from tests.smtpd import RecordingServer
from tests.test_send_pipeline import TEMPLATE, create, letter_env, outreach, parsed  # noqa: F401

GATEWAY = "{fax}@fax.example.net"


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [("{fax}@fax.example.net", "493018173402@fax.example.net"),
     ("{e164}@fax.example.net", "+493018173402@fax.example.net")],
)  # fmt: skip
def test_gateway_address_from_the_e164_number(gateway: str, expected: str) -> None:
    assert fax_address("+493018173402", load_settings(fax_gateway=gateway)) == expected


@pytest.mark.parametrize("gateway", ["fax.example.net", "{fax}", "{fax}@", "{number}@x.example"])
def test_a_gateway_that_gives_no_address_is_a_config_error(gateway: str) -> None:
    with pytest.raises(ConfigError, match="OUTREACH_FAX_GATEWAY"):
        fax_address("+493018173402", load_settings(fax_gateway=gateway))


def test_fax_only_recipient_gets_the_pdf_at_the_gateway(database_url: str) -> None:
    settings = load_settings(database_url=database_url, fax_gateway=GATEWAY)
    with db.session_scope(database_url) as session:
        registry.import_file(session, TEMPLATE / "recipients.csv", settings=settings)
        campaign = campaigns.create_campaign(
            session, name="open-letter", template_dir=TEMPLATE,
            sender="Open Dialog <office@odfoundation.example>",
            to=["tag:principal"], cc=["tag:cc"], letter_date=date(2017, 11, 7),
        )  # fmt: skip
        campaigns.create_deliveries(session, campaign, settings)
        fax = session.scalars(select(Delivery).where(Delivery.channel == Channel.FAX)).one()
        assert fax.recipient.family_name == "Gabriel"
        assert fax.address == "493018173402@fax.example.net"
        kit = messages.load_kit(session, campaign)
        spec = messages.draft(
            kit, fax.recipient, fax.message_id, utcnow(), channel=Channel.FAX, address=fax.address
        )
        letter = messages.letter_for(kit, fax.recipient).attachment
    message = email.message_from_bytes(compose(spec), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"].addresses[0].addr_spec == "493018173402@fax.example.net"
    (attached,) = list(message.iter_attachments())  # the letter alone is faxed
    assert attached.get_filename() == "Open-letter-Gabriel-2017-11-07.pdf"
    assert attached.get_content() == letter.data


def test_without_a_gateway_a_fax_only_recipient_is_reached_by_post(database_url: str) -> None:
    settings = load_settings(database_url=database_url)
    with db.session_scope(database_url) as session:
        registry.import_file(session, TEMPLATE / "recipients.csv", settings=settings)
        campaign = campaigns.create_campaign(
            session, name="open-letter", template_dir=TEMPLATE,
            sender="Open Dialog <office@odfoundation.example>", to=["tag:principal"],
            cc=["tag:cc"],
        )  # fmt: skip
        campaigns.create_deliveries(session, campaign, settings)
        (post,) = session.scalars(select(Delivery).where(Delivery.channel != Channel.EMAIL))
        assert (post.channel, post.recipient.family_name) == ("post", "Gabriel")


def test_the_fax_goes_through_the_gateway_by_smtp_like_an_email(
    letter_env: dict[str, str],  # noqa: F811 (the fixture, imported above)
    smtp_server: RecordingServer,
    database_url: str,
) -> None:
    env = {**letter_env, "OUTREACH_FAX_GATEWAY": GATEWAY}
    create(env)
    outreach(env, "campaign", "send", "open-letter", "--yes")
    faxed = [r for r in smtp_server.messages if r.rcpt_tos == ["493018173402@fax.example.net"]]
    assert len(faxed) == 1
    (attached,) = list(parsed(faxed[0].data).iter_attachments())
    assert attached.get_filename() == "Open-letter-Gabriel-2017-11-07.pdf"
    with db.session_scope(database_url) as session:
        fax = session.scalars(select(Delivery).where(Delivery.channel == Channel.FAX)).one()
        assert fax.status == "sent"
