"""Letters per second for a two-page PDF letter (the open letter without its CC page), in one
process and in a pool of processes, as workers render them. Run by hand:

    .venv/bin/python benchmarks/pdf_letters.py --letters 200 --processes 2
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from outreach.letters import build_context, load_template, recipient_view  # noqa: E402
from outreach.pdf import renderer_for  # noqa: E402

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
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    render(range(-3, 0))  # warm up: fonts, stylesheet, images prepared once
    started = time.perf_counter()
    pages = render(range(args.letters))
    single = args.letters / (time.perf_counter() - started)
    assert pages == 2, f"the benchmark letter should have two pages, not {pages}"
    chunks = [range(i, args.letters, args.processes) for i in range(args.processes)]
    with ProcessPoolExecutor(args.processes) as pool:
        list(pool.map(render, [range(-2, 0)] * args.processes))  # warm up each process
        started = time.perf_counter()
        list(pool.map(render, chunks))
        pooled = args.letters / (time.perf_counter() - started)
    print(f"two-page letter: {single:.1f} letters/s in 1 process ({1000 / single:.0f} ms each); "
          f"{pooled:.1f} letters/s in {args.processes} processes")  # fmt: skip


if __name__ == "__main__":
    main()
