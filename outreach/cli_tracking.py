"""The tracking commands of `outreach`: inbox, responses, campaign report and follow-up.

Thin, like the rest of the CLI: each command is one call into inbox, responses, reports or
followups. `register(app, campaign_app)` adds them to the `outreach` command.
"""

from __future__ import annotations

from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from outreach import campaigns, db, followups, inbox, reports, responses, tracking
from outreach.cli_common import open_session, out
from outreach.config import get_settings
from outreach.errors import InputError
from outreach.models import utcnow

inbox_app = typer.Typer(
    help="What comes back: bounces, replies, automatic answers.", no_args_is_help=True
)
responses_app = typer.Typer(
    help="Answers by post, fax, phone or in a meeting.", no_args_is_help=True
)


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


def _print_poll(what: str, report: inbox.PollReport) -> None:
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(report.kinds.items())) or "nothing new"
    out.print(
        f"{what}: {report.read} read, {report.recorded} recorded ({kinds}), "
        f"{report.duplicates} already known, {report.moved} moved, "
        f"{report.presumed_delivered} presumed delivered"
    )
    unmatched = sum(report.kinds.get(k, 0) for k in inbox.UNMATCHED)
    if unmatched:
        out.print(f"{unmatched} message(s) matched no delivery: outreach inbox list")


@inbox_app.command("poll")
def inbox_poll() -> None:
    """Read the mailbox once (IMAP over TLS): bounces, replies, automatic answers."""
    _print_poll("inbox", inbox.poll_once(get_settings()))


@inbox_app.command("import")
def inbox_import(
    path: Annotated[
        Path, typer.Argument(help="An .eml file, a folder of them, an mbox or a Maildir")
    ],
) -> None:
    """Read archived messages as a poll would; importing them again adds nothing."""
    settings = get_settings()
    sessions = db.session_factory(settings.effective_database_url)
    _print_poll(str(path), inbox.import_path(sessions, path, settings))


@inbox_app.command("list")
def inbox_list() -> None:
    """The messages that matched no delivery, or could not be read: for a person to look at."""
    with open_session() as session:
        table = Table("id", "date", "from", "subject", "kind", "source")
        rows = tracking.unmatched(session)
        for m in rows:
            table.add_row(
                str(m.id), f"{m.sent_at:%Y-%m-%d %H:%M}" if m.sent_at else "",
                escape(m.sender), escape(m.subject), m.kind,
                escape(_source(m.source, m.folder, m.uid)),
            )  # fmt: skip
    out.print(table)
    out.print(f"{len(rows)} unmatched message(s)")


def _source(source: str, folder: str | None, uid: int | None) -> str:
    return f"{folder} UID {uid}" if folder is not None else source


@responses_app.command("add")
def responses_add(
    campaign: Annotated[str, typer.Option(help="Campaign name")],
    recipient: Annotated[str, typer.Option(help="The recipient's email address or id")],
    kind: Annotated[str, typer.Option(help="acknowledged, answered, declined, meeting or other")],
    channel: Annotated[str, typer.Option(help="post, fax, phone, meeting or email")] = "post",
    on: Annotated[str | None, typer.Option("--date", help="When it came, YYYY-MM-DD")] = None,
    note: Annotated[str, typer.Option(help="What it says, in a few words")] = "",
    sender: Annotated[str, typer.Option("--from", help="Who signed or called")] = "",
    file: Annotated[Path | None, typer.Option(help="A scan or document to keep with it")] = None,
) -> None:
    """Record an answer that did not come by email."""
    with open_session() as session:
        delivery = responses.find_delivery(session, campaign, recipient)
        added = responses.add_response(
            session, delivery, kind=kind, channel=channel, received_at=_day(on), note=note,
            sender=sender, file=file,
        )  # fmt: skip
        out.print(f"response {added.id} recorded: {kind} by {channel} from {escape(recipient)}")


def _day(text: str | None) -> datetime:
    """A day as noon UTC (a day, not an instant: noon keeps it the same day everywhere)."""
    if text is None:
        return utcnow()
    try:
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--date: {text!r} is not a date like 2017-11-20") from exc
    return datetime.combine(day, time(12), tzinfo=ZoneInfo("UTC"))


@responses_app.command("list")
def responses_list(
    campaign: Annotated[str | None, typer.Option(help="Only this campaign")] = None,
) -> None:
    """Every answer, by email or recorded by hand."""
    with open_session() as session:
        rows = responses.list_responses(session, campaign)
        table = Table(
            "id", "date", "campaign", "recipient", "kind", "channel", "from", "excerpt / note"
        )
        for r in rows:
            person = r.delivery.recipient
            table.add_row(
                str(r.id), f"{r.received_at:%Y-%m-%d}", escape(r.delivery.campaign.name),
                escape(person.full_name or person.organisation), r.kind, r.channel,
                escape(r.sender), escape((r.excerpt or r.note)[:80]),
            )  # fmt: skip
    out.print(table)
    out.print(f"{len(rows)} response(s)")


def campaign_report(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    shape: Annotated[Format, typer.Option("--format", help="table, csv or json")] = Format.TABLE,
) -> None:
    """Counts by status, outcome and response (overall, by role, by organisation); timelines."""
    with open_session() as session:
        report = reports.build_report(session, campaigns.get_campaign(session, name))
    if shape == Format.CSV:
        typer.echo(reports.to_csv(report), nl=False)
    elif shape == Format.JSON:
        typer.echo(reports.to_json(report))
    else:
        _print_report(report)


def _print_report(report: reports.Report) -> None:
    table = Table("", *reports.AXES, title=f"campaign {escape(report.campaign)}")
    table.add_row("all", *(_counts(report.counts(axis)) for axis in reports.AXES))
    for by in ("role", "organisation"):
        for group, counts in report.grouped(by).items():
            table.add_row(escape(f"{by}: {group}"), *(_counts(counts[a]) for a in reports.AXES))
    out.print(table)
    for row in report.rows:
        out.print(
            f"\n[bold]{escape(row.name)}[/] <{escape(row.address)}> {row.role}, {row.channel}"
        )
        for step in row.timeline:
            out.print(f"  {escape(step.line())}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items())


def campaign_follow_up(
    name: Annotated[str, typer.Argument(help="The first campaign")],
    no_answer_after: Annotated[str, typer.Option(help="Remind those silent this long: 14d, 2w")],
    template: Annotated[Path, typer.Option(help="The reminder's template folder")],
    new_name: Annotated[str, typer.Option("--name", help="Default: NAME-follow-up")] = "",
) -> None:
    """Create a campaign for those who did not answer (nor bounce), linked to the first."""
    age = followups.parse_age(no_answer_after)
    with open_session() as session:
        original = campaigns.get_campaign(session, name)
        follow_up = followups.create_follow_up(
            session, original, template_dir=template, no_answer_after=age, now=utcnow(),
            name=new_name,
        )  # fmt: skip
        people = campaigns.members(session, follow_up)
        out.print(
            f"campaign {escape(follow_up.name)} created for {len(people)} recipient(s) who did "
            f"not answer {escape(name)}. Next: outreach campaign check {escape(follow_up.name)}"
        )


def register(app: typer.Typer, campaign_app: typer.Typer) -> None:
    """Add the tracking commands to the `outreach` command and its `campaign` group."""
    app.add_typer(inbox_app, name="inbox")
    app.add_typer(responses_app, name="responses")
    campaign_app.command("report")(campaign_report)
    campaign_app.command("follow-up")(campaign_follow_up)
