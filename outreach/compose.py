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
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email import quoprimime
from email.generator import BytesGenerator
from email.headerregistry import (
    Address,
    AddressHeader,
    BaseHeader,
    DateHeader,
    HeaderRegistry,
    MessageIDHeader,
    UnstructuredHeader,
)
from email.message import MIMEPart
from email.policy import SMTP as _SMTP
from email.utils import format_datetime, parsedate_to_datetime
from functools import cached_property, lru_cache
from pathlib import Path

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
    def wire(self) -> bytes:
        """The encoded MIME part as the email package writes it, made once and shared by every
        message that carries it (encoding the 100 KB again per message was most of compose)."""
        check_header("attachment filename", self.filename)
        maintype, _, subtype = self.content_type.partition("/")
        if not maintype or not subtype or any(c in self.content_type for c in " \t\r\n;"):
            raise AttachmentError(f"{self.filename}: bad content type {self.content_type!r}")
        part = MIMEPart(policy=SMTP)
        part.set_content(
            self.data, maintype, subtype, disposition="attachment", filename=self.filename
        )
        buffer = io.BytesIO()
        BytesGenerator(buffer, mangle_from_=False, policy=SMTP).flatten(part)
        return buffer.getvalue()


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
    """A header value parsed once: the same From and Cc recur in every message, and a To that is
    not plain (`_plain_address`) is parsed for the header and again for the envelope. Header
    objects are immutable. Small on purpose: a parsed header weighs kilobytes, and the values
    that recur are used by every message (never the least recent); a larger cache only holds
    past messages' values (4,096 of them were ~40 MB per worker process)."""
    with _unwritable(name, value):
        return SMTP.header_factory(name, value)


@contextmanager
def _unwritable(name: str, value: str) -> Iterator[None]:
    """The email package's own failures on a value it cannot parse or fold (an IndexError on
    "<" as a Message-ID, a UnicodeEncodeError on a non-ASCII one) as a HeaderError naming it."""
    try:
        yield
    except (IndexError, AttributeError, TypeError, ValueError) as exc:
        raise HeaderError(f"{name}: {value!r} cannot be written as a header ({exc})") from exc


def parse_address(name: str, value: str) -> Address:
    """The one address a header value holds, or HeaderError naming the header."""
    check_header(name, value)
    plain = _plain_address(value)
    if plain is not None:
        return plain
    header = _header(name, value)
    addresses = getattr(header, "addresses", ())
    if header.defects or len(addresses) != 1 or not addresses[0].domain:
        raise HeaderError(f"{name}: {value!r} is not one usable email address")
    return addresses[0]


_ATOM = r"[A-Za-z0-9'+_-]+"  # some of RFC 5322's atext: no "=?" of encoded words, no quoting
_PLAIN_ADDRESS = re.compile(
    rf"(?:(?P<name>{_ATOM}(?: {_ATOM})*) <)?"
    rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?(name)>)"
)


def _plain_address(value: str) -> Address | None:
    """The address of a value in the plainest form ("Ms Anna Novak <anna@example.org>", or the
    bare address), read without the email package's parser, the per-message cost of a To: for
    such a value the parser finds no defect, the same one Address, and its text unchanged."""
    match = _PLAIN_ADDRESS.fullmatch(value)
    if match is None:
        return None
    return Address(match["name"] or "", match["local"], match["domain"])


def format_address(name: str, email: str) -> str:
    """One header value for a name and an address, quoting the name where it must be."""
    check_header("display name", name)
    check_header("address", email)
    plain = _plain_address(email)  # what the parser would make of it, without its cost
    try:
        address = (
            Address(name, plain.username, plain.domain)
            if plain is not None and not plain.display_name
            else Address(display_name=name, addr_spec=email)
        )
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
        ("Date", _date(spec.date.replace(microsecond=0), spec.date.tzinfo)),
        ("From", spec.sender),
        ("To", spec.to),
        ("Cc", ", ".join(spec.cc)),
        ("Reply-To", spec.reply_to),
        ("Subject", spec.subject),
        ("Message-ID", spec.message_id),
        *spec.extra_headers,
    ]
    written = [(name, value) for name, value in headers if value]
    _refuse_repeats(written)
    return written


def _refuse_repeats(headers: list[tuple[str, str]]) -> None:
    """A header the standard allows once (an extra Sender or Orig-Date) given more often: the
    email package refused to build such a message (with a ValueError), so compose does too."""
    for name, count in Counter(name.lower() for name, _ in headers).items():
        most = SMTP.header_max_count(name)
        if most is not None and count > most:
            raise HeaderError(f"{name}: at most {most} in a message, given {count}")


# Composition writes the bytes itself, in the order and form of the email package's
# BytesGenerator under the SMTP policy: a part is its headers, an empty line and its body; a
# multipart body is each part after "--boundary", then "--boundary--". Header lines come from
# `_line`, text from `quoprimime.body_encode` as `set_content` calls it, attachments from the
# email package itself (`Attachment.wire`). The pinned corpus in tests/test_compose.py holds
# these bytes to what the email package made before.

CRLF = b"\r\n"


def _line(name: str, value: str) -> bytes:
    """One header as the generator writes it (`policy.fold_binary`), without the email package
    where it would write the value as it is (`_verbatim`): folding is most of its cost. The
    folding writes such a value whole after the name where it fits in the line, else whole on
    the next line where it fits there (it moves the space after the colon along)."""
    if _verbatim(name, value):
        if len(name) + 2 + len(value) <= SMTP.max_line_length:
            return f"{name}: {value}\r\n".encode("ascii")
        return f"{name}:\r\n {value}\r\n".encode("ascii")
    if _wrappable(name, value):
        return _wrapped(name, value)
    return _folded(name, value)


def _wrappable(name: str, value: str) -> bool:
    """Whether the email package folds this value by words alone: unstructured ASCII text (no
    "=?"), words of at most 77 characters between single spaces. A longer word it would
    encode as an encoded word to break it; tabs and runs of spaces it keeps as they are."""
    return (
        value.isascii()
        and "=?" not in value
        and "\t" not in value
        and all(0 < len(word) < SMTP.max_line_length for word in value.split(" "))
        and issubclass(SMTP.header_factory[name], UnstructuredHeader)
    )


def _wrapped(name: str, value: str) -> bytes:
    """The email package's folding of `_wrappable` text: each space and each word goes on the
    line while it fits in 78 columns; a space that does not fit starts the next line, and a
    word that does not fit starts it with the space before it."""
    lines: list[str] = []
    line = f"{name}:"
    for word in value.split(" "):
        if len(line) + 1 <= SMTP.max_line_length:
            line += " "
        else:
            lines.append(line)
            line = " "
        if len(line) + len(word) <= SMTP.max_line_length:
            line += word
        else:
            lines.append(line[:-1])
            line = " " + word
    return "\r\n".join([*lines, line, ""]).encode("ascii")


@lru_cache(maxsize=64)
def _folded(name: str, value: str) -> bytes:
    """The email package's folding of a header: the same From, Cc and content headers recur in
    every message; other values that fold (non-ASCII names and subjects) are each folded once."""
    with _unwritable(name, value):
        return SMTP.fold_binary(name, _header(name, value))


_MESSAGE_ID = re.compile(r"<[0-9A-Za-z]+(?:[.-][0-9A-Za-z]+)*@[0-9A-Za-z]+(?:[.-][0-9A-Za-z]+)*>")


def _verbatim(name: str, value: str) -> bool:
    """Whether the email package writes this header's value as it is, in one piece. It folds
    a parsed value's text, and keeps it in one piece when it is ASCII and fits in a line
    (with a space before it); the text is the value itself for unstructured headers, an
    address that parses without defects and a plain Message-ID, but not where the parser
    decodes encoded words ("=?") or drops what follows a Message-ID, and for Date it is the
    value formatted again."""
    if not value.isascii() or "=?" in value or len(value) + 1 > SMTP.max_line_length:
        return False
    kind = SMTP.header_factory[name]
    if issubclass(kind, UnstructuredHeader):
        return True
    if issubclass(kind, AddressHeader):
        return _plain_address(value) is not None or not _header(name, value).defects
    if issubclass(kind, MessageIDHeader):
        return _MESSAGE_ID.fullmatch(value) is not None
    if issubclass(kind, DateHeader):
        return _date_verbatim(value)
    return False


@lru_cache(maxsize=8)
def _date(at: datetime, zone: tzinfo | None) -> str:
    """A Date header's value, formatted once a second (`format_datetime` writes it to the
    second; once a message it was a tenth of compose). The zone is in the key: one instant in
    two zones is one datetime to `==`, but two Dates."""
    return format_datetime(at)


@lru_cache(maxsize=8)
def _date_verbatim(value: str) -> bool:
    """Whether a Date formats back to itself; asked once a second, not once a message (the
    messages of one second share their Date)."""
    try:
        return format_datetime(parsedate_to_datetime(value)) == value
    except ValueError:
        return False


def _text_part(text: str, subtype: str) -> bytes:
    """What `set_content(text, subtype=subtype, cte="quoted-printable")` makes, written."""
    lines = text.encode("utf-8").splitlines()  # as email.contentmanager does for this cte
    if lines:  # as quoprimime.body_encode("\n".join(lines) + "\n"), a line at a time
        encoded = b"".join(_quoted_line(line) for line in lines)
    else:
        encoded = quoprimime.body_encode("\n", SMTP.max_line_length).encode("ascii")
    return _text_headers(subtype) + CRLF + encoded.replace(b"\n", b"\r\n")


@lru_cache(maxsize=4096)
def _quoted_line(line: bytes) -> bytes:
    """One line of a text part, quoted-printable, with its "\\n": `quoprimime.body_encode`
    encodes each line on its own (no line break is left unquoted in a line of UTF-8 bytes read
    as Latin-1 but its end), so the paragraphs that every recipient's letter shares are encoded
    once per worker, not once per message (half of `compose`'s time, in pure Python)."""
    body = line.decode("latin-1") + "\n"
    return quoprimime.body_encode(body, SMTP.max_line_length).encode("ascii")


@lru_cache(maxsize=8)
def _text_headers(subtype: str) -> bytes:
    """The headers `set_content` gives a quoted-printable UTF-8 text part of this subtype."""
    part = MIMEPart(policy=SMTP)
    part.set_content("", subtype=subtype, cte="quoted-printable")
    return _written_headers(part)


def _multipart(subtype: str, parts: list[list[bytes]], boundary: str) -> list[bytes]:
    """A multipart's Content-Type, then each part (in pieces) after its delimiter, then the
    close."""
    delimiter = b"--" + boundary.encode("ascii")
    header = _multipart_header(subtype).replace(_BOUNDARY_SHAPE.encode("ascii"), delimiter[2:])
    pieces = [header + CRLF]
    for part in parts:
        pieces.append(delimiter + CRLF)
        pieces.extend(part)
        pieces.append(CRLF)
    pieces.append(delimiter + b"--" + CRLF)
    return pieces


@lru_cache(maxsize=4)
def _multipart_header(subtype: str) -> bytes:
    """The Content-Type header of a multipart, folded once for a boundary of the shape every
    boundary has (`_boundary`): the folding depends on its length and kind of characters only."""
    container = MIMEPart(policy=SMTP)
    container.add_header("Content-Type", f"multipart/{subtype}", boundary=_BOUNDARY_SHAPE)
    return _written_headers(container)


def _written_headers(part: MIMEPart) -> bytes:
    """A part's headers as the generator writes them: each folded by the policy."""
    return b"".join(SMTP.fold_binary(name, value) for name, value in part.raw_items())


def _boundary(message_id: str, index: int) -> str:
    """A boundary fixed by the message: "=_" never occurs in quoted-printable or base64."""
    digest = hashlib.sha256(f"{message_id}/{index}".encode()).hexdigest()[:32]
    return f"=_outreach_{digest}"


_BOUNDARY_SHAPE = _boundary("", 0)


def _body(spec: MessageSpec) -> list[bytes]:
    """The body with its content headers, in pieces: the text, its HTML alternative, the
    attachments."""
    body = [_text_part(spec.text, "plain")]
    if spec.html is not None:
        alternatives = [body, [_text_part(spec.html, "html")]]
        body = _multipart("alternative", alternatives, _boundary(spec.message_id, 1))
    if spec.attachments:
        parts = [body, *([a.wire] for a in spec.attachments)]
        body = _multipart("mixed", parts, _boundary(spec.message_id, 0))
    return body


def compose(spec: MessageSpec) -> bytes:
    """The message's bytes, CRLF line ends, ready for SMTP DATA; the same for the same spec
    (HeaderError, AttachmentError)."""
    return b"".join(compose_pieces(spec))


def compose_pieces(spec: MessageSpec) -> list[bytes]:
    """`compose`'s bytes in the pieces they join from, each attachment's part the attachment's
    own `wire` (not a copy), what lies between joined: for the send loop, where joining the
    benchmark's 140 KB message, twice, was a fifth of composing it."""
    headers = [*_headers(spec), ("MIME-Version", "1.0")]
    body = _body(spec)  # before the header lines: a bad attachment is refused before a header
    pieces: list[bytes] = []
    small = [_line(name, value) for name, value in headers]
    for piece in body:
        if len(piece) < _SHARED:
            small.append(piece)
            continue
        if small:
            pieces.append(b"".join(small))
            small = []
        pieces.append(piece)
    if small:
        pieces.append(b"".join(small))
    return pieces


_SHARED = 16_384  # a piece this long is kept apart rather than copied into its neighbours
