"""Salutations, names, dates and country names per language."""

from __future__ import annotations

from datetime import date

import pytest

from outreach.salutations import country_name, display_name, format_date, rules_for, salutation


def greet(honorific: str, given: str, family: str, position: str = "", language: str = "en") -> str:
    return salutation(
        honorific=honorific,
        given_name=given,
        family_name=family,
        position=position,
        language=language,
    )


@pytest.mark.parametrize(
    ("honorific", "given", "family", "position", "language", "expected"),
    [
        # The people of the model letter.
        ("Mr", "Thorbjørn", "Jagland", "Secretary General", "en", "Dear Mr Jagland"),
        ("Ms", "Stella", "Kyriakides", "President of PACE", "en", "Dear Ms Kyriakides"),
        (
            "Mr",
            "Wolfgang",
            "Schäuble",
            "Präsident des Deutschen Bundestages",
            "de",
            "Sehr geehrter Herr Präsident",
        ),
        (
            "Mr",
            "Sigmar",
            "Gabriel",
            "Bundesminister des Auswärtigen",
            "de",
            "Sehr geehrter Herr Bundesminister",
        ),
        ("", "", "", "", "de", "Sehr geehrte Damen und Herren"),
        # English: the honorific as given, an academic title in its place.
        ("Mrs", "Jane", "Doe", "", "en", "Dear Mrs Doe"),
        ("Dr", "Jane", "Doe", "", "en", "Dear Dr Doe"),
        ("Ms Dr.", "Jane", "Doe", "", "en", "Dear Dr Doe"),
        ("Prof. Dr.", "Jane", "Doe", "", "en", "Dear Professor Doe"),
        ("Herr", "Hans", "Eichel", "", "en", "Dear Mr Eichel"),
        ("", "Alex", "Doe", "", "en", "Dear Alex Doe"),
        ("", "", "", "", "en", "Dear Sir or Madam"),
        ("Mr", "Thorbjørn", "Jagland", "President of the Council", "en", "Dear Mr Jagland"),
        # German: gender from any language's honorific, function title by the gender.
        ("Herr", "Wolfgang", "Schäuble", "", "de", "Sehr geehrter Herr Schäuble"),
        ("Frau", "Angela", "Merkel", "", "de", "Sehr geehrte Frau Merkel"),
        ("Ms", "Angela", "Merkel", "", "de", "Sehr geehrte Frau Merkel"),
        ("Frau Dr.", "Angela", "Merkel", "", "de", "Sehr geehrte Frau Dr. Merkel"),
        ("Herr Prof. Dr.", "Hans", "Meier", "", "de", "Sehr geehrter Herr Prof. Dr. Meier"),
        ("Frau Dr.", "Angela", "Merkel", "Bundeskanzlerin", "de",
         "Sehr geehrte Frau Bundeskanzlerin"),
        ("Frau", "Claudia", "Roth", "Vizepräsident des Bundestages", "de",
         "Sehr geehrte Frau Vizepräsidentin"),
        ("Mme", "Eva", "Högl", "Präsidentin des Ausschusses", "de",
         "Sehr geehrte Frau Präsidentin"),
        ("Herr", "Hans", "Meier", "Vorsitzender des Ausschusses", "de",
         "Sehr geehrter Herr Vorsitzender"),
        ("Herr", "Hans", "Meier", "Abgeordneter", "de", "Sehr geehrter Herr Meier"),
        ("", "Kim", "Meier", "Präsident", "de", "Guten Tag Kim Meier"),
        ("Dr.", "Kim", "Meier", "", "de", "Guten Tag Dr. Meier"),
        # French: no name in the greeting.
        ("M.", "Jean", "Dupont", "", "fr", "Monsieur"),
        ("Monsieur", "Jean", "Dupont", "", "fr", "Monsieur"),
        ("Mme", "Anne", "Dupont", "", "fr", "Madame"),
        ("Ms", "Anne", "Dupont", "", "fr", "Madame"),
        ("", "Anne", "Dupont", "", "fr", "Madame, Monsieur"),
        ("", "", "", "", "fr", "Madame, Monsieur"),
        # Regional codes fall back to their language; unknown languages to English.
        ("Herr", "Hans", "Eichel", "", "de-AT", "Sehr geehrter Herr Eichel"),
        ("Mr", "Jan", "Kowalski", "", "pl", "Dear Mr Kowalski"),
        ("", "", "", "", "", "Dear Sir or Madam"),
    ],
)  # fmt: skip
def test_salutation(
    honorific: str, given: str, family: str, position: str, language: str, expected: str
) -> None:
    assert greet(honorific, given, family, position, language) == expected


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("Monsieur le Secrétaire général", "Monsieur le Secrétaire général"),
        ("  Dear Thorbjørn,  ", "Dear Thorbjørn"),
        ("   ", "Monsieur"),  # blank: derived as usual
    ],
)
def test_override_wins_without_its_trailing_comma(override: str, expected: str) -> None:
    result = salutation(
        honorific="Mr",
        given_name="Thorbjørn",
        family_name="Jagland",
        position="Secretary General",
        language="fr",
        override=override,
    )
    assert result == expected


def test_display_name() -> None:
    assert display_name(honorific="Mr", given_name="Thorbjørn", family_name="Jagland") == (
        "Mr Thorbjørn Jagland"
    )
    assert display_name(honorific="", given_name="", family_name="Jagland") == "Jagland"
    assert display_name(honorific="", given_name="", family_name="") == ""


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "7 November 2017"),
        ("de", "7. November 2017"),
        ("fr", "7 novembre 2017"),
        ("fr-BE", "7 novembre 2017"),
        ("xx", "7 November 2017"),
    ],
)
def test_format_date(language: str, expected: str) -> None:
    assert format_date(date(2017, 11, 7), language) == expected


def test_country_name_in_the_language() -> None:
    assert country_name("DE", "de") == "Deutschland"
    assert country_name("de", "en") == "Germany"
    assert country_name("BE", "fr") == "Belgique"
    assert country_name("XX", "en") == "XX"
    assert country_name("", "en") == ""


def test_unknown_language_is_english() -> None:
    assert rules_for("tlh") is rules_for("en")
