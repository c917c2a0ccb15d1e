"""Letters per second for a two-page PDF letter (the open letter without its CC page): in one
process; on every core as `campaign check` renders them (`pdf.render_all`, process start-up
included); and what the send path pays per message for a letter kept ahead (its key checked:
the HTML rendered, not laid out) against rendering it there. Run by hand:

    .venv/bin/python benchmarks/pdf_letters.py --letters 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from outreach.letters import build_context, load_template, recipient_view  # noqa: E402
from outreach.pdf import Letter, render_all, renderer_for  # noqa: E402

TEMPLATE = ROOT / "templates" / "open_letter"
LETTER_DATE = date(2017, 11, 7)


def _context(n: int) -> dict[str, Any]:
    """The n-th recipient, each with a name and address of their own."""
    template = load_template(TEMPLATE)
    person = recipient_view({
        "honorific": "Ms", "given_name": "Anna", "family_name": f"Official {n}",
        "position": "Member of Parliament", "organisation": "Parliament",
        "address_lines": [f"Main Street {n}"], "city": "Berlin", "postcode": "11011",
        "country": "DE", "email": f"official{n}@example.org", "language": "en",
    })  # fmt: skip
    return build_context(
        recipient=person, campaign={"name": "bench", "sender": "a@example.org"},
        sender=template.sender, principals=[person], copies=[], letter_date=LETTER_DATE,
        place=template.place,
    )  # fmt: skip


def render(indices: range) -> int:
    """Render letters in this process; returns how many pages the last had."""
    renderer = renderer_for(TEMPLATE)
    assert renderer is not None
    pages = 0
    for n in indices:
        pages = renderer.render(_context(n), LETTER_DATE).pages
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--letters", type=int, default=100)
    args = parser.parse_args()
    render(range(-3, 0))  # warm up: fonts, stylesheet, images prepared once
    started = time.perf_counter()
    pages = render(range(args.letters))
    single = args.letters / (time.perf_counter() - started)
    assert pages == 2, f"the benchmark letter should have two pages, not {pages}"

    contexts = [_context(n) for n in range(args.letters)]
    started = time.perf_counter()
    letters = list(render_all(TEMPLATE, contexts, LETTER_DATE))
    pooled = args.letters / (time.perf_counter() - started)
    assert all(isinstance(letter, Letter) for letter in letters)

    renderer = renderer_for(TEMPLATE)
    assert renderer is not None
    started = time.perf_counter()
    for context, letter in zip(contexts, letters, strict=True):
        assert renderer.letter(context, LETTER_DATE, ahead=letter) is letter  # type: ignore[arg-type]
    kept_ms = 1000 * (time.perf_counter() - started) / args.letters
    inline_ms = 1000 / single
    print(f"two-page letter: {single:.1f} letters/s in 1 process ({1000 / single:.0f} ms each); "
          f"{pooled:.1f} letters/s with render_all on {os.cpu_count()} cores "
          f"({pooled / single:.2f} x one process, start-up included)\n"
          f"send path per message: {kept_ms:.2f} ms with the letter kept ahead, "
          f"{inline_ms:.0f} ms rendering it there ({inline_ms / kept_ms:.0f} x)")  # fmt: skip


if __name__ == "__main__":
    main()
