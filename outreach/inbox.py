"""Reading what comes back: the team's mailbox over IMAP, or files (.eml, mbox, Maildir).

A poll reads the configured folder over TLS (implicit TLS, a verifying context, the CA bundle of
OUTREACH_IMAP_CA_BUNDLE if set), with credentials from the environment. It fetches only the
messages after the highest UID it recorded for that folder and its UIDVALIDITY (`InboxState`),
with BODY.PEEK so that the \\Seen flag of the people who read the same inbox is never touched,
nor ever consulted. Each message is recorded in a transaction of its own together with the new
highest UID: a poll that dies half-way resumes after the last message it recorded. A message seen
again (a copy, a new UIDVALIDITY, an archive imported later) is known by its Message-ID and
counted once. Matched messages are moved to OUTREACH_IMAP_PROCESSED_FOLDER when one is set;
unmatched and malformed ones stay where people see them, and `inbox list` lists them.
"""

from __future__ import annotations

import imaplib
import logging
import mailbox
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from outreach import db, tracking
from outreach.config import Settings
from outreach.errors import ConfigError, InboxError, InputError
from outreach.models import InboundKind, InboundMessage, InboxState, utcnow

log = logging.getLogger("outreach.inbox")

UNMATCHED = (InboundKind.UNMATCHED, InboundKind.MALFORMED)


@dataclass
class PollReport:
    """What a poll or an import did."""

    read: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # recorded messages by kind
    duplicates: int = 0  # read again, already recorded: counted once
    moved: int = 0
    presumed_delivered: int = 0

    @property
    def recorded(self) -> int:
        return sum(self.kinds.values())

    def note(self, inbound: InboundMessage | None) -> None:
        self.read += 1
        if inbound is None:
            self.duplicates += 1
        else:
            self.kinds[inbound.kind] += 1


# --- IMAP -------------------------------------------------------------------------------------


def _quote(folder: str) -> str:
    """An IMAP quoted string (imaplib sends mailbox names as they are given)."""
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapMailbox:
    """One logged-in IMAP connection; a context manager that logs out."""

    def __init__(self, conn: imaplib.IMAP4, where: str) -> None:
        self.conn, self.where = conn, where
        self.capabilities: frozenset[str] = frozenset()

    @classmethod
    def connect(cls, settings: Settings) -> ImapMailbox:
        """Connect over TLS, verifying the server's certificate and name, and log in."""
        if not settings.imap_host or not settings.imap_username:
            raise ConfigError("no mailbox: set OUTREACH_IMAP_HOST and OUTREACH_IMAP_USERNAME")
        where = f"{settings.imap_host}:{settings.imap_port}"
        bundle = settings.imap_ca_bundle
        if bundle is not None and not bundle.is_file():
            raise ConfigError(f"OUTREACH_IMAP_CA_BUNDLE: {bundle} is not a file")
        context = ssl.create_default_context(cafile=str(bundle) if bundle else None)
        try:
            conn = imaplib.IMAP4_SSL(
                settings.imap_host, settings.imap_port, ssl_context=context,
                timeout=settings.imap_timeout,
            )  # fmt: skip
        except (OSError, imaplib.IMAP4.error) as exc:
            raise InboxError(f"IMAP {where}: cannot connect: {exc}") from exc
        box = cls(conn, where)
        box._call(
            "LOGIN", conn.login, settings.imap_username, settings.imap_password.get_secret_value()
        )
        box.capabilities = box._capabilities()
        return box

    def _capabilities(self) -> frozenset[str]:
        """Asked again after login: servers announce MOVE and UIDPLUS to logged-in users."""
        data = self._call("CAPABILITY", self.conn.capability)
        words = bytes(data[0]).decode().upper().split() if data else []
        return frozenset(words)

    def _call(
        self, what: str, method: Callable[..., tuple[str, list[Any]]], *args: Any
    ) -> list[Any]:
        """Run an imaplib command; anything but OK is an InboxError naming the server."""
        try:
            status, data = method(*args)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise InboxError(f"IMAP {self.where}: {what}: {exc}") from exc
        if status != "OK":
            raise InboxError(f"IMAP {self.where}: {what}: {status} {data!r}")
        return list(data)

    def select(self, folder: str) -> int:
        """Open a folder for reading and moving; its UIDVALIDITY."""
        self._call(f"SELECT {folder}", self.conn.select, _quote(folder))
        _, values = self.conn.response("UIDVALIDITY")
        if not values or values[0] is None:
            raise InboxError(f"IMAP {self.where}: {folder} has no UIDVALIDITY")
        return int(values[0])

    def uids_after(self, last: int) -> list[int]:
        """The UIDs above `last`, in order ("n:*" always names the last message: filtered)."""
        data = self._call("UID SEARCH", self.conn.uid, "SEARCH", None, f"UID {last + 1}:*")
        found = (int(u) for chunk in data if chunk for u in bytes(chunk).split())
        return sorted(u for u in found if u > last)

    def has_message_id(self, message_id: str) -> bool:
        """Whether a message of the open folder carries this Message-ID."""
        data = self._call(
            "UID SEARCH HEADER", self.conn.uid, "SEARCH", None, "HEADER", "Message-ID",
            _quote(message_id),
        )  # fmt: skip
        return any(bytes(chunk).split() for chunk in data if chunk)

    def fetch(self, uid: int) -> bytes:
        """The whole message, without setting \\Seen."""
        data = self._call(f"UID FETCH {uid}", self.conn.uid, "FETCH", str(uid), "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2:
                return bytes(item[1])
        raise InboxError(f"IMAP {self.where}: UID {uid} is gone")

    def ensure_folder(self, folder: str) -> None:
        """Create the folder unless it exists (names follow the server's hierarchy separator)."""
        listed = self._call(f"LIST {folder}", self.conn.list, '""', _quote(folder))
        if not any(listed):
            self._call(f"CREATE {folder}", self.conn.create, _quote(folder))

    def move(self, uid: int, folder: str) -> bool:
        """Move a message: MOVE (RFC 6851), else COPY, \\Deleted and UID EXPUNGE (UIDPLUS)."""
        if "MOVE" in self.capabilities:
            self._call(f"UID MOVE {uid}", self.conn.uid, "MOVE", str(uid), _quote(folder))
            return True
        if "UIDPLUS" not in self.capabilities:  # a plain EXPUNGE would take others' deletions
            log.warning("%s: no MOVE nor UIDPLUS: message %s left in place", self.where, uid)
            return False
        self._call(f"UID COPY {uid}", self.conn.uid, "COPY", str(uid), _quote(folder))
        self._call(f"UID STORE {uid}", self.conn.uid, "STORE", str(uid), "+FLAGS", r"(\Deleted)")
        self._call(f"UID EXPUNGE {uid}", self.conn.uid, "EXPUNGE", str(uid))
        return True

    def close(self) -> None:
        try:
            self.conn.logout()
        except (OSError, imaplib.IMAP4.error):
            log.debug("%s: logout failed; the connection is dropped", self.where)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def poll_once(settings: Settings) -> PollReport:
    """One poll of the configured mailbox: the Celery beat task and `inbox poll` call this."""
    sessions = db.session_factory(settings.effective_database_url)
    with ImapMailbox.connect(settings) as box:
        return poll(sessions, box, settings)


def poll(sessions: sessionmaker[Session], box: ImapMailbox, settings: Settings) -> PollReport:
    """Record the folder's new messages one by one, then presume the silent ones delivered."""
    folder, target = settings.imap_folder, settings.imap_processed_folder
    if target:
        box.ensure_folder(target)
    validity = box.select(folder)
    where = f"{settings.imap_username}@{settings.imap_host}/{folder}"  # UIDs are per mailbox
    with sessions.begin() as session:
        state = session.get(InboxState, (where, validity))
        last = state.last_uid if state is not None else 0
    report = PollReport()
    for uid in box.uids_after(last):
        inbound = _record_uid(sessions, box.fetch(uid), settings, where, validity, uid)
        report.note(inbound)
        if target and inbound is not None and inbound.kind not in UNMATCHED:
            report.moved += box.move(uid, target)
    report.presumed_delivered = presume(sessions, settings)
    return report


def _record_uid(
    sessions: sessionmaker[Session], raw: bytes, settings: Settings, folder: str, validity: int,
    uid: int,
) -> InboundMessage | None:  # fmt: skip
    """Record one message and the new highest UID in one transaction."""
    origin = tracking.Origin("imap", folder, validity, uid)
    try:
        with sessions.begin() as session:
            inbound = tracking.record(session, raw, settings, origin)
            _remember(session, folder, validity, uid)
    except IntegrityError:  # another poller took this one at the same moment
        return None
    return inbound


def _remember(session: Session, folder: str, validity: int, uid: int) -> None:
    state = session.get(InboxState, (folder, validity))
    if state is None:
        session.add(InboxState(folder=folder, uidvalidity=validity, last_uid=uid))
    else:
        state.last_uid = max(state.last_uid, uid)


def presume(sessions: sessionmaker[Session], settings: Settings) -> int:
    with sessions.begin() as session:
        return tracking.presume_delivered(session, utcnow(), settings)


# --- files ------------------------------------------------------------------------------------


def read_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of each message in a .eml file, a folder of them, an mbox or a Maildir."""
    if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
        maildir = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(maildir.iterkeys()):
            yield f"{path}:{key}", maildir.get_bytes(key)
    elif path.is_dir():
        for file in sorted(path.rglob("*.eml")):
            yield str(file), file.read_bytes()
    elif not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    elif _is_mbox(path):
        box = mailbox.mbox(path, create=False)
        for index, key in enumerate(box.iterkeys()):
            yield f"{path}:{index + 1}", box.get_bytes(key)
    else:
        yield str(path), path.read_bytes()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(5) == b"From "


def import_path(sessions: sessionmaker[Session], path: Path, settings: Settings) -> PollReport:
    """Record archived messages as a poll does; importing the same archive again adds nothing."""
    report = PollReport()
    for where, raw in read_files(path):
        with sessions.begin() as session:
            report.note(tracking.record(session, raw, settings, tracking.Origin(where)))
    report.presumed_delivered = presume(sessions, settings)
    return report
