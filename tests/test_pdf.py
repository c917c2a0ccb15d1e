"""PDF letters: rendered for real with WeasyPrint, read back with poppler's pdftotext and pypdf.

No mocks: each test renders the open letter (or a copy of its folder, changed) and reads the text,
its positions on the page, the links and the metadata back from the PDF bytes.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pypdf import PdfReader

from outreach.errors import TemplateError
from outreach.letters import build_context, load_template, recipient_view
from outreach.pdf import DIN_5008_B, layout_problems, renderer_for
from outreach.typeset import PdfRenderer
from tests.smtpd import RecordingServer
from tests.test_send_pipeline import TEMPLATE, create, letter_env, outreach, parsed  # noqa: F401

LETTER_DATE = date(2017, 11, 7)
MM_PER_PT = 25.4 / 72


def _recipients() -> list[dict[str, Any]]:
    """The model letter's recipients as template data, from its CSV."""
    with (TEMPLATE / "recipients.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["address_lines"] = [
            row[f"address_line{n}"] for n in (1, 2, 3) if row[f"address_line{n}"]
        ]
        row["tags"] = [row["tags"]]
    return [recipient_view(row) for row in rows]


VIEWS = {view["family_name"] or view["department"]: view for view in _recipients()}


def context(view: dict[str, Any], folder: Path = TEMPLATE) -> dict[str, Any]:
    template = load_template(folder)
    views = list(VIEWS.values())
    return build_context(
        recipient=view,
        campaign={"name": "open-letter", "sender": "Open Dialog <office@odfoundation.example>"},
        sender=template.sender,
        principals=[v for v in views if "principal" in v["tags"]],
        copies=[v for v in views if "cc" in v["tags"]],
        letter_date=LETTER_DATE,
        place=template.place,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the open letter's folder, for tests that change it."""
    copy = tmp_path / "open_letter"
    shutil.copytree(TEMPLATE, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")


def pdftotext(pdf: bytes, tmp_path: Path, *args: str) -> str:
    path = tmp_path / f"letter-{time.monotonic_ns()}.pdf"
    path.write_bytes(pdf)
    result = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", *args, str(path), "-"],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return result.stdout


def window_text(pdf: bytes, tmp_path: Path) -> list[str]:
    """The text of page 1 inside the DIN 5008 window, cropped at 72 dpi (one pixel a point)."""
    w = DIN_5008_B
    crop = [round(v / MM_PER_PT) for v in (w.left, w.top, w.width, w.height)]
    text = pdftotext(
        pdf, tmp_path, "-f", "1", "-l", "1", "-r", "72",
        "-x", str(crop[0]), "-y", str(crop[1]), "-W", str(crop[2]), "-H", str(crop[3]),
    )  # fmt: skip
    return [line.strip() for line in text.splitlines() if line.strip()]


def words(pdf: bytes, tmp_path: Path) -> list[tuple[str, float, float, float, float]]:
    """Page 1's words with their boxes in millimetres: (word, left, top, right, bottom)."""
    html = pdftotext(pdf, tmp_path, "-f", "1", "-l", "1", "-bbox")
    pattern = (
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>'
    )
    return [
        (text, *(float(v) * MM_PER_PT for v in box)) for *box, text in re.findall(pattern, html)
    ]


def test_address_block_lies_inside_the_window(tmp_path: Path) -> None:
    pdf = renderer_for(TEMPLATE).render(context(VIEWS["Jagland"]), LETTER_DATE).data  # type: ignore[union-attr]
    w = DIN_5008_B
    found = [
        entry for entry in words(pdf, tmp_path) if entry[0] in {"67075", "Strasbourg", "France"}
    ]
    assert {entry[0] for entry in found} == {"67075", "Strasbourg", "France"}
    for _text, left, top, right, bottom in found:
        assert w.left <= left and right <= w.left + w.width
        assert w.top <= top and bottom <= w.top + w.height


def test_the_page_as_printed_shows_the_address_inside_the_window_and_nothing_cut(
    tmp_path: Path,
) -> None:
    """Page 1 rasterised by poppler (`pdftoppm`, PNG at 72 dpi: a pixel a point): the address's
    words are inked where the PDF says they are, inside the window, and no ink crosses the
    window's edges, so nothing is cut off when the letter is folded into the envelope."""
    pdf = renderer_for(TEMPLATE).render(context(VIEWS["Jagland"]), LETTER_DATE).data  # type: ignore[union-attr]
    (tmp_path / "letter.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-png", "-r", "72", "-f", "1", "-l", "1", "-singlefile",
         str(tmp_path / "letter.pdf"), str(tmp_path / "page")],
        check=True,
    )  # fmt: skip
    page = Image.open(tmp_path / "page.png").convert("L")
    assert page.size in {(595, 842), (596, 842)}  # A4 in points (210 mm: 595.3 pt)

    def ink(box: tuple[float, float, float, float]) -> int:
        """Dark pixels in a box given in millimetres (left, top, right, bottom)."""
        region = page.crop(tuple(round(v / MM_PER_PT) for v in box))
        return sum(region.histogram()[:128])

    w = DIN_5008_B
    right, bottom = w.left + w.width, w.top + w.height
    address = [e for e in words(pdf, tmp_path) if e[0] in {"67075", "Strasbourg", "France"}]
    assert len(address) == 3
    for _word, *box in address:
        assert ink(tuple(box)) > 10  # drawn where the PDF reports it
        assert w.left <= box[0] and box[2] <= right and w.top <= box[1] and box[3] <= bottom
    edges = [
        (w.left - 0.5, w.top, w.left + 0.5, bottom), (right - 0.5, w.top, right + 0.5, bottom),
        (w.left, w.top - 0.5, right, w.top + 0.5), (w.left, bottom - 0.5, right, bottom + 0.5),
    ]  # fmt: skip
    assert [ink(edge) for edge in edges] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "name", ["Jagland", "Kyriakides", "Schäuble", "Gabriel", "Büro Axel E. Fischer"]
)
def test_each_letter_has_its_own_address_salutation_date_and_footnotes(
    name: str, tmp_path: Path
) -> None:
    view = VIEWS[name]
    letter = renderer_for(TEMPLATE).render(context(view), LETTER_DATE)  # type: ignore[union-attr]
    window = window_text(letter.data, tmp_path)
    return_address = load_template(TEMPLATE).sender["return_address"]
    # the return address, then this recipient's address, and nothing else, in the window
    assert " ".join(window) == " ".join([return_address, *view["address_block"]])
    text = pdftotext(letter.data, tmp_path)
    assert f"{view['salutation']}," in text
    assert "Warsaw, 7 November 2017" in text or "Warsaw, 7. November 2017" in text
    for n, url in enumerate(
        ["assembly.coe.int/nw/xml/News", "en.odfoundation.eu/a/8423", "FileID=23716",
         "fileid=24151", "rus.azattyq.org"], start=1,
    ):  # fmt: skip
        assert re.search(rf"^{n}\. \S*{re.escape(url)}", text, re.M), f"footnote {n}"
    assert letter.pages == 3


def test_date_and_salutation_in_the_recipients_language(tmp_path: Path) -> None:
    letter = renderer_for(TEMPLATE).render(context(VIEWS["Schäuble"]), LETTER_DATE)  # type: ignore[union-attr]
    text = pdftotext(letter.data, tmp_path)
    assert "Sehr geehrter Herr Präsident," in text
    assert "Warsaw, 7. November 2017" in text


def test_footnotes_are_links() -> None:
    letter = renderer_for(TEMPLATE).render(context(VIEWS["Jagland"]), LETTER_DATE)  # type: ignore[union-attr]
    reader = PdfReader(io.BytesIO(letter.data))
    uris = {
        annotation.get_object()["/A"]["/URI"]
        for page in reader.pages
        for annotation in page.get("/Annots", [])
        if "/URI" in annotation.get_object().get("/A", {})
    }
    assert "https://rus.azattyq.org/a/atambaev-nazarbayev-vybory/28780324.html" in uris
    assert "mailto:axel.fischer@bundestag.de" in uris  # the CC list


def test_rendering_is_deterministic_and_dated_by_the_letter(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = PdfRenderer(folder).render(context(VIEWS["Gabriel"]), LETTER_DATE).data
    time.sleep(1.1)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the letter's date wins over any
    again = PdfRenderer(folder).render(context(VIEWS["Gabriel"]), LETTER_DATE).data
    assert again == first
    assert os.environ["SOURCE_DATE_EPOCH"] == "1700000000"  # put back as it was
    info = PdfReader(io.BytesIO(first)).metadata
    assert info is not None and info.creation_date is not None
    assert info.creation_date.date() == LETTER_DATE


def test_a_letter_longer_than_max_pages_is_refused(folder: Path) -> None:
    edit(folder / "letter.toml", "max_pages = 4", "max_pages = 2")
    with pytest.raises(TemplateError, match="runs to 3 pages, more than max_pages = 2"):
        PdfRenderer(folder).render(context(VIEWS["Jagland"], folder), LETTER_DATE)


def test_an_address_of_twelve_lines_does_not_fit_the_window() -> None:
    view = recipient_view({**VIEWS["Gabriel"], "address_lines": [f"Line {n}" for n in range(7)]})
    assert len(view["address_block"]) == 12
    with pytest.raises(TemplateError, match="address block does not fit the envelope window"):
        renderer_for(TEMPLATE).render(context(view), LETTER_DATE)  # type: ignore[union-attr]


def test_a_missing_variable_names_the_layout_and_line(folder: Path) -> None:
    edit(folder / "letter.html", "{{ office.name }}", "{{ office.nam }}")
    with pytest.raises(TemplateError, match=r"letter\.html line 12: .*has no attribute 'nam'"):
        PdfRenderer(folder).render(context(VIEWS["Jagland"], folder), LETTER_DATE)


def test_a_syntax_error_is_a_layout_problem(folder: Path) -> None:
    edit(folder / "letter.html", "{% endfor %}", "{% endfo %}")
    (problem,) = layout_problems(folder)
    assert problem.startswith("letter.html line")


def test_an_image_that_is_not_there_is_an_error(folder: Path) -> None:
    edit(folder / "letter.html", 'src="logo.svg"', 'src="images/seal.png"')
    with pytest.raises(TemplateError, match=r"letter\.html: 'images/seal\.png': no such file"):
        PdfRenderer(folder).render(context(VIEWS["Jagland"], folder), LETTER_DATE)


@pytest.mark.parametrize(
    ("src", "reason"),
    [("../secret.png", "outside the template folder"),
     ("http://127.0.0.1:9/logo.png", "only files of the template folder")],
)  # fmt: skip
def test_images_come_only_from_the_template_folder(folder: Path, src: str, reason: str) -> None:
    (folder.parent / "secret.png").write_bytes(b"\x89PNG")
    edit(folder / "letter.html", 'src="logo.svg"', f'src="{src}"')
    with pytest.raises(TemplateError, match=reason):
        PdfRenderer(folder).render(context(VIEWS["Jagland"], folder), LETTER_DATE)


def test_file_name_from_the_template_keeps_non_ascii_and_drops_slashes(folder: Path) -> None:
    renderer = renderer_for(TEMPLATE)
    assert renderer is not None
    assert renderer.filename(context(VIEWS["Schäuble"]), LETTER_DATE) == (
        "Open-letter-Schäuble-2017-11-07.pdf"
    )
    edit(folder / "letter.toml", "{{ date_iso }}.pdf", "{{ date_iso }}/x")
    name = PdfRenderer(folder).filename(context(VIEWS["Gabriel"], folder), LETTER_DATE)
    assert name == "Open-letter-Gabriel-2017-11-07-x.pdf"


def test_prepared_once_per_folder_until_a_file_changes(folder: Path) -> None:
    first = renderer_for(folder)
    assert first is not None and renderer_for(folder) is first
    css = folder / "letter.css"
    css.write_text(css.read_text() + "\n/* edited */\n")
    os.utime(css, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert renderer_for(folder) is not first
    (folder / "letter.html").unlink()
    assert renderer_for(folder) is None


def test_each_sent_message_carries_the_pdf_that_preview_writes(
    letter_env: dict[str, str],  # noqa: F811
    smtp_server: RecordingServer,
    tmp_path: Path,
) -> None:
    create(letter_env)
    outreach(letter_env, "campaign", "send", "open-letter", "--yes")
    assert len(smtp_server.messages) == 4
    seen: set[bytes] = set()
    for received in smtp_server.messages:
        message = parsed(received.data)
        address = message["To"].addresses[0].addr_spec
        (letter,) = [
            p
            for p in message.iter_attachments()
            if p.get_filename().startswith("Open-letter-")
            and p.get_filename() != "Open-letter-2017-11-07.pdf"
        ]
        written = tmp_path / f"{address}.pdf"
        outreach(letter_env, "campaign", "preview", "open-letter", "--recipient", address,
                 "--pdf", str(written))  # fmt: skip
        assert letter.get_content() == written.read_bytes()
        seen.add(written.read_bytes())
    assert len(seen) == 4  # each its own
    names = {
        p.get_filename() for r in smtp_server.messages for p in parsed(r.data).iter_attachments()
    }
    assert "Open-letter-Schäuble-2017-11-07.pdf" in names


def test_bad_layout_stops_check_and_send(
    letter_env: dict[str, str],  # noqa: F811
    smtp_server: RecordingServer,
    folder: Path,
    database_url: str,
) -> None:
    edit(folder / "letter.html", "{{ office.name }}", "{{ office.nam }}")
    edit(folder / "letter.html", 'src="logo.svg"', 'src="missing.png"')
    outreach(
        letter_env, "campaign", "create", "bad", "--template", str(folder),
        "--to", "tag:principal", "--cc", "tag:cc", "--from", "Open Dialog <office@od.example>",
    )  # fmt: skip
    checked = outreach(letter_env, "campaign", "check", "bad", check=False)
    assert checked.returncode == 65
    assert "letter.html line 12" in checked.stderr and "has no attribute 'nam'" in checked.stderr
    sent = outreach(letter_env, "campaign", "send", "bad", "--yes", check=False)
    assert sent.returncode == 65 and "nothing was sent" in sent.stderr
    assert smtp_server.messages == []


def test_an_overlong_address_and_a_missing_image_are_reported_by_check(
    letter_env: dict[str, str],  # noqa: F811
    smtp_server: RecordingServer,
    folder: Path,
    tmp_path: Path,
) -> None:
    edit(folder / "letter.html", 'src="logo.svg"', 'src="missing.png"')
    people = tmp_path / "long.yaml"
    lines = ", ".join(f"Corridor {n}" for n in range(7))
    people.write_text(
        "- {honorific: Ms, given_name: Ada, family_name: Long, organisation: Ministry,\n"
        "   department: Cabinet, position: Minister, address_lines: [" + lines + "],\n"
        "   city: Vilnius, postcode: LT-01103, country: LT, email: ada.long@example.org,\n"
        "   tags: [principal]}\n",
        encoding="utf-8",
    )
    outreach(letter_env, "recipients", "import", str(people))
    outreach(
        letter_env, "campaign", "create", "long", "--template", str(folder),
        "--to", "email:ada.long@example.org", "--from", "Open Dialog <office@od.example>",
    )  # fmt: skip
    checked = outreach(letter_env, "campaign", "check", "long", check=False)
    assert checked.returncode == 65
    problems = " ".join(checked.stderr.split())
    assert "'missing.png': no such file in the template folder" in problems
    sent = outreach(letter_env, "campaign", "send", "long", "--yes", check=False)
    assert sent.returncode == 65 and smtp_server.messages == []
    edit(folder / "letter.html", 'src="missing.png"', 'src="logo.svg"')
    checked = outreach(letter_env, "campaign", "check", "long", check=False)
    assert "does not fit the envelope window" in " ".join(checked.stderr.split())
