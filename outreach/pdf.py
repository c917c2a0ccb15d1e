"""Letters as PDF: a template folder's `letter.html` (+ `letter.css`) rendered for one recipient.

The layout is a Jinja2 template compiled in the same sandbox as the email (`letters.py`) and sees
the same context, plus `date_iso` ("2017-11-07"). `letter.css` is parsed once and applied to every
copy; the layout does not link it. The PDF's name comes from `pdf_filename` in letter.toml (a
template too); `max_pages` there limits the length.

Why WeasyPrint: the letter is written as HTML and CSS like the email, so one template language and
one set of skills cover both; CSS Paged Media gives what a letter needs (A4 `@page`, a running
letterhead, page numbers, `float: footnote` for numbered footnotes, exact millimetre positions for
the window envelope) and it embeds subset fonts, keeps links clickable and needs no browser. The
alternatives: a headless Chromium (hundreds of MB, no footnotes, cannot be installed from PyPI or
Debian here), ReportLab (layout written in Python, not a template the team can edit), LaTeX
(a second template language and a large toolchain). WeasyPrint needs Debian's Pango (libpango-1.0-0,
libpangoft2-1.0-0), and libharfbuzz-subset0 for fast, deterministic font subsetting; fonts come
from fontconfig (fonts-dejavu-core).

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
import multiprocessing
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
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

LAYOUT = "letter.html"
STYLESHEET = "letter.css"
FILENAME = "letter.toml:pdf_filename"  # the file name template's name in error messages
DEFAULT_FILENAME = "Letter-{{ date_iso }}.pdf"
PX_PER_MM = 96 / 25.4  # WeasyPrint lays out in CSS pixels
PARALLEL_FROM = 24  # letters per extra process: starting one (importing WeasyPrint) takes ~1 s
UNSAFE_IN_NAMES = set('/\\:*?"<>|')
_LOCK = threading.RLock()

# WeasyPrint reports each unsupported CSS property and failed fetch as a warning; outreach reports
# the fetches itself, with the template's name.
logging.getLogger("weasyprint").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Window:
    """The envelope's window on the folded sheet, in millimetres from the page's top-left."""

    left: float
    top: float
    width: float
    height: float

    def contains(self, x_px: float, y_px: float) -> bool:
        """Whether a point (CSS pixels from the top-left of the page) lies in the window."""
        x, y, slack = x_px / PX_PER_MM, y_px / PX_PER_MM, 0.1
        return (
            self.left - slack <= x <= self.left + self.width + slack
            and self.top - slack <= y <= self.top + self.height + slack
        )


# DIN 5008 form B: the address field of an A4 letter for DL and C5/6 window envelopes.
DIN_5008_B = Window(left=20, top=45, width=85, height=45)


@dataclass(frozen=True)
class LetterPdf:
    data: bytes
    pages: int


@dataclass(frozen=True)
class Letter:
    """A recipient's letter as attached, and the digest of everything it was rendered from:
    two letters with one key are the same bytes, so a letter rendered ahead stands in for a
    render at send time exactly while the key still matches."""

    key: str
    attachment: Attachment


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
        self.fingerprint = fingerprint or _fingerprint(self.root)
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


def render_all(
    folder: Path, contexts: Sequence[Mapping[str, Any]], letter_date: date
) -> Iterator[Letter | str]:
    """Each context's letter (or why it cannot be rendered), in order: in one process per core
    when there are many, since laying out is CPU-bound and a campaign's check renders every
    letter. The processes are spawned, not forked: each prepares the folder's renderer itself
    (same files, same key) instead of inheriting WeasyPrint's state mid-flight."""
    jobs = [(str(folder), dict(context), letter_date) for context in contexts]
    processes = min(os.cpu_count() or 1, len(jobs) // PARALLEL_FROM)
    if processes <= 1:
        yield from map(_render_job, jobs)
        return
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(_render_job, jobs, chunksize=4)
    finally:
        pool.shutdown(cancel_futures=True)  # stopped early (an error, Ctrl-C): render no more


def _render_job(job: tuple[str, dict[str, Any], date]) -> Letter | str:
    folder, context, letter_date = job
    try:
        renderer = renderer_for(Path(folder))
        if renderer is None:
            raise TemplateError(f"{folder}: no letter layout ({LAYOUT})")
        return renderer.letter(context, letter_date)
    except OutreachError as exc:
        return str(exc)


def _source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc


def with_date(context: Mapping[str, Any], letter_date: date) -> dict[str, Any]:
    """The email's context plus the letter's date as ISO 8601, for file names."""
    return {**context, "date_iso": letter_date.isoformat()}


def has_layout(folder: Path) -> bool:
    return (folder / LAYOUT).is_file()


def renderer_for(folder: Path) -> PdfRenderer | None:
    """The folder's prepared renderer (None without a layout), shared while its files are as they
    were (TemplateError, AttachmentError)."""
    if not has_layout(folder):
        return None
    root = folder.resolve()
    return _prepared(root, _fingerprint(root))


@lru_cache(maxsize=16)
def _prepared(root: Path, fingerprint: str) -> PdfRenderer:
    return PdfRenderer(root, fingerprint)


def _fingerprint(root: Path) -> str:
    """Names, sizes and modification times of the folder's files: changes when one is edited."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def layout_problems(folder: Path) -> list[str]:
    """What keeps the layout from being prepared (syntax, stylesheet, fonts); [] if none."""
    try:
        renderer_for(folder)
    except OutreachError as exc:
        return [str(exc)]
    return []
