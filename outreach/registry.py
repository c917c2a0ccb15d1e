"""The recipient registry: read a CSV or YAML file of officials, validate and normalise every row,
upsert them by key (all or nothing), and find or select recipients for a campaign.

Reading and validation are pure. Only `import_file` and the queries touch the database, through
the `Session` they are given; the caller commits.

A recipient's key is its email address lower-cased, or, without one, "name:" and its casefolded
name and organisation: re-importing a file updates the rows it describes instead of adding twins.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel
import phonenumbers
import sqlalchemy as sa
import yaml
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.orm import Session

from outreach.config import Settings
from outreach.errors import ImportRowError, InputError, NotFound
from outreach.models import Channel, Recipient

T = TypeVar("T")

ADDRESS_COLUMNS = ("address_line1", "address_line2", "address_line3")
CSV_COLUMNS = (
    *("honorific", "given_name", "family_name", "position", "organisation", "department"),
    *ADDRESS_COLUMNS,
    *("city", "postcode", "country", "email", "phone", "fax", "language", "salutation"),
    *("tags", "notes", "timezone"),
)
YAML_KEYS = (*CSV_COLUMNS, "address_lines")
LINE_FIELDS = ("honorific", "given_name", "family_name", "position", "organisation")
LINE_FIELDS += ("department", "city", "postcode", "salutation")
# Two-letter codes babel knows that are not countries a letter can go to.
NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "QO", "XA", "XB", "ZZ"})
SELECTOR_KINDS = ("tag", "org", "email", "id")
IN_CHUNK = 500  # keys per IN (...): below SQLite's limit on bound parameters


class Reachable(Protocol):
    """What the channel rule reads: a Recipient, a RecipientData or a row of these columns."""

    @property
    def email(self) -> str | None: ...

    @property
    def fax(self) -> str: ...


class ImportFailed(InputError):
    """Rows that cannot be imported, every problem of the file on a line of its own."""

    def __init__(self, errors: Sequence[ImportRowError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


@dataclass(frozen=True)
class RawRow:
    """One row as read, before validation: where it is (for messages) and its values by column."""

    source: str
    row: int
    values: Mapping[str, Any]


@dataclass(frozen=True)
class RecipientData:
    """A validated, normalised row: the Recipient model's fields, ready to compare and store."""

    honorific: str = ""
    given_name: str = ""
    family_name: str = ""
    position: str = ""
    organisation: str = ""
    department: str = ""
    address_lines: tuple[str, ...] = ()
    city: str = ""
    postcode: str = ""
    country: str = ""
    email: str | None = None
    phone: str = ""
    fax: str = ""
    language: str = "en"
    salutation: str = ""
    tags: tuple[str, ...] = ()
    notes: str = ""
    timezone: str = ""

    def columns(self) -> dict[str, Any]:
        """The values as the model holds them (lists where the dataclass keeps tuples)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[ImportRowError] = field(default_factory=list)


# Reading ------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[RawRow]:
    """The rows of a .csv or .yaml/.yml file. Unknown columns fail the whole file, whatever
    --skip-invalid says: a misspelt column would silently empty a field on every row."""
    readers = {".csv": _read_csv, ".yaml": _read_yaml, ".yml": _read_yaml}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path.name}: unsupported file type; use .csv, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name}: not UTF-8 (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    return reader(path.name, text)


def _read_csv(source: str, text: str) -> list[RawRow]:
    """Rows numbered as a spreadsheet shows them: the header is row 1, blank rows count."""
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{source}: empty file; the first row must name the columns")
        columns = _csv_columns(source, header)
        records = list(enumerate(reader, start=2))
    except csv.Error as exc:
        raise InputError(f"{source}: line {reader.line_num}: malformed CSV: {exc}") from exc
    return [
        _csv_row(source, n, columns, values)
        for n, values in records
        if any(value.strip() for value in values)
    ]


def _delimiter(text: str) -> str:
    """Comma, or the semicolon or tab a spreadsheet in another locale writes: the header says."""
    header = text.split("\n", 1)[0]
    return max((",", ";", "\t"), key=header.count)


def _csv_columns(source: str, header: list[str]) -> list[str]:
    """The header's column names, refusing unknown and repeated ones."""
    columns = [name.strip().lower() for name in header]
    problems = _unknown_columns(source, 1, columns, CSV_COLUMNS)
    problems += _repeated_columns(source, 1, columns)
    if problems:
        raise ImportFailed(problems)
    return columns


def _csv_row(source: str, row: int, columns: list[str], values: list[str]) -> RawRow:
    """One record by column; a value under no column means a delimiter went unquoted."""
    stray = [v for i, v in enumerate(values) if v.strip() and (i >= len(columns) or not columns[i])]
    if stray:
        raise InputError(
            f"{source}: row {row}: {stray[0]!r} is under no column "
            "(quote a value that contains the delimiter)"
        )
    return RawRow(source, row, {c: v for c, v in zip(columns, values, strict=False) if c})


class _TextLoader(yaml.SafeLoader):
    """YAML whose plain scalars stay text: postcode 01067 is no octal number, country NO no
    boolean. Only null (~, empty) and merge keys (<<) keep their meaning. A key given twice in
    one mapping is an error: PyYAML keeps the last value and drops the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key, _ in node.value:  # its own keys: one a merge (<<) brings may be overridden
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"{key.value!r} is given twice", problem_mark=key.start_mark
                    )
                seen.add(key.value)
        return super().construct_mapping(node, deep=deep)


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.endswith((":null", ":merge"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _read_yaml(source: str, text: str) -> list[RawRow]:
    """A list of mappings, or a mapping with a `recipients:` list; row n is the n-th item."""
    try:
        document = yaml.load(text, Loader=_TextLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or exc
        raise InputError(f"{source}: {where}malformed YAML: {reason}") from exc
    items = list(enumerate(_yaml_items(source, document), start=1))
    problems = [p for n, item in items for p in _yaml_item_problems(source, n, item)]
    if problems:
        raise ImportFailed(problems)
    return [
        RawRow(source, n, {str(k).strip().lower(): v for k, v in item.items()}) for n, item in items
    ]


def _yaml_items(source: str, document: object) -> list[Any]:
    """The list of recipients, from the document itself or its `recipients:` key."""
    if isinstance(document, dict) and set(document) == {"recipients"}:
        document = document["recipients"] or []
    if not isinstance(document, list):
        raise InputError(f"{source}: expected a list of recipients, or `recipients:` and a list")
    return document


def _yaml_item_problems(source: str, row: int, item: object) -> list[ImportRowError]:
    """Unknown keys of one item, or the item itself when it is not a mapping."""
    if not isinstance(item, dict):
        return [ImportRowError(source, row, "recipient", "expected field: value pairs")]
    names = [str(k).strip().lower() for k in item]
    return _unknown_columns(source, row, names, YAML_KEYS) + _repeated_columns(source, row, names)


def _repeated_columns(source: str, row: int, names: list[str]) -> list[ImportRowError]:
    """An error for each column named twice (in another case, or with spaces): one value
    would silently replace the other."""
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    return [ImportRowError(source, row, name, "column appears twice") for name in repeated]


def _unknown_columns(
    source: str, row: int, names: list[str], known: Sequence[str]
) -> list[ImportRowError]:
    """An error for each column nobody knows, suggesting the nearest known one."""
    problems = []
    for name in (n for n in names if n and n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
        problems.append(ImportRowError(source, row, name, f"unknown column; {hint}"))
    return problems


# Validation ---------------------------------------------------------------------------------


class _Invalid(ValueError):
    """A value that cannot be used; the message is the reason shown to the user."""


class _Checker:
    """Runs the checks of one row, collecting every failure instead of stopping at the first."""

    def __init__(self, raw: RawRow) -> None:
        self.raw = raw
        self.errors: list[ImportRowError] = []

    def __call__(self, name: str, check: Callable[..., T], *args: Any, default: T) -> T:
        try:
            return check(*args)
        except _Invalid as exc:
            self.fail(name, str(exc))
            return default

    def fail(self, name: str, reason: str) -> None:
        self.errors.append(ImportRowError(self.raw.source, self.raw.row, name, reason))

    def failed(self, *names: str) -> bool:
        return any(e.field in names for e in self.errors)


def validate_row(raw: RawRow, *, settings: Settings) -> RecipientData:
    """The row normalised, or ImportFailed listing every problem in it."""
    values, check = raw.values, _Checker(raw)
    lines = {n: check(n, _line, values.get(n), _limit(n), default="") for n in LINE_FIELDS}
    country = check("country", _country, values.get("country"), default="")
    data = RecipientData(
        **lines,
        address_lines=_address_lines(check, values),
        country=country,
        email=check("email", _email, values.get("email"), settings, default=None),
        phone=check("phone", _phone, values.get("phone"), country, default=""),
        fax=check("fax", _phone, values.get("fax"), country, default=""),
        language=check("language", _language, values.get("language"), default="en"),
        tags=check("tags", _tags, values.get("tags"), default=()),
        notes=check("notes", _notes, values.get("notes"), default=""),
        timezone=check("timezone", _timezone, values.get("timezone"), default=""),
    )
    _check_whole(check, data)
    if check.errors:
        raise ImportFailed(check.errors)
    return data


def validate_rows(
    rows: Iterable[RawRow], *, settings: Settings
) -> tuple[list[RecipientData], list[ImportRowError]]:
    """The valid rows and the problems of all others, a later duplicate being one of them."""
    valid: list[RecipientData] = []
    errors: list[ImportRowError] = []
    first_row: dict[str, int] = {}
    for raw in rows:
        try:
            data = validate_row(raw, settings=settings)
        except ImportFailed as exc:
            errors.extend(exc.errors)
            continue
        key = recipient_key(data)
        if key in first_row:
            name = "email" if data.email else "family_name"
            reason = f"the same recipient as row {first_row[key]} ({key})"
            errors.append(ImportRowError(raw.source, raw.row, name, reason))
            continue
        first_row[key] = raw.row
        valid.append(data)
    return valid, errors


def recipient_key(data: RecipientData | Recipient) -> str:
    """The upsert key: the address lower-cased (email-validator keeps the local part's case),
    else the casefolded name, organisation and department (two offices of one organisation)."""
    if data.email:
        return data.email.lower()
    name = f"{data.given_name} {data.family_name}|{data.organisation}|{data.department}"
    return "name:" + " ".join(name.split()).casefold()


def _check_whole(check: _Checker, data: RecipientData) -> None:
    """Rules on the row as a whole, skipped where a field's own error already explains it."""
    if not (data.family_name or data.organisation or check.failed("family_name", "organisation")):
        check.fail("family_name", "neither family_name nor organisation (for an office) is given")
    if not (data.email or data.city or data.fax or check.failed("email", "city", "fax")):
        check.fail("email", "no way to reach them: give an email, a postal address or a fax")
    if len(recipient_key(data)) > _limit("key"):
        check.fail("family_name", "name and organisation are too long together to make a key")


def _limit(column: str) -> int:
    """The model's length for a column, so PostgreSQL never refuses what validation passed."""
    length: int = Recipient.__table__.c[column].type.length
    return length


def _text(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"expected text, got a {'list' if isinstance(value, list) else 'mapping'}")
    return value.strip()


def _line(value: object, limit: int | None = None) -> str:
    """One line of text: these values end up in headers and address blocks."""
    text = _text(value)
    if len(text.splitlines()) > 1:
        raise _Invalid("contains a line break; only notes may span lines")
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise _Invalid("contains a control character")
    if limit is not None and len(text) > limit:
        raise _Invalid(f"longer than {limit} characters")
    return text


def _address_lines(check: _Checker, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The street lines, from YAML's `address_lines` list or the address_line1..3 columns."""
    if "address_lines" in values:
        if any(column in values for column in ADDRESS_COLUMNS):
            check.fail("address_lines", "give address_lines or address_line1..3, not both")
        items = values["address_lines"]
        items = items if isinstance(items, list) else [items]
        labelled = [(f"address_lines[{n}]", item) for n, item in enumerate(items, start=1)]
    else:
        labelled = [(column, values.get(column)) for column in ADDRESS_COLUMNS]
    lines = [check(label, _line, item, default="") for label, item in labelled]
    return tuple(line for line in lines if line)


@lru_cache(maxsize=1)
def _countries() -> dict[str, str]:
    """Every accepted spelling, casefolded, to its ISO code: the codes and babel's English names."""
    names = babel.Locale("en").territories
    codes = [c for c in names if len(c) == 2 and c.isalpha() and c not in NOT_COUNTRIES]
    return {spelling.casefold(): code for code in codes for spelling in (code, names[code])}


def _country(value: object) -> str:
    text = _line(value)
    if not text:
        return ""
    code = _countries().get(text.casefold())
    if code is None:
        raise _Invalid(f"unknown country {text!r}; give its ISO code (DE) or English name")
    return code


def _email(value: object, settings: Settings) -> str | None:
    """The address as email-validator normalises it (lower-case domain, NFC), or None. Without
    SMTPUTF8 an international domain is kept in its ASCII (IDNA) form, the only one such a
    server takes in RCPT TO and a To: header can carry."""
    text = _line(value)
    if not text:
        return None
    try:
        checked = validate_email(
            text,
            check_deliverability=settings.check_deliverability,
            allow_smtputf8=settings.smtp_utf8,
        )
    except EmailNotValidError as exc:
        raise _Invalid(str(exc)) from exc
    return checked.normalized if settings.smtp_utf8 else checked.ascii_email or checked.normalized


def _phone(value: object, country: str) -> str:
    """E.164. phonenumbers drops the "(0)" trunk prefix after a country code itself
    (+49 (0) 30 ... gives +4930...), and keeps Italy's 0, which belongs to the number."""
    text = _line(value)
    if not text:
        return ""
    try:
        number = phonenumbers.parse(text, country or None)
    except phonenumbers.NumberParseException as exc:
        raise _Invalid(_phone_reason(text, exc)) from exc
    if number.extension:
        raise _Invalid("has an extension, which E.164 cannot hold; put it in notes")
    if not phonenumbers.is_valid_number(number):
        raise _Invalid(f"{text!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _phone_reason(text: str, exc: phonenumbers.NumberParseException) -> str:
    if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
        if not text.startswith("+"):
            return f"{text!r} has no country code; start it with + or fill in country"
        return f"{text!r} has an unknown country code"
    return f"{text!r} is not a phone number"


def _timezone(value: object) -> str:
    """An IANA zone ("Europe/Berlin") for send windows; empty means the country's."""
    text = _line(value)
    if text:
        try:
            ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise _Invalid(f"unknown time zone {text!r}; use a name such as Europe/Berlin") from exc
    return text


def _language(value: object) -> str:
    """A language code as babel knows it ("de", "fr-BE"); English when empty."""
    text = _line(value)
    if not text:
        return "en"
    try:
        locale = babel.Locale.parse(text.replace("-", "_"))
    except (ValueError, babel.UnknownLocaleError) as exc:
        raise _Invalid(f"unknown language {text!r}; use a code such as en, de or fr") from exc
    return "-".join(part for part in (locale.language, locale.script, locale.territory) if part)


def _tags(value: object) -> tuple[str, ...]:
    """Lower-case, once each, sorted: from a YAML list or a "a; b" string."""
    items = value if isinstance(value, list) else _text(value).split(";")
    tags = {_line(item).lower() for item in items}
    return tuple(sorted(tag for tag in tags if tag))


def _notes(value: object) -> str:
    return "\n".join(_text(value).splitlines())


# Import -------------------------------------------------------------------------------------


def import_file(
    session: Session,
    path: Path,
    *,
    settings: Settings,
    skip_invalid: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Upsert the file's recipients by key, all or nothing: any invalid row raises ImportFailed
    before a single write, unless skip_invalid imports the rest. A dry run only counts."""
    valid, errors = validate_rows(read_rows(path), settings=settings)
    if errors and not skip_invalid:
        raise ImportFailed(errors)
    report = ImportReport(skipped=errors)
    existing = _existing(session, [recipient_key(data) for data in valid])
    for data in valid:
        _upsert(session, existing.get(recipient_key(data)), data, report, dry_run=dry_run)
    if not dry_run:
        session.flush()
    return report


def _existing(session: Session, keys: list[str]) -> dict[str, Recipient]:
    """The stored recipients with these keys, by key."""
    found: dict[str, Recipient] = {}
    for start in range(0, len(keys), IN_CHUNK):
        query = sa.select(Recipient).where(Recipient.key.in_(keys[start : start + IN_CHUNK]))
        found.update((r.key, r) for r in session.scalars(query))
    return found


def _upsert(
    session: Session,
    current: Recipient | None,
    data: RecipientData,
    report: ImportReport,
    *,
    dry_run: bool,
) -> None:
    """Add, update only the fields that differ (so updated_at moves on a real change), or count."""
    if current is None:
        report.created += 1
        if not dry_run:
            session.add(Recipient(key=recipient_key(data), **data.columns()))
        return
    changes = {k: v for k, v in data.columns().items() if getattr(current, k) != v}
    if not changes:
        report.unchanged += 1
        return
    report.updated += 1
    if not dry_run:
        for name, value in changes.items():
            setattr(current, name, value)


# Queries ------------------------------------------------------------------------------------


def list_recipients(
    session: Session,
    *,
    tag: str | None = None,
    organisation: str | None = None,
    channel: str | None = None,
) -> list[Recipient]:
    """Recipients in id order, narrowed as `_rows` narrows."""
    rows = _rows(session, (Recipient,), tag=tag, organisation=organisation, channel=channel)
    return [row[0] for row in rows]


def _rows(
    session: Session,
    columns: Sequence[Any],
    *,
    tag: str | None = None,
    organisation: str | None = None,
    channel: str | None = None,
) -> list[tuple[Any, ...]]:
    """`columns` (an entity or columns) of the recipients that pass, in id order. SQL narrows by
    channel and tag; the exact tag and the casefolded organisation are compared in Python, where
    SQLite and PostgreSQL cannot disagree."""
    query = sa.select(*columns).order_by(Recipient.id)
    if channel is not None:
        query = query.where(_channel_clause(channel))
    checks: list[Callable[[Any], bool]] = []
    if tag is not None:
        wanted = tag.strip().lower()
        as_text = sa.cast(Recipient.tags, sa.Text)
        query = query.where(as_text.contains(json.dumps(wanted), autoescape=True))
        query = query.add_columns(as_text.label("tags_text"))
        checks.append(lambda text: wanted in _tag_list(text))
    if organisation is not None:
        folded = _fold(organisation)
        query = query.add_columns(Recipient.organisation)
        checks.append(lambda name: _fold(name) == folded)
    n = len(columns)
    found = session.execute(query)
    return [row[:n] for row in found if all(c(v) for c, v in zip(checks, row[n:], strict=True))]


@lru_cache(maxsize=1024)
def _tag_list(text: str | None) -> tuple[Any, ...]:
    """The tags stored as this JSON text: decoded once per distinct list, not once per row."""
    return tuple(json.loads(text)) if text else ()


def _channel_clause(channel: str) -> sa.ColumnElement[bool]:
    """email: has an address; post or fax: no address, and a city or a fax number."""
    has_email = sa.func.coalesce(Recipient.email, "") != ""
    clauses: dict[str, sa.ColumnElement[bool]] = {
        Channel.EMAIL: has_email,
        Channel.POST: sa.and_(~has_email, Recipient.city != ""),
        Channel.FAX: sa.and_(~has_email, Recipient.fax != ""),
    }
    clause = clauses.get(channel.strip().lower())
    if clause is None:
        raise InputError(f"unknown channel {channel!r}; use email, post or fax")
    return clause


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def find_recipient(session: Session, ref: str) -> Recipient:
    """One recipient by id number or by email address (any case)."""
    ref = ref.strip()
    if ref.isascii() and ref.isdigit():
        found = session.get(Recipient, int(ref))
        if found is None:
            raise NotFound(f"no recipient with id {ref}")
        return found
    if "@" in ref:
        found = _by_email(session, ref)
        if found is None:
            raise NotFound(f"no recipient with the email address {ref}")
        return found
    raise NotFound(f"no recipient {ref!r}: give an id number or an email address")


def _by_email(session: Session, address: str) -> Recipient | None:
    """Through the key, which is the address lower-cased in Python (SQLite's lower() is ASCII)."""
    return session.scalars(sa.select(Recipient).where(_email_is(address))).one_or_none()


def _email_is(address: str) -> sa.ColumnElement[bool]:
    """The recipient whose key is this address (see `_by_email`), its domain written in ASCII
    or in Unicode: an international domain is kept in the one `_email` chose at the import."""
    text = address.strip()
    spellings = {text.lower()}
    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        pass  # no address at all: matches nobody, as the key compared says
    else:
        spellings |= {form.lower() for form in (checked.normalized, checked.ascii_email) if form}
    return Recipient.key.in_(sorted(spellings))


def preferred_channel(recipient: Reachable) -> Channel:
    """Email when there is an address, else fax, else post: the one place this rule lives."""
    if recipient.email:
        return Channel.EMAIL
    if recipient.fax:
        return Channel.FAX
    return Channel.POST


def parse_selector(selector: str) -> tuple[str, str]:
    """("tag", "principal") from "tag:principal"; a bare address is an email selector."""
    kind, colon, value = selector.strip().partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if not (colon and kind in SELECTOR_KINDS):
        if "@" not in selector:
            kinds = ", ".join(f"{k}:" for k in SELECTOR_KINDS)
            raise InputError(f"selector {selector!r}: use {kinds} or an email address")
        kind, value = "email", selector.strip()
    if kind == "id" and not (value.isascii() and value.isdigit()):
        raise InputError(f"selector {selector!r}: id: needs a number")
    if not value:
        raise InputError(f"selector {selector!r}: {kind}: needs a value")
    return kind, value


def select(session: Session, selectors: Sequence[str]) -> list[Recipient]:
    """The recipients the selectors name, each once, in selector order (see `select_rows`)."""
    return [row[1] for row in select_rows(session, selectors, Recipient)]


def select_rows(session: Session, selectors: Sequence[str], *columns: Any) -> list[tuple[Any, ...]]:
    """(id, *columns) of the recipients the selectors name, each once, in selector order. A
    selector that matches nobody is an error naming it: a typo must not silently drop a minister.
    The one place selection lives: `select` reads whole recipients through it, and a campaign's
    deliveries only the columns they need (100k ORM objects with their JSON cost seconds)."""
    chosen: dict[int, tuple[Any, ...]] = {}
    unmatched: list[str] = []
    for selector in selectors:
        found = _match(session, (Recipient.id, *columns), *parse_selector(selector))
        if not found:
            unmatched.append(selector)
        for row in found:
            chosen.setdefault(row[0], row)
    if unmatched:
        raise NotFound("no recipient matches " + ", ".join(repr(s) for s in unmatched))
    return list(chosen.values())


def _match(
    session: Session, columns: Sequence[Any], kind: str, value: str
) -> list[tuple[Any, ...]]:
    if kind == "tag":
        return _rows(session, columns, tag=value)
    if kind == "org":
        return _rows(session, columns, organisation=value)
    where = _email_is(value) if kind == "email" else Recipient.id == int(value)
    return [tuple(row) for row in session.execute(sa.select(*columns).where(where))]
