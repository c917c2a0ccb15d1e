"""The registry: reading, validating and importing recipient files, and finding recipients."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from outreach import registry
from outreach.config import Settings
from outreach.db import session_scope
from outreach.errors import InputError, NotFound
from outreach.models import Recipient
from outreach.registry import ImportFailed, ImportReport, RawRow

SETTINGS = Settings(check_deliverability=False, smtp_utf8=False)

# The model letter's five recipients, with the example files' full header.
FIVE_CSV = """\
    honorific,given_name,family_name,position,organisation,department,address_line1,address_line2,address_line3,city,postcode,country,email,phone,fax,language,salutation,tags,notes
    Mr,Thorbjørn,Jagland,Secretary General,Council of Europe,,Avenue de l'Europe,,,Strasbourg Cedex,67075,France,Thorbjorn.Jagland@coe.int,+33 (0)3 88 41 20 00,,en,Dear Secretary General,principal;coe,
    Ms,Stella,Kyriakides,President,Council of Europe,Parliamentary Assembly,Avenue de l'Europe,,,Strasbourg Cedex,67075,FR,stella.kyriakides@coe.int,,,en,,CC; coe,
    Dr.,Wolfgang,Schäuble,President of the Bundestag,Deutscher Bundestag,,Platz der Republik 1,,,Berlin,11011,Germany,wolfgang.schaeuble@bundestag.de,+49 (0) 30-227-76744,,de,,principal;bundestag;Bürgerrechte,
    ,,,,Deutscher Bundestag,Büro Fischer,Platz der Republik 1,,,Berlin,11011,Germany,buero.fischer@bundestag.de,,,de,,cc;bundestag,"An office, no person:
    write to the office."
    ,Sigmar,Gabriel,Federal Minister for Foreign Affairs,Auswärtiges Amt,,Werderscher Markt 1,,,Berlin,10117,Germany,,,+49 (0) 30-1817-3402,de,,principal; principal,
    """  # noqa: E501

FIVE_YAML = """\
    recipients:
      - {honorific: Mr, given_name: Thorbjørn, family_name: Jagland, position: Secretary General,
         organisation: Council of Europe, address_lines: ["Avenue de l'Europe"],
         city: Strasbourg Cedex, postcode: "67075", country: France,
         email: Thorbjorn.Jagland@coe.int, phone: +33 (0)3 88 41 20 00, language: en,
         salutation: Dear Secretary General, tags: [principal, coe]}
      - honorific: Ms
        given_name: Stella
        family_name: Kyriakides
        position: President
        organisation: Council of Europe
        department: Parliamentary Assembly
        address_line1: Avenue de l'Europe
        city: Strasbourg Cedex
        postcode: 67075
        country: FR
        email: stella.kyriakides@coe.int
        tags: "CC; coe"
      - {honorific: Dr., given_name: Wolfgang, family_name: Schäuble,
         position: President of the Bundestag, organisation: Deutscher Bundestag,
         address_lines: [Platz der Republik 1], city: Berlin, postcode: 11011, country: Germany,
         email: wolfgang.schaeuble@bundestag.de, phone: +49 (0) 30-227-76744, language: de,
         tags: [principal, bundestag, Bürgerrechte]}
      - organisation: Deutscher Bundestag
        department: Büro Fischer
        address_lines: [Platz der Republik 1]
        city: Berlin
        postcode: 11011
        country: Germany
        email: buero.fischer@bundestag.de
        language: de
        tags: [cc, bundestag]
        notes: |
          An office, no person:
          write to the office.
      - {given_name: Sigmar, family_name: Gabriel, position: Federal Minister for Foreign Affairs,
         organisation: Auswärtiges Amt, address_lines: [Werderscher Markt 1], city: Berlin,
         postcode: 10117, country: Germany, fax: +49 (0) 30-1817-3402, language: de,
         tags: [principal, principal]}
    """


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding=encoding)
    return path


def run_import(url: str, path: Path, **options: bool) -> ImportReport:
    with session_scope(url) as session:
        return registry.import_file(session, path, settings=SETTINGS, **options)


def stored(url: str) -> dict[str, Recipient]:
    """The stored recipients by family name, or organisation and department for an office."""
    with session_scope(url) as session:
        rows = session.scalars(sa.select(Recipient).order_by(Recipient.id))
        return {r.family_name or f"{r.organisation}/{r.department}": r for r in rows}


def names(recipients: list[Recipient]) -> list[str]:
    return [r.family_name or r.department for r in recipients]


@pytest.fixture
def five(database_url: str, tmp_path: Path) -> str:
    """A database holding the five recipients of the model letter."""
    run_import(database_url, write(tmp_path, "recipients.csv", FIVE_CSV))
    return database_url


# Import -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,text", [("recipients.csv", FIVE_CSV), ("recipients.yaml", FIVE_YAML)]
)
def test_import_stores_the_five_normalised(
    database_url: str, tmp_path: Path, name: str, text: str
) -> None:
    report = run_import(database_url, write(tmp_path, name, text))

    assert (report.created, report.updated, report.unchanged, report.skipped) == (5, 0, 0, [])
    rows = stored(database_url)
    assert list(rows) == [
        "Jagland",
        "Kyriakides",
        "Schäuble",
        "Deutscher Bundestag/Büro Fischer",
        "Gabriel",
    ]
    jagland, schaeuble, gabriel = rows["Jagland"], rows["Schäuble"], rows["Gabriel"]
    assert jagland.email == "Thorbjorn.Jagland@coe.int"
    assert jagland.key == "thorbjorn.jagland@coe.int"
    assert jagland.phone == "+33388412000"
    assert jagland.country == "FR"
    assert jagland.address_lines == ["Avenue de l'Europe"]
    assert jagland.salutation == "Dear Secretary General"
    assert schaeuble.phone == "+493022776744"
    assert schaeuble.country == "DE"
    assert schaeuble.tags == ["bundestag", "bürgerrechte", "principal"]
    assert rows["Kyriakides"].tags == ["cc", "coe"]
    assert rows["Kyriakides"].postcode == "67075"
    assert rows["Deutscher Bundestag/Büro Fischer"].notes == (
        "An office, no person:\nwrite to the office."
    )
    assert gabriel.email is None
    assert gabriel.fax == "+493018173402"
    assert gabriel.tags == ["principal"]
    assert gabriel.key == "name:sigmar gabriel|auswärtiges amt|"
    assert gabriel.language == "de"


def test_reimport_changes_nothing(five: str, tmp_path: Path) -> None:
    before = {name: r.updated_at for name, r in stored(five).items()}

    report = run_import(five, write(tmp_path, "recipients.csv", FIVE_CSV))

    assert (report.created, report.updated, report.unchanged) == (0, 0, 5)
    assert {name: r.updated_at for name, r in stored(five).items()} == before


def test_reimport_with_one_change_updates_that_row_only(five: str, tmp_path: Path) -> None:
    before = {name: r.updated_at for name, r in stored(five).items()}
    changed = FIVE_CSV.replace("Secretary General,Council", "Former Secretary General,Council")

    report = run_import(five, write(tmp_path, "recipients.csv", changed))

    assert (report.created, report.updated, report.unchanged) == (0, 1, 4)
    after = stored(five)
    assert after["Jagland"].position == "Former Secretary General"
    assert after["Jagland"].updated_at > before["Jagland"]
    assert after["Schäuble"].updated_at == before["Schäuble"]


def test_email_in_another_case_updates_the_same_recipient(five: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "recipients.csv",
        """\
        family_name,organisation,email
        Jagland,Council of Europe,THORBJORN.JAGLAND@coe.int
        """,
    )

    report = run_import(five, path)

    assert (report.created, report.updated) == (0, 1)
    assert stored(five)["Jagland"].email == "THORBJORN.JAGLAND@coe.int"


def test_dry_run_counts_and_writes_nothing(database_url: str, tmp_path: Path) -> None:
    report = run_import(database_url, write(tmp_path, "r.csv", FIVE_CSV), dry_run=True)

    assert report.created == 5
    assert stored(database_url) == {}


GOOD_ROW = "Jagland,Council of Europe,thorbjorn.jagland@coe.int,"


@pytest.mark.parametrize(
    "name,text,message",
    [
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,email,city
            {GOOD_ROW}
            Kyriakides,Council of Europe,stella.kyriakides.coe.int,
            """,
            "recipients.csv: row 3: email: An email address must have an @-sign.",
            id="invalid address",
        ),
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,email,city
            {GOOD_ROW}
            ,,someone@bundestag.de,
            """,
            "recipients.csv: row 3: family_name: neither family_name nor organisation",
            id="neither family name nor organisation",
        ),
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,email,city
            {GOOD_ROW}
            Gabriel,Auswärtiges Amt,,
            """,
            "recipients.csv: row 3: email: no way to reach them",
            id="no email, address or fax",
        ),
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,email,city
            {GOOD_ROW}
            Kyriakides,Council of Europe,stella.kyriakides@coe.int,

            Jagland,Council of Europe,Thorbjorn.Jagland@COE.INT,
            """,
            "recipients.csv: row 5: email: the same recipient as row 2 (thorbjorn.jagland@coe.int)",
            id="duplicate address differing by case",
        ),
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,email,city
            {GOOD_ROW}
            "Schäuble
            Bcc: everyone@example.org",Deutscher Bundestag,wolfgang.schaeuble@bundestag.de,
            """,
            "recipients.csv: row 3: family_name: contains a line break",
            id="name with a newline",
        ),
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,emial,city
            {GOOD_ROW}
            """,
            "recipients.csv: row 1: emial: unknown column; did you mean email?",
            id="unknown column",
        ),
        pytest.param(
            "recipients.csv",
            f"""\
            family_name,organisation,email,city
            {GOOD_ROW}
            Gabriel,"Auswärtiges" Amt,,Berlin
            """,
            "recipients.csv: line 3: malformed CSV",
            id="malformed CSV",
        ),
        pytest.param(
            "recipients.yaml",
            """\
            - family_name: Jagland
              email: thorbjorn.jagland@coe.int
            - family_name: [Kyriakides
            """,
            "recipients.yaml: line 4: malformed YAML",
            id="malformed YAML",
        ),
        pytest.param(
            "recipients.yaml",
            """\
            - family_name: Jagland
              email: thorbjorn.jagland@coe.int
            - family_name: Kyriakides
              emial: stella.kyriakides@coe.int
            """,
            "recipients.yaml: row 2: emial: unknown column; did you mean email?",
            id="unknown YAML key",
        ),
        pytest.param(
            "recipients.yaml",
            """\
            - {family_name: Dup, Email: first@example.org, email: second@example.org, city: X}
            """,
            "recipients.yaml: row 1: email: column appears twice",
            id="YAML key twice in another case",
        ),
        pytest.param(
            "recipients.yaml",
            """\
            - family_name: Jagland
              email: thorbjorn.jagland@coe.int
              email: someone.else@coe.int
            """,
            "recipients.yaml: line 3: malformed YAML: 'email' is given twice",
            id="YAML key twice",
        ),
    ],
)
def test_bad_input_names_the_place_and_writes_nothing(
    database_url: str, tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(InputError) as raised:
        run_import(database_url, write(tmp_path, name, text))

    assert message in str(raised.value)
    assert stored(database_url) == {}


def test_every_problem_of_the_file_is_reported_at_once(database_url: str, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "recipients.csv",
        """\
        family_name,organisation,email,phone,country
        Jagland,Council of Europe,jagland@,+33 12,Frnace
        Kyriakides,Council of Europe,stella.kyriakides@coe.int,,FR
        ,,,,
        ,,,030 123,
        """,
    )

    with pytest.raises(ImportFailed) as raised:
        run_import(database_url, path, skip_invalid=False)

    places = [(e.row, e.field) for e in raised.value.errors]
    assert places == [
        (2, "country"),
        (2, "email"),
        (2, "phone"),
        (5, "phone"),
        (5, "family_name"),
        (5, "email"),
    ]
    assert "recipients.csv: row 2: country: unknown country 'Frnace'" in str(raised.value)
    assert "recipients.csv: row 5: phone: '030 123' has no country code" in str(raised.value)
    assert stored(database_url) == {}


def test_skip_invalid_imports_the_good_rows_and_reports_the_bad(
    database_url: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "recipients.csv",
        """\
        family_name,organisation,email,fax
        Jagland,Council of Europe,thorbjorn.jagland@coe.int,
        Kyriakides,Council of Europe,stella.kyriakides.coe.int,
        Gabriel,Auswärtiges Amt,,+49 (0) 30-1817-3402
        """,
    )

    report = run_import(database_url, path, skip_invalid=True)

    assert (report.created, report.updated, report.unchanged) == (2, 0, 0)
    assert [str(e) for e in report.skipped] == [
        "recipients.csv: row 3: email: An email address must have an @-sign."
    ]
    assert list(stored(database_url)) == ["Jagland", "Gabriel"]


def test_skip_invalid_does_not_skip_an_unknown_column(database_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, "r.csv", f"family_name,organisation,emial,city\n{GOOD_ROW}\n")

    with pytest.raises(ImportFailed, match="emial: unknown column"):
        run_import(database_url, path, skip_invalid=True)


# Reading and validation (no database) -------------------------------------------------------


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "recipients.csv",
        """\
        family_name;email;tags
        Jagland;thorbjorn.jagland@coe.int;"principal;coe"

        Kyriakides;stella.kyriakides@coe.int;coe
        """,
        encoding="utf-8-sig",
    )

    rows = registry.read_rows(path)

    assert [(r.source, r.row, r.values["family_name"]) for r in rows] == [
        ("recipients.csv", 2, "Jagland"),
        ("recipients.csv", 4, "Kyriakides"),
    ]
    assert rows[0].values["tags"] == "principal;coe"


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    """A key a merge (<<) brings is not one given twice."""
    path = write(
        tmp_path,
        "r.yml",
        """\
        - &coe {organisation: Council of Europe, city: Strasbourg, country: FR}
        - {<<: *coe, city: Paris}
        """,
    )

    assert [row.values["city"] for row in registry.read_rows(path)] == ["Strasbourg", "Paris"]


def test_yaml_keeps_values_as_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "r.yml",
        """\
        - {organisation: Stortinget, city: Oslo, postcode: 0026, country: NO, email: ~}
        """,
    )

    data = registry.validate_row(registry.read_rows(path)[0], settings=SETTINGS)

    assert (data.postcode, data.country, data.email) == ("0026", "NO", None)


def validate(**values: object) -> registry.RecipientData:
    values.setdefault("organisation", "Council of Europe")
    values.setdefault("city", "Strasbourg")
    return registry.validate_row(RawRow("r.csv", 2, values), settings=SETTINGS)


@pytest.mark.parametrize(
    "phone,country,expected",
    [
        ("+49 (0) 30-227-76744", "", "+493022776744"),
        ("030 227 76744", "DE", "+493022776744"),
        ("+44 (0)20 7219 3000", "GB", "+442072193000"),
        ("+39 06 6706 1", "", "+390667061"),
        ("03 88 41 20 00", "France", "+33388412000"),
    ],
)
def test_phone_numbers_become_e164(phone: str, country: str, expected: str) -> None:
    assert validate(phone=phone, fax=phone, country=country).phone == expected
    assert validate(phone=phone, fax=phone, country=country).fax == expected


@pytest.mark.parametrize(
    "values,field,reason",
    [
        ({"phone": "+49 30 1"}, "phone", "'+49 30 1' is not a valid phone number"),
        ({"fax": "call me"}, "fax", "'call me' is not a phone number"),
        ({"phone": "+49 30 22776744 ext. 12"}, "phone", "has an extension"),
        ({"country": "Atlantis"}, "country", "unknown country 'Atlantis'"),
        ({"language": "German"}, "language", "unknown language 'German'"),
        ({"position": "Minister\tof State"}, "position", "contains a control character"),
        ({"address_line1": "Rue 1\r\nBcc: x@y.z"}, "address_line1", "contains a line break"),
        ({"address_lines": ["a", ["b"]]}, "address_lines[2]", "expected text, got a list"),
        ({"tags": "ok; bad\nline"}, "tags", "contains a line break"),
        ({"honorific": "x" * 41}, "honorific", "longer than 40 characters"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_invalid_values_are_refused(values: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ImportFailed) as raised:
        validate(**values)

    [error] = raised.value.errors
    assert (error.source, error.row, error.field) == ("r.csv", 2, field)
    assert reason in error.reason


def test_values_are_trimmed_and_normalised() -> None:
    data = validate(
        given_name="  Thorbjørn ",
        family_name="Jagland\n",
        country="belgium",
        language="FR-be",
        tags=" Principal ;coe;; principal",
        address_lines=[" Avenue de l'Europe ", ""],
        notes="  first\r\nsecond  ",
    )

    assert (data.given_name, data.family_name) == ("Thorbjørn", "Jagland")
    assert (data.country, data.language) == ("BE", "fr-BE")
    assert data.tags == ("coe", "principal")
    assert data.address_lines == ("Avenue de l'Europe",)
    assert data.notes == "first\nsecond"
    assert validate().language == "en"


@pytest.mark.parametrize("email", ["Ida@Bücher.de", "Ida@xn--bcher-kva.de"])
def test_an_international_domain_is_kept_in_the_form_the_server_takes(email: str) -> None:
    """ASCII (IDNA) unless the server takes SMTPUTF8: smtplib cannot send RCPT TO:<ida@bücher.de>
    to a server that does not, and a To: header can carry no encoded word in an address."""
    assert validate(email=email).email == "Ida@xn--bcher-kva.de"
    utf8 = SETTINGS.model_copy(update={"smtp_utf8": True})
    row = RawRow("r.csv", 2, {"organisation": "Bundestag", "city": "Berlin", "email": email})
    assert registry.validate_row(row, settings=utf8).email == "Ida@bücher.de"


def test_preferred_channel_is_email_then_fax_then_post() -> None:
    assert registry.preferred_channel(validate(email="a@coe.int", fax="+33 3 88 41 20 00")) == (
        "email"
    )
    assert registry.preferred_channel(validate(fax="+33 3 88 41 20 00")) == "fax"
    assert registry.preferred_channel(validate()) == "post"


# Queries ------------------------------------------------------------------------------------


def test_list_filters_by_tag_organisation_and_channel(five: str) -> None:
    with session_scope(five) as session:
        assert names(registry.list_recipients(session)) == [
            "Jagland",
            "Kyriakides",
            "Schäuble",
            "Büro Fischer",
            "Gabriel",
        ]
        by_tag = registry.list_recipients(session, tag="Principal")
        assert names(by_tag) == ["Jagland", "Schäuble", "Gabriel"]
        assert names(registry.list_recipients(session, tag="bürgerrechte")) == ["Schäuble"]
        assert registry.list_recipients(session, tag="princ") == []
        by_org = registry.list_recipients(session, organisation="COUNCIL OF EUROPE")
        assert names(by_org) == ["Jagland", "Kyriakides"]
        assert names(registry.list_recipients(session, organisation="auswärtiges amt")) == [
            "Gabriel"
        ]
        assert len(registry.list_recipients(session, channel="email")) == 4
        assert names(registry.list_recipients(session, channel="post")) == ["Gabriel"]
        assert names(registry.list_recipients(session, channel="fax")) == ["Gabriel"]
        both = registry.list_recipients(session, tag="principal", channel="email")
        assert names(both) == ["Jagland", "Schäuble"]
        with pytest.raises(InputError, match="unknown channel 'sms'"):
            registry.list_recipients(session, channel="sms")


def test_select_resolves_each_selector_kind(five: str) -> None:
    with session_scope(five) as session:
        gabriel = registry.list_recipients(session, channel="fax")[0]
        chosen = registry.select(
            session,
            [
                "tag:principal",
                "org:council of europe",
                "email:BUERO.FISCHER@bundestag.de",
                f"id:{gabriel.id}",
            ],
        )
        assert names(chosen) == ["Jagland", "Schäuble", "Gabriel", "Kyriakides", "Büro Fischer"]
        assert names(registry.select(session, ["Stella.Kyriakides@coe.int"])) == ["Kyriakides"]
        assert registry.select(session, []) == []


def test_select_rows_names_whom_select_names_with_only_the_columns_asked(five: str) -> None:
    selectors = [
        ["tag:principal", "org:council of europe", "email:BUERO.FISCHER@bundestag.de"],
        ["tag:CC", "tag:principal"],
        ["org:Deutscher  Bundestag", "id:1", "tag:coe"],
    ]
    with session_scope(five) as session:
        for chosen in selectors:
            people = registry.select(session, chosen)
            rows = registry.select_rows(session, chosen, Recipient.email, Recipient.fax)
            assert [tuple(row) for row in rows] == [(r.id, r.email, r.fax) for r in people]
        assert [tuple(row) for row in registry.select_rows(session, ["tag:cc"])] == [(2,), (4,)]
        with pytest.raises(NotFound, match="'tag:principle'"):
            registry.select_rows(session, ["tag:principle"])


def test_select_refuses_a_selector_that_matches_nobody(five: str) -> None:
    with session_scope(five) as session:
        with pytest.raises(NotFound) as raised:
            registry.select(session, ["tag:principal", "tag:principle", "id:999"])
        assert str(raised.value) == "no recipient matches 'tag:principle', 'id:999'"
        with pytest.raises(InputError, match="'tga:principal'"):
            registry.select(session, ["tga:principal"])
        with pytest.raises(InputError, match="id: needs a number"):
            registry.select(session, ["id:seven"])


def test_find_recipient_by_id_or_email_in_any_case(five: str) -> None:
    with session_scope(five) as session:
        jagland = registry.find_recipient(session, "thorbjorn.jagland@COE.INT")
        assert jagland.family_name == "Jagland"
        assert registry.find_recipient(session, str(jagland.id)) is jagland
        with pytest.raises(NotFound, match="no recipient with id 999"):
            registry.find_recipient(session, "999")
        with pytest.raises(NotFound, match="no recipient with the email address x@coe.int"):
            registry.find_recipient(session, "x@coe.int")
        with pytest.raises(NotFound, match="give an id number or an email address"):
            registry.find_recipient(session, "Jagland")


def test_an_international_domain_is_found_written_either_way(
    database_url: str, tmp_path: Path
) -> None:
    ida = "- {family_name: Ida, email: ida@Bücher.de}"
    run_import(database_url, write(tmp_path, "r.yaml", ida))
    with session_scope(database_url) as session:
        for written in ("ida@bücher.de", "IDA@xn--bcher-kva.de"):
            assert registry.find_recipient(session, written).family_name == "Ida"
        assert [r.family_name for r in registry.select(session, ["email:ida@bücher.de"])] == ["Ida"]
