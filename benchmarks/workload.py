"""The benchmark's workload, the same bytes every time: N recipients, a ~100 KB PDF, the inputs of
mailmerge (the peer) and one pre-rendered message for smtp-source (the ceiling)."""

from __future__ import annotations

import csv
import hashlib
from datetime import UTC, date, datetime
from pathlib import Path

from outreach.compose import MessageSpec, attachment_from_path, compose, format_address
from outreach.letters import LetterRenderer, build_context, load_template, recipient_view
from outreach.salutations import format_date

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template"
PDF = TEMPLATE / "attachment.pdf"
SENDER = "Coalition for Civic Space <office@civicspace.example>"
LETTER_DATE = date(2024, 3, 1)
PLACE = "Brussels"

COLUMNS = [
    "honorific", "given_name", "family_name", "position", "organisation", "department",
    "address_line1", "address_line2", "address_line3", "city", "postcode", "country", "email",
    "phone", "fax", "language", "salutation", "tags", "notes",
]  # fmt: skip
PARLIAMENTS = [
    ("AT", "Nationalrat", "Wien", "de"), ("BE", "Chambre des représentants", "Bruxelles", "fr"),
    ("DE", "Deutscher Bundestag", "Berlin", "de"), ("FR", "Assemblée nationale", "Paris", "fr"),
    ("IE", "Dáil Éireann", "Dublin", "en"), ("LU", "Chambre des Députés", "Luxembourg", "fr"),
    ("MT", "House of Representatives", "Valletta", "en"), ("NL", "Tweede Kamer", "Den Haag", "en"),
    ("CH", "Nationalrat", "Bern", "de"),
]  # fmt: skip
GIVEN = ["Anna", "Peter", "Maria", "Jan", "Sophie", "Luca", "Eva", "Tomas", "Clara", "Henrik"]
FAMILY = ["Novak", "Schmidt", "Dubois", "Murphy", "Borg", "Janssen", "Weber", "Lambert", "Meier"]


def recipient(i: int) -> dict[str, str]:
    """Recipient number i (from 0), as a CSV row of `outreach recipients import`."""
    country, chamber, city, language = PARLIAMENTS[i % len(PARLIAMENTS)]
    female = i % 2 == 0
    family = f"{FAMILY[i % len(FAMILY)]}-{i:06d}"
    row = dict.fromkeys(COLUMNS, "")
    row.update(
        honorific=("Ms" if female else "Mr"),
        given_name=GIVEN[i % len(GIVEN)],
        family_name=family,
        position="Member of Parliament",
        organisation=chamber,
        address_line1=f"Parliament Street {i % 200 + 1}",
        city=city,
        postcode=f"{1000 + i % 9000}",
        country=country,
        email=f"member{i:06d}@parliament-{country.lower()}.example.org",
        language=language,
        tags="principal",
    )
    return row


def write_recipients(path: Path, n: int) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for i in range(n):
            writer.writerow(recipient(i))
    tmp.rename(path)


def write_pdf(path: Path = PDF, size: int = 100_000) -> None:
    """A one-page PDF with a text page and a ~100 KB binary stream, correct xref offsets."""
    text = b"BT /F1 12 Tf 72 720 Td (Coalition for Civic Space: annex to the open letter) Tj ET"
    noise = hashlib.shake_256(b"outreach benchmark attachment").digest(size - 1200)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /EmbeddedFile /Length %d >>\nstream\n" % len(noise) + noise + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    if not path.exists() or path.read_bytes() != bytes(out):
        path.write_bytes(bytes(out))


def _context(i: int) -> dict:
    template = load_template(TEMPLATE)
    view = recipient_view(recipient(i) | {"address_lines": []})
    return build_context(
        recipient=view,
        campaign={"name": "bench", "sender": SENDER},
        sender=template.sender,
        principals=[],
        copies=[],
        letter_date=LETTER_DATE,
        place=template.place,
    )


def sample_message(path: Path) -> int:
    """Recipient 0's message as outreach composes it, LF line ends (smtp-source -F adds CRLF)."""
    template = load_template(TEMPLATE)
    letter = LetterRenderer(template).render(_context(0))
    spec = MessageSpec(
        message_id="<ceiling-0@civicspace.example>",
        date=datetime(2024, 3, 1, 9, 0, tzinfo=UTC),
        sender=SENDER,
        to=format_address("Ms Anna Novak-000000", recipient(0)["email"]),
        subject=letter.subject,
        text=letter.text,
        attachments=tuple(attachment_from_path(p) for p in template.attachments),
    )
    data = compose(spec)
    path.write_bytes(data.replace(b"\r\n", b"\n"))
    return len(data)


def write_mailmerge(folder: Path, n: int) -> None:
    """mailmerge's template (the same text, its variables as CSV columns), database and server
    configuration; the sink's port is filled in by the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    template = load_template(TEMPLATE)
    body = template.text.replace("recipient.", "")
    for name, value in (("sender.name", template.sender["name"]),
                        ("sender.organisation", template.sender["organisation"]),
                        ("place", template.place)):  # fmt: skip
        body = body.replace("{{ " + name + " }}", value)
    subject = template.subject.replace("recipient.", "")
    (folder / "mailmerge_template.txt").write_text(
        f"TO: {{{{ email }}}}\nSUBJECT: {subject}\nFROM: {SENDER}\nATTACHMENT: {PDF}\n\n{body}",
        encoding="utf-8",
    )
    database = folder / "mailmerge_database.csv"
    if not database.exists():
        columns = ["email", "display_name", "position", "organisation", "city", "salutation",
                   "date"]  # fmt: skip
        with database.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            dates: dict[str, str] = {}
            for i in range(n):
                row = recipient(i)
                view = recipient_view(row | {"address_lines": []})
                lang = view["language"]
                dates.setdefault(lang, format_date(LETTER_DATE, lang))
                values = {c: view[c] for c in columns[:5]}
                writer.writerow({**values, "salutation": view["salutation"], "date": dates[lang]})
