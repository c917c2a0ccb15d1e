"""Template folders, the sandbox, error places, recipient views and the open_letter template."""

from __future__ import annotations

import csv
import textwrap
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from outreach.errors import AttachmentError, TemplateError
from outreach.letters import (
    LetterRenderer,
    RenderedLetter,
    build_context,
    load_template,
    recipient_view,
    template_problems,
)

OPEN_LETTER = Path(__file__).resolve().parent.parent / "templates" / "open_letter"
LETTER_DATE = date(2017, 11, 7)

JAGLAND = {
    "honorific": "Mr",
    "given_name": "Thorbjørn",
    "family_name": "Jagland",
    "position": "Secretary General of the Council of Europe",
    "organisation": "Council of Europe",
    "address_lines": ["Avenue de l'Europe"],
    "city": "Strasbourg Cedex",
    "postcode": "67075",
    "country": "FR",
    "email": "thorbjorn.jagland@coe.int",
    "language": "en",
    "tags": ["principal"],
}


def make_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "letter"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def context(recipient: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    view = recipient_view(recipient)
    values: dict[str, Any] = {
        "recipient": view,
        "campaign": {"name": "test"},
        "sender": {},
        "principals": [view],
        "copies": [],
        "letter_date": LETTER_DATE,
        "place": "",
    }
    return build_context(**(values | overrides))


def render(
    tmp_path: Path, body: str, recipient: dict[str, Any] = JAGLAND, **files: str
) -> RenderedLetter:
    folder = make_folder(
        tmp_path, {"letter.toml": 'subject = "Hello"\n', "body.txt": body, **files}
    )
    return LetterRenderer(load_template(folder)).render(context(recipient))


# The folder


def test_load_template_reads_everything(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        {
            "letter.toml": """\
                subject = "Open letter to {{ recipient.display_name }}"
                place = "Warsaw"
                attachments = ["letter.pdf", "annex/list.csv"]
                [sender]
                name = "Lyudmyla Kozlovska"
                signature = ["Lyudmyla Kozlovska", "President"]
            """,
            "body.txt": "{{ salutation }},\n",
            "body.html": "<p>{{ salutation }},</p>\n",
        },
    )
    (folder / "letter.pdf").write_bytes(b"%PDF-1.4\n")
    (folder / "annex").mkdir()
    (folder / "annex" / "list.csv").write_text("a,b\n")
    template = load_template(folder)
    assert template.place == "Warsaw"
    assert template.attachments == (folder / "letter.pdf", folder / "annex" / "list.csv")
    assert template.sender["signature"] == ["Lyudmyla Kozlovska", "President"]
    letter = LetterRenderer(template).render(context(JAGLAND))
    assert letter.subject == "Open letter to Mr Thorbjørn Jagland"
    assert letter.text == "Dear Mr Jagland,\n"
    assert letter.html == "<p>Dear Mr Jagland,</p>\n"


def test_html_is_optional(tmp_path: Path) -> None:
    assert render(tmp_path, "Text\n").html is None


@pytest.mark.parametrize("missing", ["letter.toml", "body.txt"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    files = {"letter.toml": 'subject = "x"\n', "body.txt": "x\n"}
    del files[missing]
    folder = make_folder(tmp_path, files)
    with pytest.raises(TemplateError, match=f"{missing}: missing"):
        load_template(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="no such template folder"):
        load_template(tmp_path / "nowhere")


def test_malformed_toml_gives_file_and_line(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path, {"letter.toml": 'subject = "x"\nplace = Warsaw\n', "body.txt": "x\n"}
    )
    with pytest.raises(TemplateError, match=r"letter\.toml: .*line 2"):
        load_template(folder)


def test_settings_problems_are_all_reported(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        {"letter.toml": 'subjet = "x"\nplace = 3\nattachments = ["gone.pdf"]\n', "body.txt": "x"},
    )
    problems = template_problems(folder)
    assert any("unknown key 'subjet'" in p for p in problems)
    assert any("'place' must be a str" in p for p in problems)
    assert any("'subject' is missing" in p for p in problems)


# Attachments


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the minister")
    return secret


def attachment_folder(tmp_path: Path, names: list[str]) -> Path:
    listed = ", ".join(f'"{n}"' for n in names)
    return make_folder(
        tmp_path, {"letter.toml": f'subject = "x"\nattachments = [{listed}]\n', "body.txt": "x\n"}
    )


def test_missing_attachment(tmp_path: Path) -> None:
    folder = attachment_folder(tmp_path, ["letter.pdf"])
    with pytest.raises(AttachmentError, match="'letter.pdf' not found"):
        load_template(folder)


@pytest.mark.parametrize("name", ["../secret.txt", "sub/../../secret.txt", "{outside}"])
def test_attachment_outside_the_folder(tmp_path: Path, outside: Path, name: str) -> None:
    folder = attachment_folder(tmp_path, [name.format(outside=outside)])
    with pytest.raises(AttachmentError, match="outside the template folder"):
        load_template(folder)


def test_attachment_symlink_out_of_the_folder(tmp_path: Path, outside: Path) -> None:
    folder = attachment_folder(tmp_path, ["annex.txt"])
    (folder / "annex.txt").symlink_to(outside)
    with pytest.raises(AttachmentError, match="'annex.txt' is outside the template folder"):
        load_template(folder)


def test_attachment_symlink_within_the_folder_is_fine(tmp_path: Path) -> None:
    folder = attachment_folder(tmp_path, ["current.pdf"])
    (folder / "v2.pdf").write_bytes(b"%PDF")
    (folder / "current.pdf").symlink_to(folder / "v2.pdf")
    assert load_template(folder).attachments == (folder / "v2.pdf",)


def test_template_problems_lists_every_problem(tmp_path: Path, outside: Path) -> None:
    folder = attachment_folder(tmp_path, ["a.pdf", "../secret.txt", "b.pdf", "ok.pdf"])
    (folder / "ok.pdf").write_bytes(b"%PDF")
    (folder / "body.html").write_text("{% if %}\n")
    problems = template_problems(folder)
    assert len(problems) == 4
    assert "'a.pdf' not found" in problems[0]
    assert "'../secret.txt' is outside" in problems[1]
    assert "'b.pdf' not found" in problems[2]
    assert problems[3].startswith("body.html line 1:")


def test_template_problems_empty_for_a_good_folder() -> None:
    assert template_problems(OPEN_LETTER) == []


# Errors carry the file and the line


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path, {"letter.toml": 'subject = "x"\n', "body.txt": "Hello\n\n{% for x %}\n"}
    )
    with pytest.raises(TemplateError, match=r"^body\.txt line 3: "):
        LetterRenderer(load_template(folder))


def test_undefined_variable_names_file_and_line(tmp_path: Path) -> None:
    body = """\
        {{ salutation }},

        {{ recipient.nickname }}
    """
    with pytest.raises(TemplateError, match=r"^body\.txt line 3: .*'nickname'"):
        render(tmp_path, body)


def test_undefined_in_html_names_the_html_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"^body\.html line 2: 'signature' is undefined"):
        render(tmp_path, "x\n", **{"body.html": "<p>\n{{ signature }}</p>\n"})


def test_python_error_in_a_template_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"^body\.txt line 2: ZeroDivisionError"):
        render(tmp_path, "x\n{{ 1 / 0 }}\n")


def test_subject_must_be_one_line(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        {"letter.toml": 'subject = "Letter\\n{{ recipient.family_name }}"\n', "body.txt": "x"},
    )
    with pytest.raises(TemplateError, match="subject: renders to more than one line"):
        LetterRenderer(load_template(folder)).render(context(JAGLAND))


def test_subject_is_stripped(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, {"letter.toml": 'subject = "  Letter  "\n', "body.txt": "x"})
    assert LetterRenderer(load_template(folder)).render(context(JAGLAND)).subject == "Letter"


# The sandbox


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__.__mro__[1].__subclasses__()",
        "recipient.__class__",
        "recipient.tags.append('x')",
        "recipient.update(email='attacker@example.org')",
        "cycler.__init__.__globals__",
        "lipsum.__globals__",
    ],
)
def test_sandbox_refuses_escapes(tmp_path: Path, expression: str) -> None:
    folder = make_folder(
        tmp_path, {"letter.toml": 'subject = "x"\n', "body.txt": f"{{{{ {expression} }}}}\n"}
    )
    renderer = LetterRenderer(load_template(folder))
    ctx = context(JAGLAND)
    with pytest.raises(TemplateError, match=r"^body\.txt line 1: .*unsafe"):
        renderer.render(ctx)
    assert ctx["recipient"] == recipient_view(JAGLAND)  # the data given was not changed


def test_include_is_not_available(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"^body\.txt line 1: "):
        render(tmp_path, '{% include "../../etc/passwd" %}\n')


def test_html_escapes_recipient_data_text_does_not(tmp_path: Path) -> None:
    evil = JAGLAND | {"given_name": "<script>alert(1)</script>", "address_lines": ["<b>1</b>"]}
    html = '<p>{{ recipient.given_name }}</p>{{ recipient.address_block|join("<br>"|safe) }}'
    letter = render(tmp_path, "{{ recipient.given_name }}\n", evil, **{"body.html": html})
    assert letter.text == "<script>alert(1)</script>\n"
    assert letter.html is not None and "<script>" not in letter.html
    assert "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>" in letter.html
    assert "&lt;b&gt;1&lt;/b&gt;<br>" in letter.html  # join escapes items, keeps the safe <br>


# Recipient views and the context


def test_recipient_view_of_a_person() -> None:
    view = recipient_view(
        {
            **JAGLAND,
            "department": "Private Office",
            "phone": "+33388412000",
            "address_lines": ["Avenue de l'Europe", "Bâtiment A"],
        }
    )
    assert view["display_name"] == "Mr Thorbjørn Jagland"
    assert view["full_name"] == "Thorbjørn Jagland"
    assert view["is_person"] is True
    assert view["salutation"] == "Dear Mr Jagland"
    assert view["country_name"] == "France"
    assert view["phone"] == "+33 3 88 41 20 00"
    assert view["fax"] == ""
    assert view["address_block"] == [
        "Council of Europe",
        "Private Office",
        "Secretary General of the Council of Europe",
        "Mr Thorbjørn Jagland",
        "Avenue de l'Europe",
        "Bâtiment A",
        "67075 Strasbourg Cedex",
        "France",
    ]


def test_recipient_view_of_an_office_in_german() -> None:
    view = recipient_view(
        {
            "organisation": "Deutscher Bundestag",
            "department": "Büro Axel E. Fischer",
            "address_lines": ["Platz der Republik 1"],
            "city": "Berlin",
            "postcode": "11011",
            "country": "de",
            "email": None,
            "language": "de",
        }
    )
    assert view["is_person"] is False
    assert view["display_name"] == ""
    assert view["email"] == ""
    assert view["salutation"] == "Sehr geehrte Damen und Herren"
    assert view["address_block"] == [
        "Deutscher Bundestag",
        "Büro Axel E. Fischer",
        "Platz der Republik 1",
        "11011 Berlin",
        "Deutschland",
    ]


def test_recipient_view_city_before_postcode_where_usual() -> None:
    view = recipient_view({"family_name": "Doe", "city": "London", "postcode": "SW1A 0AA",
                           "country": "GB"})  # fmt: skip
    assert view["address_block"][-2:] == ["London SW1A 0AA", "United Kingdom"]


def test_recipient_view_of_an_object_with_override() -> None:
    class Row:
        honorific, given_name, family_name = "Mr", "Thorbjørn", "Jagland"
        position = "Secretary General"
        language = "fr"
        salutation = "Monsieur le Secrétaire général"
        address_lines = ["Avenue de l'Europe"]
        tags = ["principal"]

    view = recipient_view(Row())
    assert view["salutation"] == "Monsieur le Secrétaire général"
    assert view["organisation"] == ""
    assert type(view["address_lines"]) is list and view["tags"] == ["principal"]


def test_context_keys_and_date_in_the_recipients_language() -> None:
    schaeuble = recipient_view(
        {"honorific": "Mr", "given_name": "Wolfgang", "family_name": "Schäuble",
         "position": "Präsident des Deutschen Bundestages", "language": "de"}
    )  # fmt: skip
    ctx = build_context(
        recipient=schaeuble,
        campaign={"name": "kz-2017"},
        sender={"name": "Lyudmyla Kozlovska"},
        principals=[],
        copies=[schaeuble],
        letter_date=LETTER_DATE,
        place="Warsaw",
    )
    assert set(ctx) == {
        "recipient", "salutation", "principals", "copies", "date", "place", "sender", "campaign",
        "original",
    }  # fmt: skip
    assert ctx["date"] == "7. November 2017"
    assert ctx["salutation"] == "Sehr geehrter Herr Präsident"


# The open_letter template with the model letter's recipients


def model_recipients() -> list[dict[str, Any]]:
    return yaml.safe_load((OPEN_LETTER / "recipients.yaml").read_text(encoding="utf-8"))


def test_csv_and_yaml_hold_the_same_recipients() -> None:
    with (OPEN_LETTER / "recipients.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [
            "honorific", "given_name", "family_name", "position", "organisation", "department",
            "address_line1", "address_line2", "address_line3", "city", "postcode", "country",
            "email", "phone", "fax", "language", "salutation", "tags", "notes",
        ]  # fmt: skip
        rows = list(reader)
    for row, expected in zip(rows, model_recipients(), strict=True):
        lines = [row.pop(f"address_line{i}") for i in (1, 2, 3)]
        tags = row.pop("tags")
        assert [line for line in lines if line] == expected.pop("address_lines")
        assert [t for t in tags.split(";") if t] == expected.pop("tags")
        assert row == expected


SALUTATIONS = {
    "Jagland": "Dear Mr Jagland",
    "Kyriakides": "Dear Ms Kyriakides",
    "Schäuble": "Sehr geehrter Herr Präsident",
    "Gabriel": "Sehr geehrter Herr Bundesminister",
    "": "Sehr geehrte Damen und Herren",
}


@pytest.mark.parametrize("family_name", list(SALUTATIONS))
def test_open_letter_for_each_model_recipient(family_name: str) -> None:
    template = load_template(OPEN_LETTER)
    views = [recipient_view(r) for r in model_recipients()]
    view = next(v for v in views if v["family_name"] == family_name)
    ctx = build_context(
        recipient=view,
        campaign={"name": "kazakhstan-2017"},
        sender=template.sender,
        principals=[v for v in views if "principal" in v["tags"]],
        copies=[v for v in views if "cc" in v["tags"]],
        letter_date=LETTER_DATE,
        place=template.place,
    )
    letter = LetterRenderer(template).render(ctx)
    html = letter.html or ""
    assert letter.text.startswith(f"{SALUTATIONS[family_name]},\n")
    assert f"<p>{SALUTATIONS[family_name]},</p>" in html
    assert "Kazakhstan" in letter.subject
    to_block = (
        "To:\nCouncil of Europe\nSecretary General of the Council of Europe\nMr Thorbjørn Jagland\n"
    )
    assert to_block in letter.text
    assert "Ms Stella Kyriakides" in letter.text
    assert f"Warsaw, {ctx['date']}" in letter.text
    assert "OPEN DIALOG\n\nBrussels Office\n155 Rue de la Loi," in letter.text
    assert "Yours sincerely,\n\nLyudmyla Kozlovska\nPresident of the Open Dialog Foundation\n" in (
        letter.text
    )
    assert "[3] http://assembly.coe.int/" in letter.text
    cc_block = letter.text.split("\nCC:\n", 1)[1]
    for copy in ("Mr Wolfgang Schäuble", "Mr Sigmar Gabriel", "Büro Axel E. Fischer"):
        assert copy in cc_block
        assert copy in html
    assert "Werderscher Markt 1\n10117 Berlin\nDeutschland\nTel.: +49 30 18170\n" in cc_block
    assert "Email: axel.fischer@bundestag.de" in cc_block
    assert 'href="http://assembly.coe.int/nw/xml/News/News-View-EN.asp?newsid=6846&amp;lang=2"' in (
        html
    )


def test_open_letter_attachment_is_a_pdf() -> None:
    (pdf,) = load_template(OPEN_LETTER).attachments
    data = pdf.read_bytes()
    assert pdf.name == "Open-letter-2017-11-07.pdf"
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    assert b"/Type /Catalog" in data and b"KAZAKHSTANI DICTATOR" in data
