"""The `outreach` command on bad input: one clear error per problem, exit code, nothing written.

These run the CLI in-process (typer's runner) on the commands that start no worker."""

from __future__ import annotations

import email
import email.policy
import shutil
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from outreach import campaigns, db, deliveries
from outreach.cli import app
from outreach.config import load_settings
from outreach.models import Campaign, Delivery, Recipient, Status, utcnow
from tests.smtpd import RecordingServer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "open_letter"
FROM = "Open Dialog Foundation <office@odfoundation.example>"


@pytest.fixture
def cli(env: dict[str, str], database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("OUTREACH_DATABASE_URL", database_url)
    return CliRunner()


def run(cli: CliRunner, *args: str, code: int = 0) -> str:
    result = cli.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def count(url: str, model: type) -> int:
    with db.session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_import_with_a_bad_row_names_file_row_field_and_writes_nothing(
    cli: CliRunner, database_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "officials.csv"
    bad.write_text(
        textwrap.dedent("""\
            family_name,organisation,email,tags
            Jagland,Council of Europe,thorbjorn.jagland@coe.int,principal
            Kyriakides,Council of Europe,stella.kyriakides(at)coe.int,principal
            ,,,cc
        """)
    )
    output = run(cli, "recipients", "import", str(bad), code=65)
    assert "officials.csv: row 3: email" in output
    assert "officials.csv: row 4" in output  # every problem, not only the first
    assert count(database_url, Recipient) == 0
    output = run(cli, "recipients", "import", str(bad), "--skip-invalid")
    assert "1 created" in output and "2 row(s) skipped" in output


def test_check_reports_every_problem_at_once_and_send_refuses(
    cli: CliRunner, database_url: str, tmp_path: Path, smtp_server: RecordingServer
) -> None:
    template = tmp_path / "broken"
    shutil.copytree(TEMPLATE, template)
    body = template / "body.txt"
    body.write_text(body.read_text() + "\n{{ recipient.nickname }}\n")
    run(cli, "recipients", "import", str(TEMPLATE / "recipients.csv"))
    run(cli, "campaign", "create", "broken", "--template", str(template),
        "--to", "tag:principal", "--cc", "tag:cc", "--from", FROM)  # fmt: skip
    output = run(cli, "campaign", "check", "broken", code=65)
    line = len(body.read_text().splitlines())
    for name in ("Thorbjørn Jagland", "Stella Kyriakides", "Wolfgang Schäuble"):
        assert name in output
    assert output.count(f"body.txt line {line}") >= 4  # one per recipient with email
    assert "nickname" in output
    assert "Sigmar Gabriel" in output and "no email address" in output

    (template / "Open-letter-2017-11-07.pdf").unlink()
    output = run(cli, "campaign", "check", "broken", code=65)
    assert "Open-letter-2017-11-07.pdf" in output

    run(cli, "campaign", "send", "broken", "--yes", code=65)
    assert count(database_url, Delivery) == 0
    assert smtp_server.messages == []


def test_a_newline_in_the_sender_is_refused(cli: CliRunner, database_url: str) -> None:
    run(cli, "recipients", "import", str(TEMPLATE / "recipients.csv"))
    output = run(cli, "campaign", "create", "x", "--template", str(TEMPLATE),
                 "--to", "tag:principal", "--from", "Evil\r\nBcc: all@example.org <a@b.org>",
                 code=65)  # fmt: skip
    assert "From" in output and "\\r\\n" in output
    assert count(database_url, Campaign) == 0


@pytest.mark.parametrize(
    ("option", "value", "header"),
    [
        ("--bcc", "not-an-address", "Bcc"),
        ("--cc-address", "also bad", "Cc"),
        ("--reply-to", "Press office", "Reply-To"),
        ("--from", "Open Dialog", "From"),
    ],
)
def test_an_address_that_is_not_one_is_refused_at_create(
    cli: CliRunner, database_url: str, option: str, value: str, header: str
) -> None:
    """Not only at the send, where a bad Bcc failed every delivery of the campaign."""
    run(cli, "recipients", "import", str(TEMPLATE / "recipients.csv"))
    sender = [] if option == "--from" else ["--from", FROM]
    output = run(cli, "campaign", "create", "x", "--template", str(TEMPLATE),
                 "--to", "tag:principal", *sender, option, value, code=65)  # fmt: skip
    assert f"{header}: {value!r} is not one usable email address" in output
    assert count(database_url, Campaign) == 0


def test_a_selector_that_matches_nobody_is_an_error(cli: CliRunner, database_url: str) -> None:
    run(cli, "recipients", "import", str(TEMPLATE / "recipients.csv"))
    output = run(cli, "campaign", "create", "x", "--template", str(TEMPLATE),
                 "--to", "tag:principle", "--from", FROM, code=66)  # fmt: skip
    assert "tag:principle" in output
    assert count(database_url, Campaign) == 0


def test_preview_prints_and_writes_the_eml(
    cli: CliRunner, database_url: str, tmp_path: Path
) -> None:
    run(cli, "recipients", "import", str(TEMPLATE / "recipients.yaml"))
    run(cli, "campaign", "create", "open-letter", "--template", str(TEMPLATE), "--to",
        "tag:principal", "--cc", "tag:cc", "--from", FROM, "--date", "2017-11-07")  # fmt: skip
    eml = tmp_path / "schaeuble.eml"
    output = run(cli, "campaign", "preview", "open-letter",
                 "--recipient", "Wolfgang.Schaeuble@bundestag.de", "--eml", str(eml))  # fmt: skip
    assert "Sehr geehrter Herr Präsident" in output
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].display_name.endswith("Wolfgang Schäuble")
    assert [p.get_filename() for p in message.iter_attachments()]
    assert count(database_url, Delivery) == 0  # a preview records nothing


def test_preview_of_someone_the_campaign_does_not_address_is_an_error(
    cli: CliRunner, database_url: str
) -> None:
    run(cli, "recipients", "import", str(TEMPLATE / "recipients.yaml"))
    run(cli, "campaign", "create", "principals", "--template", str(TEMPLATE), "--to",
        "tag:principal", "--from", FROM)  # fmt: skip
    schaeuble = "Wolfgang.Schaeuble@bundestag.de"  # a copy, not a principal
    output = run(cli, "campaign", "preview", "principals", "--recipient", schaeuble, code=66)
    assert f"{schaeuble} is not a recipient of campaign principals" in output


def test_unknown_campaign_lists_the_known_ones(cli: CliRunner) -> None:
    output = run(cli, "campaign", "status", "nope", code=66)
    assert "no campaign named 'nope'" in output


def test_status_of_a_large_campaign_lists_what_is_not_done_not_every_letter(
    cli: CliRunner, database_url: str, tmp_path: Path
) -> None:
    people = tmp_path / "members.csv"
    rows = [f"Member{i:02d},Parliament,member{i:02d}@parliament.example,x" for i in range(80)]
    people.write_text("family_name,organisation,email,tags\n" + "\n".join(rows) + "\n")
    run(cli, "recipients", "import", str(people))
    with db.session_scope(database_url) as session:
        campaign = campaigns.create_campaign(
            session, name="big", template_dir=TEMPLATE, sender=FROM, to=["tag:x"]
        )
        campaigns.schedule(session, campaign, load_settings(), at=utcnow() + timedelta(days=1))
        for delivery_id in session.scalars(select(Delivery.id).order_by(Delivery.id).limit(20)):
            deliveries.transition(session, delivery_id, Status.PENDING, Status.QUEUED)
            deliveries.claim(session, delivery_id)
            deliveries.mark_sent(session, delivery_id, "250 ok")
    output = run(cli, "campaign", "status", "big")
    assert "Member00" not in output and "Member19" not in output  # sent: counted, not listed
    assert "Member20" in output and "Member69" in output  # the first 50 not sent yet
    assert "Member70" not in output
    assert "30 more not listed: `outreach deliveries list --campaign big --status STATUS`" in output
    assert "campaign big: pending 60, sent 20" in output


def test_the_command_run_as_a_program_leaves_its_output_data_and_exit_code_whole(
    env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    """`outreach` freezes its objects out of the cycle collector at the end (`cli.main`): what
    it printed, what it wrote and its exit code are all there once the process has exited."""
    officials = tmp_path / "officials.csv"
    officials.write_text(
        "family_name,organisation,email,tags\n"
        "Jagland,Council of Europe,thorbjorn.jagland@coe.int,principal\n"
        "Kyriakides,Council of Europe,stella.kyriakides@coe.int,cc\n"
    )
    run_env = {**env, "OUTREACH_DATABASE_URL": database_url}

    def outreach(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "outreach", *args], env=run_env, capture_output=True,
            text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip

    assert outreach("db", "upgrade").returncode == 0
    assert outreach("recipients", "import", str(officials)).returncode == 0
    assert count(database_url, Recipient) == 2
    listed = outreach("recipients", "list")
    assert listed.returncode == 0
    assert "Jagland" in listed.stdout and "Kyriakides" in listed.stdout
    missing = outreach("campaign", "status", "nosuch")
    assert missing.returncode == 66
    assert "no campaign named 'nosuch'" in missing.stdout + missing.stderr
