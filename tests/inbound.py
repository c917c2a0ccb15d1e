"""What comes back after a campaign, as the common senders write it, for a given delivery.

Each builder returns the bytes of one message in the form a real system produces: Exchange's
non-delivery report (an RFC 3464 report with an HTML notice and text/rfc822-headers), Gmail's
older plain-text notice that quotes the original, qmail's "failure notice", a Postfix delay
report, a human reply, a reply that lost its headers but quotes the letter, an Exchange
out-of-office, an unrelated message and a malformed one. Also: a campaign sent in the database
(the real compose path, no SMTP) for tests whose point is what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import campaigns, deliveries, messages, registry
from outreach.config import Settings
from outreach.models import Campaign, Channel, Delivery, Status, utcnow

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "open_letter"
SENDER = "Open Dialog Foundation <office@odfoundation.example>"


@dataclass(frozen=True)
class Sent:
    """What a test needs of one sent delivery."""

    id: int
    message_id: str
    address: str
    subject: str
    verp: str  # its return path


def send_in_database(session: Session, settings: Settings, name: str = "open-letter") -> Campaign:
    """The model letter's campaign with every email delivery rendered, kept and marked sent."""
    registry.import_file(session, TEMPLATE / "recipients.csv", settings=settings)
    campaign = campaigns.create_campaign(
        session, name=name, template_dir=TEMPLATE, sender=SENDER,
        to=["tag:principal"], cc=["tag:cc"],
    )  # fmt: skip
    campaigns.create_deliveries(session, campaign, settings)
    pending = session.scalars(
        select(Delivery.id).where(
            Delivery.campaign_id == campaign.id, Delivery.channel == Channel.EMAIL
        )
    ).all()
    ids = deliveries.transition_many(session, list(pending), Status.PENDING, Status.QUEUED)
    kit = messages.load_kit(session, campaign)
    for delivery_id in ids:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        spec = messages.draft(kit, delivery.recipient, delivery.message_id, utcnow())
        kept = messages.kept_columns(spec)
        attachments = messages.store_attachments(session, spec.attachments)
        assert deliveries.claim(session, delivery_id, kept=kept, attachments=attachments)
        assert deliveries.mark_sent(session, delivery_id, "250 accepted")
    session.flush()
    return campaign


def sent(session: Session, campaign: Campaign, settings: Settings) -> dict[str, Sent]:
    """The campaign's sent email deliveries by address."""
    from outreach.tracking import return_path

    rows = session.scalars(
        select(Delivery).where(
            Delivery.campaign_id == campaign.id,
            Delivery.channel == Channel.EMAIL,
            Delivery.status == Status.SENT,
        )
    ).all()
    return {
        d.address: Sent(d.id, d.message_id, d.address, d.subject, return_path(d, settings))
        for d in rows
    }


def _crlf(text: str) -> bytes:
    return dedent(text).lstrip("\n").replace("\n", "\r\n").encode()


def exchange_ndr(d: Sent, to: str = "office@odfoundation.example") -> bytes:
    """Exchange Online's "Undeliverable:" report: HTML notice, DSN, returned headers."""
    return _crlf(f"""
        From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@coe.int>
        To: <{to}>
        Date: Thu, 9 Nov 2017 10:12:01 +0000
        Subject: Undeliverable: {d.subject}
        Message-ID: <ndr-7c1f0a@EXCH01.coe.int>
        Auto-Submitted: auto-replied
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status;
        \tboundary="_ex_boundary_"

        --_ex_boundary_
        Content-Type: multipart/alternative; boundary="_ex_alt_"

        --_ex_alt_
        Content-Type: text/plain; charset="us-ascii"

        Delivery has failed to these recipients or groups:

        {d.address}
        The email address you entered couldn't be found.

        --_ex_alt_
        Content-Type: text/html; charset="us-ascii"

        <html><body><p><b><font color="#000066">Your message to {d.address} couldn't be
        delivered.</font></b></p><p>550 5.1.10 RESOLVER.ADR.RecipientNotFound</p></body></html>
        --_ex_alt_--

        --_ex_boundary_
        Content-Type: message/delivery-status

        Reporting-MTA: dns;EXCH01.coe.int
        Received-From-MTA: dns;mail.odfoundation.example
        Arrival-Date: Thu, 9 Nov 2017 10:11:59 +0000

        Final-Recipient: rfc822;{d.address}
        Action: failed
        Status: 5.1.10
        Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found
         by SMTP address lookup

        --_ex_boundary_
        Content-Type: text/rfc822-headers

        From: {SENDER}
        To: {d.address}
        Subject: {d.subject}
        Message-ID: {d.message_id}
        Date: Tue, 7 Nov 2017 09:00:00 +0000

        --_ex_boundary_--
        """)


def gmail_plain(d: Sent, to: str = "office@odfoundation.example") -> bytes:
    """Gmail's older plain-text notice: no report part, the original quoted as text."""
    return _crlf(f"""
        Delivered-To: {to}
        From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
        To: {to}
        Subject: Delivery Status Notification (Failure)
        Date: Thu, 9 Nov 2017 10:15:00 +0000
        Message-ID: <001a113f1ab2-gmail-bounce@google.com>
        Content-Type: text/plain; charset=ISO-8859-1

        This is an automatically generated Delivery Status Notification

        Delivery to the following recipient failed permanently:

             {d.address}

        Technical details of permanent failure:
        Google tried to deliver your message, but it was rejected by the server for the
        recipient domain.

        The error that the other server returned was:
        550 5.1.1 <{d.address}>: Recipient address rejected: User unknown

        ----- Original message -----

        From: {SENDER}
        To: {d.address}
        Subject: {d.subject}
        Message-ID: {d.message_id}
        Date: Tue, 7 Nov 2017 09:00:00 +0000

        Dear ...
        """)


def qmail_failure(d: Sent) -> bytes:
    """qmail's "failure notice": plain text, the returned message below a line."""
    return _crlf(f"""
        From: MAILER-DAEMON@mx.example.net
        To: office@odfoundation.example
        Subject: failure notice
        Date: Thu, 9 Nov 2017 10:20:00 +0000
        Message-ID: <qmail-failure-1@mx.example.net>

        Hi. This is the qmail-send program at mx.example.net.
        I'm afraid I wasn't able to deliver your message to the following addresses.
        This is a permanent error; I've given up. Sorry it didn't work out.

        <{d.address}>:
        Sorry, no mailbox here by that name. (#5.1.1)

        --- Below this line is a copy of the message.

        Message-ID: {d.message_id}
        Subject: {d.subject}
        """)


def postfix_delay(d: Sent) -> bytes:
    """Postfix's delay warning: an RFC 3464 report with Action: delayed."""
    return _crlf(f"""
        From: Mail Delivery System <MAILER-DAEMON@mail.odfoundation.example>
        To: {d.verp}
        Subject: Delayed Mail (still being retried)
        Date: Thu, 9 Nov 2017 14:00:00 +0000
        Message-ID: <20171109140000.A1B2C3.{d.id}@mail.odfoundation.example>
        Auto-Submitted: auto-replied
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status;
        \tboundary="A1B2C3.1510236000/mail.odfoundation.example"

        --A1B2C3.1510236000/mail.odfoundation.example
        Content-Description: Notification
        Content-Type: text/plain; charset=us-ascii

        This is the mail system at host mail.odfoundation.example.

        ####################################################################
        # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
        ####################################################################

        Your message could not be delivered for 4.0 hours.
        It will be retried until it is 5.0 days old.

        --A1B2C3.1510236000/mail.odfoundation.example
        Content-Description: Delivery report
        Content-Type: message/delivery-status

        Reporting-MTA: dns; mail.odfoundation.example
        X-Postfix-Queue-ID: A1B2C3
        X-Postfix-Sender: rfc822; {d.verp}
        Arrival-Date: Thu, 9 Nov 2017 10:00:00 +0000

        Final-Recipient: rfc822; {d.address}
        Original-Recipient: rfc822;{d.address}
        Action: delayed
        Status: 4.4.1
        Diagnostic-Code: X-Postfix; connect to mx.example.net[192.0.2.7]:25: Connection
            timed out
        Will-Retry-Until: Tue, 14 Nov 2017 10:00:00 +0000

        --A1B2C3.1510236000/mail.odfoundation.example--
        """)


def human_reply(d: Sent, name: str = "Private Office") -> bytes:
    return _crlf(f"""
        From: {name} <{d.address}>
        To: {SENDER}
        Subject: Re: {d.subject}
        Date: Mon, 13 Nov 2017 11:30:00 +0100
        Message-ID: <reply-{d.id}@mail.example.int>
        In-Reply-To: {d.message_id}
        References: {d.message_id}
        Content-Type: text/plain; charset=utf-8

        Dear Ms Kozlovska,

        Thank you for your letter. The Secretary General has taken note of your concerns
        and will raise them with the rapporteur.

        Yours sincerely,
        Private Office

        On 7 Nov 2017, at 10:00, Open Dialog Foundation wrote:
        > Dear Mr Jagland,
        > On behalf of the Open Dialog Foundation...
        """)


def headerless_reply(d: Sent) -> bytes:
    """A reply written in another client: no In-Reply-To, no References, the letter quoted."""
    return _crlf(f"""
        From: {d.address}
        To: office@odfoundation.example
        Subject: AW: {d.subject}
        Date: Tue, 14 Nov 2017 08:00:00 +0100
        Message-ID: <forwarded-by-assistant-{d.id}@bundestag.example>
        Content-Type: text/plain; charset=utf-8

        Sehr geehrte Frau Kozlovska,

        vielen Dank für Ihr Schreiben, das wir an den Ausschuss weitergeleitet haben.

        -----Original Message-----
        From: Open Dialog Foundation
        Subject: {d.subject}

        Sehr geehrter Herr Präsident,
        """)


def out_of_office(d: Sent) -> bytes:
    """Exchange's automatic reply: RFC 3834 Auto-Submitted and the Outlook subject."""
    return _crlf(f"""
        From: <{d.address}>
        To: {SENDER}
        Subject: Automatic reply: {d.subject}
        Date: Tue, 7 Nov 2017 09:00:05 +0100
        Message-ID: <ooo-{d.id}@EXCH02.coe.int>
        In-Reply-To: {d.message_id}
        Auto-Submitted: auto-replied
        X-Auto-Response-Suppress: All
        Content-Type: text/plain; charset=utf-8

        I am out of the office until 20 November with limited access to email.
        """)


def unrelated() -> bytes:
    return _crlf("""
        From: Conference Desk <events@example.com>
        To: office@odfoundation.example
        Subject: Invitation: Human Rights Forum 2018
        Date: Wed, 8 Nov 2017 16:00:00 +0000
        Message-ID: <invite-2018@example.com>
        Content-Type: text/plain; charset=utf-8

        You are invited to speak at our forum.
        """)


def malformed() -> bytes:
    return b"\x00\x01\x02 this is no header line\r\n\xff\xfe binary junk \r\n\r\n\x00\x00\r\n"
