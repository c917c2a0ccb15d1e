"""From a message's parts to its bytes, the same bytes every time.

Composition is deterministic: multipart boundaries come from the Message-ID, text is always
quoted-printable and attachments base64, so a message rebuilt later from its kept parts is
byte for byte the one that was sent. Every header value is checked first: no CR, LF or NUL
(header injection), and addresses must parse as one address each.

    [multipart/mixed]            only with attachments
      [multipart/alternative]    only with HTML
        text/plain
        text/html
      attachment ...
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.generator import BytesGenerator
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message, MIMEPart
from email.policy import SMTP as _SMTP
from email.utils import format_datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from outreach.errors import AttachmentError, HeaderError

# Headers compose writes itself; extra headers may not repeat them.
OWN_HEADERS = frozenset(
    h.lower()
    for h in (
        "Date", "From", "To", "Cc", "Bcc", "Reply-To", "Subject", "Message-ID", "MIME-Version",
        "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
    )
)  # fmt: skip


class _Registry(HeaderRegistry):
    """The email package's header factory makes a new class at every lookup, for each header
    parsed and again for each header set on a message (to read its maximum count): here the
    same class per header name, made once."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(key)
        return made


SMTP = _SMTP.clone(header_factory=_Registry())  # the standard SMTP policy in all else


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def part(self) -> MIMEPart:
        """The encoded MIME part, built and serialised once, shared by every message that
        carries it: its base64 is written out as the bytes kept on it (see `_Generator`)."""
        check_header("attachment filename", self.filename)
        maintype, _, subtype = self.content_type.partition("/")
        if not maintype or not subtype or any(c in self.content_type for c in " \t\r\n;"):
            raise AttachmentError(f"{self.filename}: bad content type {self.content_type!r}")
        part = _SerialisedPart(policy=SMTP)
        part.set_content(
            self.data, maintype, subtype, disposition="attachment", filename=self.filename
        )
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False, policy=SMTP).flatten(part, linesep="\r\n")
        part.wire = buffer.getvalue()
        return part


class _SerialisedPart(MIMEPart):
    """A part that will not change, with its bytes as BytesGenerator writes them under SMTP."""

    wire: bytes = b""


def _policy_key(policy: Any) -> tuple[Any, ...]:
    return (policy.linesep, policy.max_line_length, policy.cte_type, policy.utf8)


_SMTP_KEY = _policy_key(SMTP)


class _Generator(BytesGenerator):
    """BytesGenerator that writes a `_SerialisedPart` from its kept bytes instead of encoding
    its 100 KB again: the same bytes, since they were made by the same generator and policy."""

    def flatten(self, msg: Message, unixfrom: bool = False, linesep: str | None = None) -> None:
        if isinstance(msg, _SerialisedPart) and msg.wire and not unixfrom:
            policy = self.policy if self.policy is not None else msg.policy
            if linesep is not None:
                policy = policy.clone(linesep=linesep)
            if not self.maxheaderlen and _policy_key(policy) == _SMTP_KEY:
                self.write(msg.wire)  # BytesGenerator.write takes bytes as they are
                return
        super().flatten(msg, unixfrom=unixfrom, linesep=linesep)

    def write(self, s: Any) -> None:
        if isinstance(s, bytes):
            self._fp.write(s)
        else:
            super().write(s)


def attachment_from_path(path: Path) -> Attachment:
    """Read a file as an attachment, its type guessed from its name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AttachmentError(f"{path}: {exc.strerror or exc}") from exc
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Attachment(filename=path.name, content_type=content_type, data=data)


@dataclass(frozen=True)
class MessageSpec:
    """Everything a message is made of. The envelope (return path, Bcc) is not in it."""

    message_id: str
    date: datetime  # timezone-aware
    sender: str  # "Name <address>"
    to: str
    subject: str
    text: str
    cc: tuple[str, ...] = ()
    reply_to: str = ""
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    extra_headers: tuple[tuple[str, str], ...] = ()


def check_header(name: str, value: str) -> None:
    """Refuse a value that would end the header early and start another (header injection)."""
    if any(c in value for c in "\r\n\0"):
        raise HeaderError(f"{name}: line break or NUL in {value!r}")


@lru_cache(maxsize=64)
def _header(name: str, value: str) -> BaseHeader:
    """A header value parsed once: the same From and Cc recur in every message, and each To is
    parsed for the header and again for the envelope. Header objects are immutable. Small on
    purpose: a parsed header weighs kilobytes, and the values that recur are used by every
    message (never the least recent); a larger cache only holds past messages' To, Subject,
    Date and Message-ID (4,096 of them were ~40 MB per worker process)."""
    return SMTP.header_factory(name, value)


def parse_address(name: str, value: str) -> Address:
    """The one address a header value holds, or HeaderError naming the header."""
    check_header(name, value)
    header = _header(name, value)
    addresses = getattr(header, "addresses", ())
    if header.defects or len(addresses) != 1 or not addresses[0].domain:
        raise HeaderError(f"{name}: {value!r} is not one usable email address")
    return addresses[0]


def format_address(name: str, email: str) -> str:
    """One header value for a name and an address, quoting the name where it must be."""
    check_header("display name", name)
    check_header("address", email)
    try:
        address = Address(display_name=name, addr_spec=email)
    except (ValueError, IndexError) as exc:  # the parser's errors for a bad or empty addr-spec
        raise HeaderError(f"{email!r} is not a usable email address") from exc
    if not address.domain:
        raise HeaderError(f"{email!r} is not a usable email address")
    return str(address)


def make_message_id(domain: str) -> str:
    """A new, unique Message-ID: "<uuid4hex@domain>"."""
    if not domain or any(c in domain for c in "<>@ \t\r\n\0"):
        raise HeaderError(f"Message-ID: {domain!r} is not a domain")
    return f"<{uuid.uuid4().hex}@{domain}>"


def envelope_recipients(spec: MessageSpec, bcc: Iterable[str] = ()) -> list[str]:
    """The bare addresses for RCPT TO: To, Cc and Bcc, each once (case-insensitively)."""
    seen: dict[str, str] = {}
    headers = [("To", spec.to), *(("Cc", v) for v in spec.cc), *(("Bcc", v) for v in bcc)]
    for header, value in headers:
        address = parse_address(header, value).addr_spec
        seen.setdefault(address.lower(), address)
    return list(seen.values())


def _headers(spec: MessageSpec) -> list[tuple[str, str]]:
    """The top-level headers in order, each checked."""
    if spec.date.tzinfo is None:
        raise HeaderError(f"Date: {spec.date.isoformat()} has no timezone")
    for name, value in [("From", spec.sender), ("To", spec.to), *(("Cc", v) for v in spec.cc)]:
        parse_address(name, value)
    if spec.reply_to:
        parse_address("Reply-To", spec.reply_to)
    check_header("Subject", spec.subject)
    check_header("Message-ID", spec.message_id)
    for name, value in spec.extra_headers:
        if not name.isascii() or not name.replace("-", "").isalnum() or name.lower() in OWN_HEADERS:
            raise HeaderError(f"{name!r} cannot be an extra header")
        check_header(name, value)
    headers = [
        ("Date", format_datetime(spec.date)),
        ("From", spec.sender),
        ("To", spec.to),
        ("Cc", ", ".join(spec.cc)),
        ("Reply-To", spec.reply_to),
        ("Subject", spec.subject),
        ("Message-ID", spec.message_id),
        *spec.extra_headers,
    ]
    return [(name, value) for name, value in headers if value]


def _text_part(text: str, subtype: str) -> MIMEPart:
    """What `set_content(text, subtype=subtype, cte="quoted-printable")` makes, the same bytes
    without parsing the same three header values again for every part."""
    part = MIMEPart(policy=SMTP)
    for name, value in _text_headers(subtype):
        part.set_raw(name, value)  # parsed header objects, immutable, shared
    lines = text.encode("utf-8").splitlines()  # as email.contentmanager does for this cte
    body = (b"\n".join(lines) + b"\n").decode("latin-1")
    part.set_payload(quoprimime.body_encode(body, SMTP.max_line_length))
    return part


@lru_cache(maxsize=8)
def _text_headers(subtype: str) -> tuple[tuple[str, Any], ...]:
    """The headers `set_content` gives a quoted-printable UTF-8 text part of this subtype."""
    part = MIMEPart(policy=SMTP)
    part.set_content("", subtype=subtype, cte="quoted-printable")
    return tuple(part.raw_items())


def _multipart(subtype: str, parts: list[MIMEPart], boundary: str) -> MIMEPart:
    container = MIMEPart(policy=SMTP)
    container.add_header("Content-Type", f"multipart/{subtype}", boundary=boundary)
    container.set_payload(parts)
    return container


def _boundary(message_id: str, index: int) -> str:
    """A boundary fixed by the message: "=_" never occurs in quoted-printable or base64."""
    digest = hashlib.sha256(f"{message_id}/{index}".encode()).hexdigest()[:32]
    return f"=_outreach_{digest}"


def build_message(spec: MessageSpec) -> EmailMessage:
    """The message as an EmailMessage (HeaderError, AttachmentError)."""
    message = EmailMessage(policy=SMTP)
    for name, value in _headers(spec):
        message[name] = _header(name, value)  # parsed once: the policy stores it as it is
    message["MIME-Version"] = "1.0"
    body = _text_part(spec.text, "plain")
    if spec.html is not None:
        alternatives = [body, _text_part(spec.html, "html")]
        body = _multipart("alternative", alternatives, _boundary(spec.message_id, 1))
    if spec.attachments:
        parts = [body, *(a.part for a in spec.attachments)]
        body = _multipart("mixed", parts, _boundary(spec.message_id, 0))
    for name, value in body.items():  # the body's content headers go on the message itself
        message[name] = value
    message.set_payload(body.get_payload())
    return message


def compose(spec: MessageSpec) -> bytes:
    """The message's bytes, CRLF line ends, ready for SMTP DATA; the same for the same spec."""
    buffer = io.BytesIO()
    _Generator(buffer, mangle_from_=False, policy=SMTP).flatten(build_message(spec))
    return buffer.getvalue()
