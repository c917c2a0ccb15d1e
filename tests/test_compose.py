"""Composition: structure, encodings of non-ASCII names, determinism, header checks."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import hashlib
import io
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from email.generator import BytesGenerator
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from pathlib import Path

import pytest

from outreach.compose import (
    Attachment,
    MessageSpec,
    attachment_from_path,
    check_header,
    compose,
    compose_pieces,
    envelope_recipients,
    format_address,
    make_message_id,
)
from outreach.errors import AttachmentError, HeaderError

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 400 + b"\n%%EOF\n"


def spec(**changes: object) -> MessageSpec:
    base = MessageSpec(
        message_id="<2f1c@odfoundation.eu>",
        date=datetime(2017, 11, 7, 9, 30, tzinfo=timezone(timedelta(hours=1))),
        sender=format_address("Open Dialog Foundation", "office@odfoundation.eu"),
        to=format_address("Mr Thorbjørn Jagland", "thorbjorn.jagland@coe.int"),
        cc=(format_address("Wolfgang Schäuble", "wolfgang.schaeuble@bundestag.de"),),
        reply_to="replies@odfoundation.eu",
        subject="Offener Brief an den Präsidenten des Bundestages",
        text="Sehr geehrter Herr Präsident,\n\nText.\n",
        html="<p>Sehr geehrter Herr Präsident,</p>\n",
        attachments=(Attachment("Präsident-Brief 2017.pdf", "application/pdf", PDF),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(part: MIMEPart | None) -> str:
    """A text part's content with the wire's CRLF line ends read back as "\\n"."""
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def test_headers_decode_to_the_original_strings() -> None:
    data = compose(spec())
    assert data.isascii()  # non-ASCII only ever encoded
    message = parse(data)
    assert message["From"] == "Open Dialog Foundation <office@odfoundation.eu>"
    assert message["To"] == "Mr Thorbjørn Jagland <thorbjorn.jagland@coe.int>"
    assert message["To"].addresses[0].display_name == "Mr Thorbjørn Jagland"
    assert message["Cc"] == "Wolfgang Schäuble <wolfgang.schaeuble@bundestag.de>"
    assert message["Reply-To"] == "replies@odfoundation.eu"
    assert message["Subject"] == "Offener Brief an den Präsidenten des Bundestages"
    assert message["Message-ID"] == "<2f1c@odfoundation.eu>"
    assert message["Date"].datetime == spec().date
    assert message["MIME-Version"] == "1.0"
    assert b"=?utf-8?" in data  # RFC 2047 encoded words


def test_structure_and_content_types() -> None:
    message = parse(compose(spec()))
    assert [part.get_content_type() for part in message.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    assert text_of(message.get_body(("plain",))) == "Sehr geehrter Herr Präsident,\n\nText.\n"
    assert text_of(message.get_body(("html",))) == "<p>Sehr geehrter Herr Präsident,</p>\n"


def test_attachment_bytes_and_rfc2231_filename() -> None:
    data = compose(spec())
    (attachment,) = parse(data).iter_attachments()
    assert attachment.get_filename() == "Präsident-Brief 2017.pdf"
    assert attachment.get_content_disposition() == "attachment"
    assert hashlib.sha256(attachment.get_content()).hexdigest() == spec().attachments[0].sha256
    assert b"filename*=utf-8''Pr%C3%A4sident-Brief%202017.pdf" in data


def test_text_only_and_without_html() -> None:
    plain = parse(compose(spec(html=None, attachments=())))
    assert plain.get_content_type() == "text/plain"
    assert text_of(plain) == "Sehr geehrter Herr Präsident,\n\nText.\n"
    mixed = parse(compose(spec(html=None)))
    assert [p.get_content_type() for p in mixed.walk()] == [
        "multipart/mixed",
        "text/plain",
        "application/pdf",
    ]
    alternative = parse(compose(spec(attachments=())))
    assert alternative.get_content_type() == "multipart/alternative"


def test_deterministic_bytes() -> None:
    first = compose(spec())
    again = compose(spec())  # a new spec, new attachment objects
    assert first == again
    rebuilt = spec(attachments=(Attachment("Präsident-Brief 2017.pdf", "application/pdf", PDF),))
    assert compose(rebuilt) == first
    boundaries = set(re.findall(rb'boundary="([^"]+)"', first))
    assert len(boundaries) == 2 and all(b.startswith(b"=_outreach_") for b in boundaries)
    assert compose(spec(message_id="<other@odfoundation.eu>")) != first


# The bytes of a varied corpus, pinned: a change to composition (a faster path, a Python
# upgrade) must not change what a message sent before it rebuilds to (`deliveries show --eml`).
# Computed with the email package's own encoders before any faster path was written.
CORPUS_SHA256 = "560014e7f11c9f9dc6e786166ca5602e40f308d443b5f163b03bda9d9cac9819"
# fmt: off
NAMES = ["Jean Dupont", "Thorbjørn Jagland", "Zoë O'Brien-Smith", "王小明", 'Dr. A. "Ace" Cole',
         "Müller, Hans", "Ελένη Παπαδοπούλου", "x" * 90, "Łukasz Żółć", "José María Aznar López"]
WORDS = ["letter", "Präsident", "naïve", "=", "equals=sign", "tab\there", "€100", "日本語", "ok.",
         "a" * 30, "—", "résumé", "==", "=3D", "end "]
LINES = ["", ".", ".starts with a dot", "From the start", "trailing space ", "trailing tab\t",
         "x" * 75, "y" * 76, "z" * 77, "w" * 160, "=" * 80, "é" * 40, "a=b " * 30,
         "line with\r\ncrlf inside", "cr\ronly", "ends with equals=", " leading space",
         "mix ä ö ü ß " * 9, "\tindented", "..", "=20", "a" * 74 + " ", "b" * 75 + "\t"]
# fmt: on


def varied_spec(r: random.Random, i: int) -> MessageSpec:
    """One of the corpus: names, subjects and bodies that exercise quoting, encoded words,
    folding, quoted-printable soft breaks, trailing white space, dots, CR and CRLF."""
    text = "\n".join(r.choice(LINES) for _ in range(r.randint(0, 40)))
    text += r.choice(["", "\n", "\r\n", " ", "\n\n"])
    html = None
    if r.random() < 0.4:
        html = "<p>" + "</p>\n<p>".join(r.choices(LINES + WORDS, k=r.randint(1, 30))) + "</p>"
    attachments: tuple[Attachment, ...] = ()
    if r.random() < 0.5:
        data = bytes(r.getrandbits(8) for _ in range(r.randint(0, 3000)))
        filename = r.choice(["a.pdf", "Brief ä.pdf", "notes.txt", "x" * 80 + ".pdf"])
        kind = r.choice(["application/pdf", "text/plain", "application/octet-stream"])
        attachments = (Attachment(filename, kind, data),)
    tz = timezone(timedelta(minutes=r.choice([0, 60, -300, 330])))
    cc = [format_address(r.choice(NAMES), f"cc{j}@example.org") for j in range(r.randint(0, 3))]
    thread = (("In-Reply-To", "<first@example.org>"), ("References", "<first@example.org>"))
    return MessageSpec(
        message_id=f"<{i:05d}.{r.getrandbits(32):08x}@example.org>",
        date=datetime(2026, 1, 1, tzinfo=tz) + timedelta(seconds=r.randint(0, 10**8)),
        sender=format_address(r.choice(["Open Dialog", "Fondation é", ""]), "office@example.org"),
        to=format_address(r.choice(NAMES), f"person{i}@example.org"),
        cc=tuple(cc),
        reply_to=r.choice(["", "replies@example.org"]),
        subject=" ".join(r.choice(WORDS) for _ in range(r.randint(1, 25))),
        text=text,
        html=html,
        attachments=attachments,
        extra_headers=r.choice([(), thread]),
    )


def test_a_varied_corpus_composes_to_the_same_bytes_as_ever() -> None:
    r = random.Random(5)
    digest = hashlib.sha256()
    for i in range(400):
        digest.update(compose(varied_spec(r, i)))
    assert digest.hexdigest() == CORPUS_SHA256


def reference(s: MessageSpec) -> bytes:
    """The message as the email package builds and writes it, as compose did before it wrote
    the bytes itself: header values parsed and folded, text by `set_content`, the generator."""
    policy = email.policy.SMTP
    message = EmailMessage(policy=policy)
    headers = [
        ("Date", format_datetime(s.date)), ("From", s.sender), ("To", s.to),
        ("Cc", ", ".join(s.cc)), ("Reply-To", s.reply_to), ("Subject", s.subject),
        ("Message-ID", s.message_id), *s.extra_headers,
    ]  # fmt: skip
    for name, value in headers:
        if value:
            message[name] = value
    message["MIME-Version"] = "1.0"

    def multipart(subtype: str, parts: list[MIMEPart], index: int) -> MIMEPart:
        digest = hashlib.sha256(f"{s.message_id}/{index}".encode()).hexdigest()[:32]
        container = MIMEPart(policy=policy)
        container.add_header(
            "Content-Type", f"multipart/{subtype}", boundary=f"=_outreach_{digest}"
        )
        container.set_payload(parts)
        return container

    body = MIMEPart(policy=policy)
    body.set_content(s.text, subtype="plain", cte="quoted-printable")
    if s.html is not None:
        html = MIMEPart(policy=policy)
        html.set_content(s.html, subtype="html", cte="quoted-printable")
        body = multipart("alternative", [body, html], 1)
    if s.attachments:
        parts = [body]
        for a in s.attachments:
            parts.append(MIMEPart(policy=policy))
            maintype, _, subtype = a.content_type.partition("/")
            parts[-1].set_content(
                a.data, maintype, subtype, disposition="attachment", filename=a.filename
            )
        body = multipart("mixed", parts, 0)
    for name, value in body.items():
        message[name] = value
    message.set_payload(body.get_payload())
    buffer = io.BytesIO()
    BytesGenerator(buffer, mangle_from_=False, policy=policy).flatten(message)
    return buffer.getvalue()


# fmt: off
PLAIN_NAMES = ["Ms Anna Novak-000123", "Mr Jan O'Brien", "x", "Dr A B C D E F G H", "a" * 70]
SUBJECTS = ["Open letter to Ms Anna Novak-000123: protect the freedom of assembly in Bruxelles",
            "Short", "x" * 69, "x" * 70, "z" * 77, "z" * 78, "y" * 100, "two  spaces", " lead",
            "trail ", "tab\tin",
            "=?utf-8?q?not_an_encoded_word_here?=", "a =? b", "Grüße", "", "(comment) [x]"]
# fmt: on


def random_spec(r: random.Random, i: int) -> MessageSpec:
    """A spec whose header values are near the edges of what compose writes itself: plain and
    quoted names, lengths around the line's 78, words too long to wrap, encoded-word
    look-alikes, odd time zones."""
    s = varied_spec(r, i)
    name = r.choice(NAMES + PLAIN_NAMES + [""])
    local = r.choice(["person", "a.b", "a+b", "o'hara", '"a b"', "x" * 60])
    to = r.choice([format_address(name, f"{local}@example.org"), f"{local}@münchen.de"])
    words = " ".join("w" * r.randint(1, 80) for _ in range(r.randint(1, 9)))  # wrapped or not
    subject = r.choice([*SUBJECTS, s.subject, words])
    tz = timezone(timedelta(minutes=r.randint(-1439, 1439)))
    domain = r.choice(["example.org", "x" * 60 + ".org"])
    ids = [f"<{r.getrandbits(128):032x}@{domain}>" for _ in range(9)]  # make_message_id's form
    thread = (("In-Reply-To", ids[0]), ("References", " ".join(ids[: r.randint(1, 9)])))
    extra = r.choice([(), thread, (("X-Campaign", subject),), (("Sender", to),)])
    message_id = r.choice([ids[0], s.message_id, "<a@b> trailing", "<a.b-c@d>"])
    return dataclasses.replace(
        s, to=to, subject=subject, date=s.date.astimezone(tz), extra_headers=extra,
        message_id=message_id, sender=r.choice([s.sender, to]),
    )  # fmt: skip


def test_compose_writes_what_the_email_package_writes() -> None:
    r = random.Random(11)
    for i in range(300):
        s = random_spec(r, i)
        assert compose(s) == reference(s), s


def test_any_text_is_quoted_as_the_email_package_quotes_it() -> None:
    """compose quotes a text a line at a time (and keeps the lines every letter shares): the
    bytes must be those of `set_content` for any text, whatever its line breaks, long lines,
    trailing blanks and characters that are line breaks to Python but not to MIME."""
    r = random.Random(17)
    pieces = ["a", " ", "\t", "=", ".", "é", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "x" * 80,
              "ü" * 30, "\n", "\r\n", "\r", "w "]  # fmt: skip
    for i in range(400):
        text = "".join(r.choice(pieces) for _ in range(r.randrange(0, 30)))
        html = "".join(r.choice(pieces) for _ in range(r.randrange(0, 30)))
        s = dataclasses.replace(varied_spec(r, i), text=text, html=r.choice([None, html]))
        assert compose(s) == reference(s), (text, html)


def test_crlf_line_ends_and_short_lines() -> None:
    data = compose(spec(text="x" * 500 + "\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_a_shared_attachment_part_serves_many_messages() -> None:
    shared = Attachment("letter.pdf", "application/pdf", PDF)
    one = compose(spec(attachments=(shared,), message_id="<1@x.org>"))
    two = compose(spec(attachments=(shared,), message_id="<2@x.org>"))
    assert one != two
    for data in (one, two):
        (attachment,) = parse(data).iter_attachments()
        assert attachment.get_content() == PDF
    pieces = compose_pieces(spec(attachments=(shared,), message_id="<1@x.org>"))
    assert b"".join(pieces) == one
    assert any(piece is shared.wire for piece in pieces)  # handed over as it is, not copied


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "Letter\r\nBcc: everyone@example.org"},
        {"subject": "Letter\nX: y"},
        {"subject": "Letter\0"},
        {"to": "Mr Jagland\r\nBcc: x@example.org <thorbjorn.jagland@coe.int>"},
        {"sender": "Open Dialog\n <office@odfoundation.eu>"},
        {"cc": ("a@example.org\r\nBcc: b@example.org",)},
        {"reply_to": "x@example.org\n"},
        {"message_id": "<1@x.org>\r\nBcc: b@example.org"},
        {"extra_headers": (("X-Campaign", "kz\r\nBcc: b@example.org"),)},
    ],
)
def test_line_breaks_in_headers_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(HeaderError, match="line break or NUL"):
        compose(spec(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"to": "Jagland"},
        {"to": "a@example.org, b@example.org"},
        {"to": ""},
        {"sender": "Open Dialog Foundation"},
        {"cc": ("nobody",)},
        {"reply_to": "@"},
    ],
)
def test_unusable_addresses_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(HeaderError, match="not one usable email address"):
        compose(spec(**changes))


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"to": "a@"}, "To"),  # the email package's parser: IndexError
        ({"message_id": "<"}, "Message-ID"),  # IndexError
        ({"message_id": "<été@example.org>"}, "Message-ID"),  # folding: UnicodeEncodeError
    ],
)
def test_values_the_email_package_cannot_write_are_header_errors(
    changes: dict[str, object], name: str
) -> None:
    with pytest.raises(HeaderError, match=f"^{name}: .*"):
        compose(spec(**changes))


def test_naive_date_is_refused() -> None:
    with pytest.raises(HeaderError, match="Date: .* no timezone"):
        compose(spec(date=datetime(2017, 11, 7, 9, 30)))


def test_extra_headers_are_added_but_cannot_replace_ours() -> None:
    message = parse(compose(spec(extra_headers=(("X-Outreach-Campaign", "kazakhstan-2017"),))))
    assert message["X-Outreach-Campaign"] == "kazakhstan-2017"
    for name in ("Subject", "bcc", "X Bad", "Ünïcode"):
        with pytest.raises(HeaderError, match="cannot be an extra header"):
            compose(spec(extra_headers=((name, "x"),)))


def test_check_header_names_header_and_value() -> None:
    check_header("Subject", "Präsident")
    with pytest.raises(HeaderError, match=r"^Subject: line break or NUL in 'a\\nb'$"):
        check_header("Subject", "a\nb")


def test_format_address() -> None:
    assert format_address("Mr Thorbjørn Jagland", "thorbjorn.jagland@coe.int") == (
        "Mr Thorbjørn Jagland <thorbjorn.jagland@coe.int>"
    )
    assert format_address("Jagland, Thorbjørn", "t@coe.int") == '"Jagland, Thorbjørn" <t@coe.int>'
    assert format_address("", "t@coe.int") == "t@coe.int"
    for name, address in [("x", ""), ("x", "no-at-sign"), ("x\ny", "t@coe.int"), ("x", "a@b\r\n")]:
        with pytest.raises(HeaderError):
            format_address(name, address)


def test_envelope_recipients_bare_and_once() -> None:
    recipients = envelope_recipients(
        spec(),
        [
            "archive@odfoundation.eu",
            "Thorbjorn.Jagland@COE.int",
            "Archive <ARCHIVE@odfoundation.eu>",
        ],
    )
    assert recipients == [
        "thorbjorn.jagland@coe.int",
        "wolfgang.schaeuble@bundestag.de",
        "archive@odfoundation.eu",
    ]


def test_make_message_id() -> None:
    first, second = make_message_id("odfoundation.eu"), make_message_id("odfoundation.eu")
    assert re.fullmatch(r"<[0-9a-f]{32}@odfoundation\.eu>", first)
    assert first != second
    for domain in ("", "a b", "x@y", "x>\r\n"):
        with pytest.raises(HeaderError):
            make_message_id(domain)


def test_attachment_from_path(tmp_path: Path) -> None:
    (tmp_path / "Brief.pdf").write_bytes(PDF)
    (tmp_path / "data.unknownext").write_bytes(b"\0\1")
    pdf = attachment_from_path(tmp_path / "Brief.pdf")
    assert (pdf.filename, pdf.content_type, pdf.data) == ("Brief.pdf", "application/pdf", PDF)
    assert pdf.sha256 == hashlib.sha256(PDF).hexdigest()
    assert attachment_from_path(tmp_path / "data.unknownext").content_type == (
        "application/octet-stream"
    )
    with pytest.raises(AttachmentError, match="gone.pdf"):
        attachment_from_path(tmp_path / "gone.pdf")


def test_text_attachment_and_bad_content_type() -> None:
    csv = Attachment("list.csv", "text/csv", "Name;Stadt\nSchäuble;Berlin\n".encode())
    (part,) = parse(compose(spec(attachments=(csv,)))).iter_attachments()
    assert part.get_content_type() == "text/csv"
    assert part.get_payload(decode=True) == csv.data
    with pytest.raises(AttachmentError, match="bad content type"):
        compose(spec(attachments=(Attachment("x", "pdf", b""),)))
    with pytest.raises(HeaderError):
        compose(spec(attachments=(Attachment("x\r\n.pdf", "application/pdf", b""),)))


def test_date_header_in_utc_stays_the_same_instant() -> None:
    when = datetime(2017, 11, 7, 8, 30, tzinfo=UTC)
    assert parse(compose(spec(date=when)))["Date"].datetime == when


def test_each_message_has_the_date_of_its_own_zone_to_the_second() -> None:
    """The Date is formatted once a second: the same instant in another zone is written in
    that zone, and a message of the next second has its own."""
    paris = datetime(2017, 11, 7, 9, 30, 0, 250_000, tzinfo=timezone(timedelta(hours=1)))
    dates = [
        parse(compose(spec(date=when)))["Date"]
        for when in (paris, paris.astimezone(UTC), paris + timedelta(microseconds=800_000))
    ]
    assert dates == [
        "Tue, 07 Nov 2017 09:30:00 +0100",
        "Tue, 07 Nov 2017 08:30:00 +0000",
        "Tue, 07 Nov 2017 09:30:01 +0100",
    ]
