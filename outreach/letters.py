"""Letter templates: a folder read once, then subject, text and HTML rendered per recipient.

A template folder holds:

    letter.toml   subject = "..." (a Jinja2 template; it must render to one line)
                  place = "Warsaw"                (optional: "Warsaw, 7 November 2017")
                  attachments = ["letter.pdf"]    (optional: files inside the folder)
                  pdf_filename = "Letter-{{ date_iso }}.pdf"
                                                  (optional: the personalised PDF's name, a
                                                   template; see outreach.pdf)
                  max_pages = 4                   (optional: a longer PDF letter is a problem)
                  [sender]                        (optional: letterhead and signature data,
                                                   any keys the templates use)
    body.txt      the text part (required)
    body.html     the HTML part (optional; autoescaped)
    letter.html   the PDF letter's layout, with letter.css (optional; see outreach.pdf)

Templates run in Jinja2's immutable sandbox with StrictUndefined: a missing variable is an error,
not a blank, and no template can reach Python internals or change the data it is given. Block
tags take their own line away (trim_blocks, lstrip_blocks) and a final newline is kept.

The context every template sees (all plain dicts, lists and strings):

    recipient    the person or office this copy goes to (see `recipient_view`):
                 honorific, given_name, family_name, full_name, display_name ("Mr Thorbjørn
                 Jagland"), is_person, position, organisation, department, address_lines, city,
                 postcode, country (ISO code), country_name (in the recipient's language), email,
                 phone, fax (international format), language, tags, salutation, address_block
                 (the postal address as a list of lines)
    salutation   recipient.salutation: "Dear Mr Jagland", "Sehr geehrter Herr Präsident"; no
                 trailing comma, the template writes it
    principals   the To recipients, each as `recipient`
    copies       the CC recipients, each as `recipient`
    date         the letter's date in the recipient's language ("7 November 2017")
    place        where the letter is written, from letter.toml ("" if none)
    sender       the [sender] table of letter.toml
    campaign     the campaign (name, sender)
    original     in a follow-up, the first letter as this recipient got it: campaign, subject,
                 date (in their language), sent_at, message_id; {} otherwise
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import phonenumbers
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from outreach.errors import AttachmentError, OutreachError, TemplateError
from outreach.salutations import country_name, display_name, format_date, salutation

SETTINGS = "letter.toml"
SUBJECT = "letter.toml:subject"  # the subject template's name in error messages
TEXT = "body.txt"
HTML = "body.html"
_FILES = ((SETTINGS, True), (TEXT, True), (HTML, False))
KEYS = {
    "subject": str,
    "place": str,
    "attachments": list,
    "sender": dict,
    "pdf_filename": str,
    "max_pages": int,
}
# Countries whose addresses put the city before the postcode.
CITY_FIRST = {"GB", "IE", "US", "CA", "AU"}


@dataclass(frozen=True)
class LetterTemplate:
    """A template folder as read: the sources, the attachment paths and the letter data."""

    folder: Path
    subject: str
    text: str
    html: str | None
    attachments: tuple[Path, ...] = ()
    place: str = ""
    sender: dict[str, Any] = field(default_factory=dict)
    pdf_filename: str = ""
    max_pages: int = 0  # 0: no limit


@dataclass(frozen=True)
class RenderedLetter:
    subject: str
    text: str
    html: str | None


def load_template(folder: Path) -> LetterTemplate:
    """Read a template folder, raising its first problem (TemplateError, AttachmentError)."""
    template, problems = _read(folder)
    if problems:
        raise problems[0]
    assert template is not None
    return template


def template_problems(folder: Path) -> list[str]:
    """Every problem of a template folder at once, compile errors included; [] if none."""
    template, problems = _read(folder)
    if template is not None:
        problems += _compile(template)[1]
    return [str(p) for p in problems]


def _read(folder: Path) -> tuple[LetterTemplate | None, list[OutreachError]]:
    """The template (None when it cannot be built) and every problem found."""
    if not folder.is_dir():
        return None, [TemplateError(f"{folder}: no such template folder")]
    problems: list[OutreachError] = []
    settings_source, text, html = (
        _source(folder / name, problems, required) for name, required in _FILES
    )
    if settings_source is None or text is None:
        return None, problems
    try:
        settings = tomllib.loads(settings_source)
    except tomllib.TOMLDecodeError as exc:  # its message gives the line and column
        return None, [*problems, TemplateError(f"{folder / SETTINGS}: {exc}")]
    problems += _settings_problems(folder / SETTINGS, settings)
    if not isinstance(settings.get("subject"), str):
        return None, problems
    attachments = _attachments(folder, settings.get("attachments"), problems)
    template = LetterTemplate(
        folder=folder,
        subject=settings["subject"],
        text=text,
        html=html,
        attachments=attachments,
        place=_typed(settings, "place", str, ""),
        sender=_typed(settings, "sender", dict, {}),
        pdf_filename=_typed(settings, "pdf_filename", str, ""),
        max_pages=_typed(settings, "max_pages", int, 0),
    )
    return template, problems


def _source(path: Path, problems: list[OutreachError], required: bool) -> str | None:
    """A file's text, or None; a missing required or undecodable file is a problem."""
    if not path.is_file():
        if required:
            problems.append(TemplateError(f"{path}: missing"))
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(TemplateError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"))
        return None


def _typed(settings: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = settings.get(key, default)
    return value if isinstance(value, kind) else default


def _settings_problems(path: Path, settings: dict[str, Any]) -> list[OutreachError]:
    """Wrong or missing keys of letter.toml, typos included."""
    problems: list[OutreachError] = [
        TemplateError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})")
        for key in settings
        if key not in KEYS
    ]
    for key, kind in KEYS.items():
        if key in settings and not isinstance(settings[key], kind):
            problems.append(TemplateError(f"{path}: {key!r} must be a {kind.__name__}"))
    if "subject" not in settings:
        problems.append(TemplateError(f"{path}: 'subject' is missing"))
    return problems


def _attachments(folder: Path, names: Any, problems: list[OutreachError]) -> tuple[Path, ...]:
    """Resolve the fixed attachments; each must be a file inside the folder, symlinks followed."""
    if not isinstance(names, list):
        return ()  # absent, or reported by _settings_problems
    root = folder.resolve()
    paths: list[Path] = []
    for name in names:
        where = f"{folder / SETTINGS}: attachment {name!r}"
        if not isinstance(name, str) or not name:
            problems.append(AttachmentError(f"{where} must be a relative path"))
            continue
        path = (root / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(root):
            problems.append(AttachmentError(f"{where} is outside the template folder"))
        elif not path.is_file():
            problems.append(AttachmentError(f"{where} not found"))
        else:
            paths.append(path)
    return tuple(paths)


CONTEXT_KEYS = (
    *("recipient", "salutation", "principals", "copies", "date", "place", "sender", "campaign"),
    "original",
)


def variables(template: LetterTemplate) -> frozenset[str]:
    """The context names the folder's templates use (the PDF layout's too): what a worker
    need not prepare, e.g. the To and CC lists of a mass mailing that never prints them."""
    sources = [template.subject, template.text, template.html or ""]
    layout = template.folder / "letter.html"
    if layout.is_file():
        sources.append(layout.read_text(encoding="utf-8"))
    env = _environment()
    names: set[str] = set()
    for source in sources:
        try:
            names |= meta.find_undeclared_variables(env.parse(source))
        except TemplateSyntaxError:
            return frozenset(CONTEXT_KEYS)  # reported elsewhere; assume everything is used
    return frozenset(names)


def _environment() -> ImmutableSandboxedEnvironment:
    """The sandbox. No loader: a template cannot include another (nor a text one into HTML)."""
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html",), default=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _compile(template: LetterTemplate) -> tuple[dict[str, Template], list[OutreachError]]:
    """Compile subject, text and HTML; the compiled templates and the syntax errors."""
    sources = {SUBJECT: template.subject, TEXT: template.text}
    if template.html is not None:
        sources[HTML] = template.html
    compiled: dict[str, Template] = {}
    problems: list[OutreachError] = []
    for name, source in sources.items():
        try:
            compiled[name] = compile_named(name, source)
        except TemplateError as exc:
            problems.append(exc)
    return compiled, problems


def compile_named(name: str, source: str) -> Template:
    """One template of the folder in the sandbox (the PDF layout uses it too); TemplateError."""
    env = _environment()
    try:  # named, so that errors and traceback frames carry the file name
        code = env.compile(source, name=name, filename=name)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{name} line {exc.lineno}: {exc.message}") from exc
    return env.template_class.from_code(env, code, env.make_globals(None))


def render_named(template: Template, name: str, context: Mapping[str, Any]) -> str:
    """Render a template compiled by `compile_named`; any error becomes a TemplateError."""
    try:
        return template.render(context)
    except Exception as exc:  # anything a template raises is the template's problem
        line = _line(exc, name)
        where = f"{name} line {line}" if line is not None else name
        jinja = type(exc).__module__.startswith("jinja2")
        reason = str(exc) if jinja else f"{type(exc).__name__}: {exc}"
        raise TemplateError(f"{where}: {reason}") from exc


def _line(exc: BaseException, name: str) -> int | None:
    """The innermost line of template `name` in the traceback (Jinja2 rewrites the frames)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class LetterRenderer:
    """A template compiled once, rendered for many recipients."""

    def __init__(self, template: LetterTemplate) -> None:
        self.template = template
        self._compiled, problems = _compile(template)
        if problems:
            raise problems[0]

    def _render(self, name: str, context: Mapping[str, Any]) -> str:
        return render_named(self._compiled[name], name, context)

    def render(self, context: Mapping[str, Any]) -> RenderedLetter:
        """Subject, text and HTML for one context (see the module docstring); TemplateError."""
        subject = self._render(SUBJECT, context).strip()
        if "\r" in subject or "\n" in subject:
            raise TemplateError(f"{SUBJECT}: renders to more than one line: {subject!r}")
        if not subject:
            raise TemplateError(f"{SUBJECT}: renders empty")
        text = self._render(TEXT, context)
        html = self._render(HTML, context) if HTML in self._compiled else None
        return RenderedLetter(subject=subject, text=text, html=html)


def _field(recipient: Any, name: str) -> Any:
    if isinstance(recipient, Mapping):
        return recipient.get(name)
    return getattr(recipient, name, None)


def _phone(number: str) -> str:
    """E.164 as people read it ("+49 30 22772600"); as given when it does not parse."""
    if not number:
        return ""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def _address_block(view: Mapping[str, Any]) -> list[str]:
    """The lines of a postal address, top to bottom, empty ones left out."""
    city, postcode = view["city"], view["postcode"]
    town = f"{city} {postcode}" if view["country"] in CITY_FIRST else f"{postcode} {city}"
    lines = [
        view["organisation"],
        view["department"],
        view["position"],
        view["display_name"],
        *view["address_lines"],
        town,
        view["country_name"],
    ]
    return [line.strip() for line in lines if line.strip()]


def recipient_view(recipient: Any) -> dict[str, Any]:
    """A recipient (model, or any mapping or object with its fields) as plain template data."""

    def text(name: str) -> str:
        return str(_field(recipient, name) or "").strip()

    names = {k: text(k) for k in ("honorific", "given_name", "family_name")}
    language = text("language") or "en"
    country = text("country").upper()
    view: dict[str, Any] = {
        **names,
        "full_name": " ".join(n for n in (names["given_name"], names["family_name"]) if n),
        "display_name": display_name(**names),
        "is_person": bool(names["family_name"]),
        **{k: text(k) for k in ("position", "organisation", "department", "city", "postcode")},
        "address_lines": [str(line) for line in _field(recipient, "address_lines") or []],
        "country": country,
        "country_name": country_name(country, language),
        "email": text("email"),
        "phone": _phone(text("phone")),
        "fax": _phone(text("fax")),
        "language": language,
        "tags": [str(tag) for tag in _field(recipient, "tags") or []],
    }
    view["salutation"] = salutation(
        **names, position=view["position"], language=language, override=text("salutation")
    )
    view["address_block"] = _address_block(view)
    return view


def build_context(
    *,
    recipient: Mapping[str, Any],
    campaign: Mapping[str, Any],
    sender: Mapping[str, Any],
    principals: Sequence[Mapping[str, Any]],
    copies: Sequence[Mapping[str, Any]],
    letter_date: date,
    place: str,
    original: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The context for one recipient's copy; `recipient` and the lists are `recipient_view`s."""
    return {
        "original": original or {},
        "recipient": recipient,
        "salutation": recipient["salutation"],
        "principals": principals,
        "copies": copies,
        "date": format_date(letter_date, recipient["language"]),
        "place": place,
        "sender": sender,
        "campaign": campaign,
    }
