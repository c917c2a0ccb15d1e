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

WeasyPrint itself (a third of a second to import) is imported only when a letter is first laid
out (`typeset.py`), so that the commands that lay out none start without it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outreach.compose import Attachment
from outreach.errors import OutreachError, TemplateError

if TYPE_CHECKING:
    from outreach.typeset import PdfRenderer

LAYOUT = "letter.html"
PX_PER_MM = 96 / 25.4  # WeasyPrint lays out in CSS pixels
PARALLEL_FROM = 24  # letters per extra process: starting one (importing WeasyPrint) takes ~1 s


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
class Letter:
    """A recipient's letter as attached, and the digest of everything it was rendered from:
    two letters with one key are the same bytes, so a letter rendered ahead stands in for a
    render at send time exactly while the key still matches."""

    key: str
    attachment: Attachment


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
    return _prepared(root, folder_fingerprint(root))


@lru_cache(maxsize=16)
def _prepared(root: Path, fingerprint: str) -> PdfRenderer:
    return load_renderer()(root, fingerprint)


def load_renderer() -> type[PdfRenderer]:
    """WeasyPrint's side, imported at the first letter laid out. A worker's parent imports it
    before its pool forks (`workers.app`), so that its processes share it."""
    from outreach.typeset import PdfRenderer

    return PdfRenderer


def folder_fingerprint(root: Path) -> str:
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
