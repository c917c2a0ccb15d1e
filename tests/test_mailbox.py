"""The local mailbox: what it receives is on disk byte for byte, and listed in arrival order."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from outreach.mailbox import LocalController, list_messages, serve


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[tuple[LocalController, Path]]:
    maildir = tmp_path / "mailbox"
    controller = serve("127.0.0.1", 0, maildir)
    try:
        yield controller, maildir
    finally:
        controller.stop()


def letter(to: str, subject: str, body: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "Open Dialog <office@odfoundation.example>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message.as_bytes()


def test_messages_kept_byte_for_byte_and_listed(mailbox: tuple[LocalController, Path]) -> None:
    controller, maildir = mailbox
    first = letter("minister@gov.example", "Zażółć gęślą jaźń: list otwarty", "Szanowny Panie,\n")
    second = letter("secretary@gov.example", "Second letter", ".a dot first\nünïcödé body\n")
    with smtplib.SMTP("127.0.0.1", controller.port, timeout=5) as client:
        client.sendmail("office@odfoundation.example", ["minister@gov.example"], first)
        client.sendmail("office@odfoundation.example", ["secretary@gov.example"], second)

    listed = list_messages(maildir)

    assert [m.subject for m in listed] == ["Zażółć gęślą jaźń: list otwarty", "Second letter"]
    assert [m.to for m in listed] == ["minister@gov.example", "secretary@gov.example"]
    assert listed[0].sender == "Open Dialog <office@odfoundation.example>"
    assert [m.path.read_bytes() for m in listed] == [first, second]
    assert [m.size for m in listed] == [len(first), len(second)]
    assert listed[0].date <= listed[1].date


def test_an_empty_or_missing_mailbox_lists_nothing(tmp_path: Path) -> None:
    assert list_messages(tmp_path / "nowhere") == []
