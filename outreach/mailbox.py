"""A safe place to try it: a local SMTP server that keeps every message in a Maildir.

`outreach mailbox serve` listens on 127.0.0.1 and stores each message byte for byte as it arrived
(so it can be compared with what was sent), one file per message in new/; nothing leaves this
machine. The envelope is not kept: the headers say who a message was for.
"""

from __future__ import annotations

import logging
import mailbox
import re
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from outreach.config import get_settings

log = logging.getLogger("outreach.mailbox")

DEFAULT_PORT = 2525


class LocalController(Controller):
    """aiosmtpd's threaded Controller that also takes port 0: the system picks a free port,
    and `.port` tells which once started (no race between finding a port and binding it)."""

    def _trigger_server(self) -> None:
        # start() calls this once the listener is bound and before it connects to it.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class MaildirHandler:
    """aiosmtpd handler: store the DATA bytes exactly as received, one Maildir file each."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        try:
            key = self.maildir.add(content)  # bytes are written as they are on POSIX
        except OSError as exc:
            log.error("cannot store a message from %s: %s", envelope.mail_from, exc)
            return "451 4.3.0 Cannot store the message now"
        log.info("stored %s (%d bytes) for %s", key, len(content), ", ".join(envelope.rcpt_tos))
        return "250 OK"


def serve(
    host: str, port: int, maildir: Path, *, tls_context: ssl.SSLContext | None = None
) -> LocalController:
    """Start the mailbox in a thread (port 0: any free port); call `.stop()` when done.
    With a TLS context the server offers STARTTLS."""
    controller = LocalController(
        MaildirHandler(maildir),
        hostname=host,
        port=port,
        server_hostname="localhost",  # not socket.getfqdn(), a DNS lookup per connection
        decode_data=False,
        enable_SMTPUTF8=True,
        tls_context=tls_context,
    )
    controller.start()
    return controller


def run_forever(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    maildir: Path | None = None,
    *,
    tls_context: ssl.SSLContext | None = None,
) -> None:
    """Serve until Ctrl-C, saying where it listens and where messages go (by default the
    folder mailbox in OUTREACH_HOME)."""
    maildir = maildir or get_settings().home / "mailbox"
    controller = serve(host, port, maildir, tls_context=tls_context)
    print(f"mailbox listening on {host}:{controller.port}, keeping messages in {maildir}")
    print("Ctrl-C stops it; `outreach mailbox list` shows what arrived")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


@dataclass(frozen=True)
class MailSummary:
    date: datetime  # when it arrived, local time
    sender: str
    to: str
    subject: str
    size: int
    path: Path


def list_messages(maildir: Path) -> list[MailSummary]:
    """Every message in the Maildir (new/ and cur/), in the order they arrived."""
    paths = [
        path
        for sub in ("new", "cur")
        if (maildir / sub).is_dir()
        for path in (maildir / sub).iterdir()
        if path.is_file() and not path.name.startswith(".")
    ]
    return sorted((_summary(path) for path in paths), key=lambda m: (m.date, m.path.name))


def _summary(path: Path) -> MailSummary:
    with path.open("rb") as fp:
        headers = BytesHeaderParser(policy=default_policy).parse(fp)
    stat = path.stat()
    return MailSummary(
        date=datetime.fromtimestamp(_arrival(path.name, stat.st_mtime), tz=UTC).astimezone(),
        sender=str(headers.get("From", "")),
        to=str(headers.get("To", "")),
        subject=str(headers.get("Subject", "")),
        size=stat.st_size,
        path=path,
    )


_KEY_TIME = re.compile(r"(\d+)\.M(\d+)P")


def _arrival(name: str, mtime: float) -> float:
    """Python's Maildir names begin "<seconds>.M<microseconds>P", finer than a file's mtime."""
    match = _KEY_TIME.match(name)
    return int(match[1]) + int(match[2]) / 1e6 if match else mtime
