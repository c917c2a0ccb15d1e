"""How a letter greets an official, names them and dates itself, in the recipient's language.

A salutation is returned without trailing punctuation: the template writes `{{ salutation }},`.
Each language is one `Rules` table below; a language without a table is written in English.
The honorific field is read for a gender (Mr, Herr, M., Monsieur / Ms, Mrs, Frau, Mme, Madame)
and academic titles (Dr, Prof), whatever the language it was entered in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache

from babel import Locale, localedata
from babel.dates import format_date as babel_format_date


@dataclass(frozen=True)
class Rules:
    """One language's way of greeting.

    The person formats take `{academic}` (all academic titles), `{title}` (the highest academic
    title, else the word for the honorific), `{name}` (the family name after a title, else the
    full name) and `{function}`; an empty field vanishes with its space.
    """

    locale: str  # Babel locale for dates and country names
    words: dict[str, str]  # honorific key (see HONORIFICS) -> word in this language
    male: str
    female: str
    unknown: str  # a person whose gender the honorific does not give
    office: str  # no person named: an office, a secretariat
    # A function title usable in address, by the position's first word: (male, female) forms.
    functions: dict[str, tuple[str, str]] = field(default_factory=dict)
    function_male: str = ""
    function_female: str = ""


# Honorifics as entered, lower-cased without dots -> key of `Rules.words`.
HONORIFICS = {
    "mr": "mr", "mister": "mr", "herr": "mr", "m": "mr", "monsieur": "mr",
    "ms": "ms", "frau": "ms", "mme": "ms", "madame": "ms", "mlle": "ms", "mademoiselle": "ms",
    "mrs": "mrs", "miss": "miss",
    "dr": "dr", "doctor": "dr", "doktor": "dr", "docteur": "dr",
    "prof": "prof", "professor": "prof", "professeur": "prof", "pr": "prof",
}  # fmt: skip
MALE = {"mr"}
FEMALE = {"ms", "mrs", "miss"}
ACADEMIC = ("prof", "dr")  # highest first


def _both_forms(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Look a title up by either form: "präsident" and "präsidentin" both give the pair."""
    return {form.lower(): pair for pair in pairs for form in pair}


GERMAN_FUNCTIONS = _both_forms(
    [(title, f"{title}in") for title in (
        "Präsident", "Vizepräsident", "Bundespräsident", "Bundestagspräsident",
        "Ministerpräsident", "Bundeskanzler", "Bundesminister", "Minister", "Staatsminister",
        "Staatssekretär", "Botschafter", "Generalsekretär", "Bürgermeister", "Oberbürgermeister",
    )]
    + [("Vorsitzender", "Vorsitzende")]
)  # fmt: skip


ENGLISH = Rules(
    locale="en_GB",
    words={"mr": "Mr", "ms": "Ms", "mrs": "Mrs", "miss": "Miss", "dr": "Dr", "prof": "Professor"},
    male="Dear {title} {name}",
    female="Dear {title} {name}",
    unknown="Dear {title} {name}",
    office="Dear Sir or Madam",
)

GERMAN = Rules(
    locale="de_DE",
    words={"mr": "Herr", "ms": "Frau", "mrs": "Frau", "miss": "Frau", "dr": "Dr.", "prof": "Prof."},
    male="Sehr geehrter Herr {academic} {name}",
    female="Sehr geehrte Frau {academic} {name}",
    unknown="Guten Tag {academic} {name}",
    office="Sehr geehrte Damen und Herren",
    functions=GERMAN_FUNCTIONS,
    function_male="Sehr geehrter Herr {function}",
    function_female="Sehr geehrte Frau {function}",
)

FRENCH = Rules(
    locale="fr_FR",
    words={"mr": "Monsieur", "ms": "Madame", "mrs": "Madame", "miss": "Madame", "dr": "Docteur",
           "prof": "Professeur"},
    male="Monsieur",
    female="Madame",
    unknown="Madame, Monsieur",
    office="Madame, Monsieur",
)  # fmt: skip

LANGUAGES = {"en": ENGLISH, "de": GERMAN, "fr": FRENCH}


def rules_for(language: str) -> Rules:
    """The table for a language code such as "de", "de-AT" or "fr_BE"; English if none."""
    primary = language.replace("_", "-").split("-")[0].strip().lower()
    return LANGUAGES.get(primary, ENGLISH)


def _honorific_keys(honorific: str) -> list[str]:
    return [
        HONORIFICS[word]
        for word in honorific.replace(".", " ").lower().split()
        if word in HONORIFICS
    ]


def _function(rules: Rules, position: str, female: bool) -> str:
    """The function title to address a person by, from the first word of their position."""
    words = position.split()
    forms = rules.functions.get(words[0].strip(",;:").lower()) if words else None
    return forms[female] if forms else ""


def salutation(
    *,
    honorific: str,
    given_name: str,
    family_name: str,
    position: str,
    language: str,
    override: str = "",
) -> str:
    """The greeting, e.g. "Dear Mr Jagland" or "Sehr geehrter Herr Präsident"; override wins."""
    if override.strip():
        return override.strip().rstrip(",").rstrip()
    rules = rules_for(language)
    if not family_name:
        return rules.office
    keys = _honorific_keys(honorific)
    gender = next((k for k in keys if k in MALE | FEMALE), "")
    academic = [rules.words[k] for k in ACADEMIC if k in keys]
    function = _function(rules, position, gender in FEMALE) if gender else ""
    if function:
        pattern = rules.function_female if gender in FEMALE else rules.function_male
    elif gender:
        pattern = rules.female if gender in FEMALE else rules.male
    else:
        pattern = rules.unknown
    title = academic[0] if academic else rules.words.get(gender, "")
    name = family_name if (gender or academic) else f"{given_name} {family_name}"
    text = pattern.format(
        academic=" ".join(academic),
        title=title,
        name=name,
        function=function,
    )
    return " ".join(text.split())


def display_name(*, honorific: str, given_name: str, family_name: str) -> str:
    """The name as written above an address or in a list: "Mr Thorbjørn Jagland"."""
    return " ".join(p.strip() for p in (honorific, given_name, family_name) if p.strip())


@lru_cache(maxsize=1024)
def format_date(d: date, language: str) -> str:
    """The date as the language writes it in a letter: "7 November 2017", "7. November 2017".
    Cached: a campaign's letters share their date, and Babel's formatting is slow."""
    return babel_format_date(d, format="long", locale=rules_for(language).locale)


def load_locales() -> None:
    """Read Babel's data for every language the rules know. A worker pool's parent does this
    before it forks (`workers.app`), so that its processes share the data instead of each
    reading and merging it at its first letter (about 30 ms a process)."""
    for rules in LANGUAGES.values():
        localedata.load(rules.locale)  # kept in Babel's own cache


@lru_cache(maxsize=4096)
def country_name(code: str, language: str) -> str:
    """The country's name in the language ("DE" -> "Deutschland"); the code if Babel has none.
    Cached: Babel parses the locale and merges its data on every call, for each message."""
    territories = Locale.parse(rules_for(language).locale).territories
    return territories.get(code.upper(), code) if code else ""
