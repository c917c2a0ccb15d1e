"""A letter's layout typeset as PDF by WeasyPrint: the one module that imports it (`pdf.py` says
why WeasyPrint, and imports this only when a letter is first laid out).

Deterministic bytes: the creation and modification dates are the letter's date; WeasyPrint writes
no file identifier; fonts are subset by HarfBuzz, or by fontTools, which stamps them with
SOURCE_DATE_EPOCH, set to the letter's date while the PDF is written. The same context therefore
gives the same bytes, so `preview --pdf` writes exactly what a recipient is sent.

What is prepared once per process and folder (keyed by the folder's files, so an edit is seen):
the compiled templates, the parsed stylesheet, the font configuration and the image cache.
Renders take a lock: WeasyPrint's shared caches are not meant for threads, and rendering is
CPU-bound, so the lock costs nothing; a worker process renders its own letters in parallel.

Resources are read only from the template folder: a `file:` URL outside it, a missing file or a
network URL is an error naming the URL (`data:` URLs are allowed). Overflow is an error too: the
address block (the elements with ids `address` and `address-end`, its first and last point) must
lie inside the window of a DIN 5008 form B envelope, and the letter within `max_pages`.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import mimetypes
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from weasyprint import CSS, HTML, URLFetcher
from weasyprint.document import Document
from weasyprint.text.fonts import FontConfiguration
from weasyprint.urls import FatalURLFetchingError, URLFetcherResponse

from outreach.compose import Attachment
from outreach.errors import OutreachError, TemplateError
from outreach.letters import compile_named, load_template, render_named
from outreach.pdf import DIN_5008_B, LAYOUT, PX_PER_MM, Letter, folder_fingerprint, with_date

STYLESHEET = "letter.css"
FILENAME = "letter.toml:pdf_filename"  # the file name template's name in error messages
DEFAULT_FILENAME = "Letter-{{ date_iso }}.pdf"
UNSAFE_IN_NAMES = set('/\\:*?"<>|')
_LOCK = threading.RLock()

# WeasyPrint reports each unsupported CSS property and failed fetch as a warning; outreach reports
# the fetches itself, with the template's name.
logging.getLogger("weasyprint").setLevel(logging.ERROR)


@dataclass(frozen=True)
class LetterPdf:
    data: bytes
    pages: int


class _FolderFetcher(URLFetcher):
    """Reads files inside the template folder, and nothing else: no network, no other file."""

    def __init__(self, root: Path) -> None:
        super().__init__(allowed_protocols=("file", "data"), fail_on_errors=True)
        self._root = root

    def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
        parts = urlsplit(url)
        if parts.scheme == "data":
            return super().fetch(url, headers)
        if parts.scheme != "file":
            raise TemplateError(f"{url!r}: only files of the template folder can be used")
        path = Path(url2pathname(parts.path)).resolve()
        name = path.relative_to(self._root) if path.is_relative_to(self._root) else None
        if name is None:
            raise TemplateError(f"{path}: outside the template folder")
        if not path.is_file():
            raise TemplateError(f"{str(name)!r}: no such file in the template folder")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(url, path.read_bytes(), {"Content-Type": content_type})


@contextmanager
def _fetching(where: str) -> Iterator[None]:
    """WeasyPrint's fatal fetch error, raised again as a TemplateError with the fetcher's reason."""
    try:
        yield
    except FatalURLFetchingError as exc:
        reason = exc.__cause__ if isinstance(exc.__cause__, OutreachError) else exc
        raise TemplateError(f"{where}: {reason}") from exc


@contextmanager
def _source_date(when: date) -> Iterator[None]:
    """SOURCE_DATE_EPOCH at the letter's date while fonts are subset (fontTools reads it)."""
    saved = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(calendar.timegm(when.timetuple()))
    try:
        yield
    finally:
        if saved is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = saved


class PdfRenderer:
    """A folder's layout, stylesheet, fonts and images, prepared once; a PDF per recipient."""

    def __init__(self, folder: Path, fingerprint: str = "") -> None:
        template = load_template(folder)
        self.root = folder.resolve()
        self.fingerprint = fingerprint or folder_fingerprint(self.root)
        self.max_pages = template.max_pages
        self._layout = compile_named(LAYOUT, _source(folder / LAYOUT))
        self._filename = compile_named(FILENAME, template.pdf_filename or DEFAULT_FILENAME)
        self._fetcher = _FolderFetcher(self.root)
        self._fonts = FontConfiguration()
        self._images: dict[str, Any] = {}
        self._stylesheets = self._stylesheet()

    def _stylesheet(self) -> list[CSS]:
        """letter.css parsed once, with the fonts it declares (@font-face) loaded once."""
        path = self.root / STYLESHEET
        if not path.is_file():
            return []
        with _fetching(STYLESHEET):
            css = CSS(
                string=_source(path),
                base_url=path.as_uri(),
                url_fetcher=self._fetcher,
                font_config=self._fonts,
            )
        return [css]

    def render(self, context: Mapping[str, Any], letter_date: date) -> LetterPdf:
        """The recipient's letter; TemplateError for a template error, a missing file, overflow."""
        return self._render(self._html(context, letter_date), letter_date)

    def _html(self, context: Mapping[str, Any], letter_date: date) -> str:
        return render_named(self._layout, LAYOUT, with_date(context, letter_date))

    def _render(self, html: str, letter_date: date) -> LetterPdf:
        with _LOCK, _fetching(LAYOUT):
            document = HTML(
                string=html, base_url=(self.root / LAYOUT).as_uri(), url_fetcher=self._fetcher
            ).render(font_config=self._fonts, stylesheets=self._stylesheets, cache=self._images)
            problems = self.overflow(document)
            if problems:
                raise TemplateError(f"{LAYOUT}: {'; '.join(problems)}")
            document.metadata.created = document.metadata.modified = letter_date.isoformat()
            with _source_date(letter_date):
                data = document.write_pdf()
        return LetterPdf(data=data, pages=len(document.pages))

    def overflow(self, document: Document) -> list[str]:
        """What does not fit: the address block outside the window, pages beyond the limit."""
        problems = []
        if self.max_pages and len(document.pages) > self.max_pages:
            problems.append(
                f"the letter runs to {len(document.pages)} pages, more than max_pages = "
                f"{self.max_pages} (letter.toml)"
            )
        anchors = document.pages[0].anchors
        if "address" not in anchors or "address-end" not in anchors:
            return [*problems, "no address block on page 1 (ids 'address' and 'address-end')"]
        # An anchor is (x, y), or (x1, y1, x2, y2) in WeasyPrint 70: the top-left is the same.
        (left, top), bottom = anchors["address"][:2], anchors["address-end"][1]
        if not (DIN_5008_B.contains(left, top) and DIN_5008_B.contains(left, bottom)):
            window_bottom = DIN_5008_B.top + DIN_5008_B.height
            problems.append(
                f"the address block does not fit the envelope window: it spans "
                f"{top / PX_PER_MM:.1f}-{bottom / PX_PER_MM:.1f} mm from the top of the page, "
                f"the window {DIN_5008_B.top:g}-{window_bottom:g} mm; shorten the address"
            )
        return problems

    def filename(self, context: Mapping[str, Any], letter_date: date) -> str:
        """The attachment's name from `pdf_filename`: one line, no path, ending in .pdf."""
        name = render_named(self._filename, FILENAME, with_date(context, letter_date)).strip()
        name = "".join("-" if c in UNSAFE_IN_NAMES or ord(c) < 32 else c for c in name)
        if not name.strip(" .-"):
            raise TemplateError(f"{FILENAME}: renders to no usable file name")
        return name if name.lower().endswith(".pdf") else f"{name}.pdf"

    def letter(
        self, context: Mapping[str, Any], letter_date: date, ahead: Letter | None = None
    ) -> Letter:
        """The recipient's letter: `ahead` (rendered earlier) if it is still what this context
        gives, else rendered now. Only the layout's HTML is rendered to tell, which is cheap;
        laying it out as a PDF is what costs."""
        html = self._html(context, letter_date)
        name = self.filename(context, letter_date)
        digest = hashlib.sha256()
        for part in (self.fingerprint, letter_date.isoformat(), name, html):
            digest.update(part.encode() + b"\0")
        key = digest.hexdigest()
        if ahead is not None and ahead.key == key:
            return ahead
        data = self._render(html, letter_date).data
        return Letter(key, Attachment(filename=name, content_type="application/pdf", data=data))

    def attachment(self, context: Mapping[str, Any], letter_date: date) -> Attachment:
        """The recipient's letter as an email attachment."""
        return self.letter(context, letter_date).attachment


def _source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc
