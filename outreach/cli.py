"""The `outreach` command: thin, safe by default, each command one call into the modules below.

The CLI stands at the top with `workers/`: it is the one module of `outreach/` that reaches into
`workers` (lazily, in the commands that queue or run tasks), since sending means handing work to
Celery. Errors from below arrive as OutreachError and leave as one line and an exit code.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload
from typer.core import TyperGroup

from outreach import (
    campaigns,
    cli_letters,
    cli_tracking,
    db,
    deliveries,
    dispatch,
    mailbox,
    messages,
    prepare,
    registry,
    suppression,
)
from outreach.cli_common import err, open_session, out
from outreach.compose import compose
from outreach.config import get_settings
from outreach.errors import InputError, NotFound, OutreachError
from outreach.inbox import ImapMailbox
from outreach.models import Campaign, Channel, Delivery, Status, utcnow
from outreach.reconcile import reconcile
from outreach.windows import Window

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]


class _Group(TyperGroup):
    """Turns every OutreachError into one clear line on stderr and its exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OutreachError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from exc


app = typer.Typer(
    cls=_Group,
    help="Send a personalised open letter to officials, and follow what happened to each copy.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
recipients_app = typer.Typer(help="The registry of officials and offices.", no_args_is_help=True)
campaign_app = typer.Typer(help="Letters to a chosen set of recipients.", no_args_is_help=True)
deliveries_app = typer.Typer(help="Each message of each campaign.", no_args_is_help=True)
mailbox_app = typer.Typer(help="A local SMTP server to try campaigns on.", no_args_is_help=True)
suppress_app = typer.Typer(help="The do-not-contact list.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(recipients_app, name="recipients")
app.add_typer(campaign_app, name="campaign")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(mailbox_app, name="mailbox")
app.add_typer(suppress_app, name="suppress")
cli_letters.register(campaign_app, deliveries_app)
cli_tracking.register(app, campaign_app)


# --- database -------------------------------------------------------------------------------


@app.command()
def init() -> None:
    """Create (or bring up to date) the database."""
    upgrade()


@db_app.command("upgrade")
def upgrade() -> None:
    """Apply the schema migrations to the configured database."""
    url = get_settings().effective_database_url
    db.upgrade(url)
    out.print(f"database ready: {escape(db.redact(url))}")


# --- recipients -----------------------------------------------------------------------------


@recipients_app.command("import")
def recipients_import(
    file: Annotated[Path, typer.Argument(help="A .csv or .yaml file of recipients")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Import the good rows, report the bad")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate only; write nothing")
    ] = False,
) -> None:
    """Import recipients; all or nothing unless --skip-invalid. Re-importing changes nothing."""
    with open_session() as session:
        report = registry.import_file(
            session, file, settings=get_settings(), skip_invalid=skip_invalid, dry_run=dry_run
        )
        if dry_run:
            session.rollback()
    for problem in report.skipped:
        err.print(f"[yellow]skipped:[/] {escape(str(problem))}")
    verb = "would import" if dry_run else "imported"
    out.print(
        f"{verb} {file.name}: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len({e.row for e in report.skipped})} row(s) skipped"
    )


@recipients_app.command("list")
def recipients_list(
    tag: Annotated[str | None, typer.Option(help="Only those with this tag")] = None,
    organisation: Annotated[str | None, typer.Option(help="Only this organisation")] = None,
    channel: Annotated[
        str | None, typer.Option(help="email, post or fax: how they can be reached")
    ] = None,
) -> None:
    """List recipients, optionally filtered."""
    if channel is not None and channel not in {c.value for c in Channel}:
        raise InputError(f"--channel must be email, post or fax, not {channel!r}")
    with open_session() as session:
        people = registry.list_recipients(
            session, tag=tag, organisation=organisation, channel=channel
        )
        table = Table("id", "name", "position", "organisation", "email", "channel", "tags")
        for r in people:
            table.add_row(
                str(r.id),
                escape(r.full_name or "—"),
                escape(r.position),
                escape(r.organisation),
                escape(r.email or ""),
                registry.preferred_channel(r),
                escape(", ".join(r.tags)),
            )
    out.print(table)
    out.print(f"{len(people)} recipient(s)")


@recipients_app.command("show")
def recipients_show(
    ref: Annotated[str, typer.Argument(help="Recipient id or email address")],
) -> None:
    """Show everything the registry holds on one recipient."""
    with open_session() as session:
        r = registry.find_recipient(session, ref)
        table = Table(show_header=False, box=None)
        fields = [
            ("id", r.id), ("honorific", r.honorific), ("given name", r.given_name),
            ("family name", r.family_name), ("position", r.position),
            ("organisation", r.organisation), ("department", r.department),
            ("address", "\n".join(r.address_lines)), ("city", f"{r.postcode} {r.city}".strip()),
            ("country", r.country), ("email", r.email or ""), ("phone", r.phone), ("fax", r.fax),
            ("language", r.language), ("salutation", r.salutation or "(derived)"),
            ("tags", ", ".join(r.tags)), ("notes", r.notes),
            ("channel", registry.preferred_channel(r)),
        ]  # fmt: skip
        for name, value in fields:
            table.add_row(f"[bold]{name}[/]", escape(str(value)))
    out.print(table)


# --- campaigns ------------------------------------------------------------------------------


@campaign_app.command("create")
def campaign_create(
    name: Annotated[str, typer.Argument(help="A short name, e.g. coe-kazakhstan-2017")],
    template: Annotated[Path, typer.Option(help="The letter's template folder")],
    to: Annotated[
        list[str],
        typer.Option(help="Principal recipients: tag:X, org:X, email:X or id:N (repeatable)"),
    ],
    cc: Annotated[
        list[str] | None, typer.Option(help="Recipients in copy, same selectors (repeatable)")
    ] = None,
    sender: Annotated[
        str | None,
        typer.Option("--from", help='From, e.g. "Open Dialog <office@odfoundation.eu>"'),
    ] = None,
    reply_to: Annotated[str, typer.Option(help="Reply-To address")] = "",
    cc_address: Annotated[
        list[str] | None, typer.Option(help="An address in Cc on every message (repeatable)")
    ] = None,
    bcc: Annotated[
        list[str] | None, typer.Option(help="A Bcc on every message, e.g. an archive copy")
    ] = None,
    letter_date: Annotated[
        str | None, typer.Option("--date", help="Date written on the letter, YYYY-MM-DD")
    ] = None,
) -> None:
    """Create a campaign: a template folder and who gets it, in which role."""
    sender = sender or get_settings().sender
    if not sender:
        raise InputError("no sender: give --from or set OUTREACH_SENDER")
    try:
        when = date.fromisoformat(letter_date) if letter_date else None
    except ValueError as exc:
        raise InputError(f"--date: {letter_date!r} is not a date like 2017-11-07") from exc
    with open_session() as session:
        campaign = campaigns.create_campaign(
            session,
            name=name,
            template_dir=template,
            sender=sender,
            to=to,
            cc=cc or [],
            reply_to=reply_to,
            cc_addresses=cc_address or [],
            bcc=bcc or [],
            letter_date=when,
        )
        people = campaigns.members(session, campaign)
    principals = sum(1 for m in people if m.role == "to")
    out.print(
        f"campaign {escape(name)} created: {principals} principal(s), "
        f"{len(people) - principals} in copy. Next: outreach campaign check {escape(name)}"
    )


@campaign_app.command("check")
def campaign_check(name: Annotated[str, typer.Argument(help="Campaign name")]) -> None:
    """Render every message without sending; report every problem at once."""
    with open_session() as session:
        report = _check(session, campaigns.get_campaign(session, name))
    _print_check(report)
    if not report.ok:
        raise typer.Exit(65)
    out.print(f"[green]ok:[/] {len(report.drafts)} message(s) ready to send")


def _check(session: Session, campaign: Campaign) -> messages.CheckReport:
    """`messages.check` with a progress bar: a large campaign's letters take minutes."""
    columns = (TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("check", total=None)

        def advance(total: int) -> None:
            progress.update(task, total=total, advance=1)

        return messages.check(session, campaign, get_settings(), advance)


def _print_check(report: messages.CheckReport) -> None:
    for note in report.notes:
        out.print(f"[cyan]note:[/] {escape(note)}")
    for problem in report.problems:
        err.print(f"[red]problem:[/] {escape(problem)}")
    if report.problems:
        err.print(f"{len(report.problems)} problem(s); nothing was sent")


@campaign_app.command("preview")
def campaign_preview(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    recipient: Annotated[str, typer.Option(help="Email address (or id) of the recipient")],
    eml: Annotated[
        Path | None, typer.Option(help="Also write the message to this .eml file")
    ] = None,
    pdf: Annotated[
        Path | None, typer.Option(help="Also write the recipient's PDF letter to this file")
    ] = None,
) -> None:
    """Print one recipient's message as it would be sent."""
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        person = registry.find_recipient(session, recipient)
        if not campaigns.addresses(session, campaign, person.id):
            raise NotFound(f"{recipient} is not a recipient of campaign {name}")
        kit = messages.load_kit(session, campaign)
        if pdf is not None:
            letter = messages.letter_for(kit, person).attachment
            pdf.write_bytes(letter.data)
            out.print(f"written: {pdf} ({escape(letter.filename)}, {len(letter.data)} bytes)")
            if not person.email:
                return  # by post or fax: the letter is all there is
        domain = campaigns.message_domain(campaign, get_settings())
        spec = messages.draft(kit, person, f"<preview@{domain}>", utcnow())
    data = compose(spec)
    out.print(f"[bold]From:[/] {escape(spec.sender)}\n[bold]To:[/] {escape(spec.to)}")
    if spec.cc:
        out.print(f"[bold]Cc:[/] {escape(', '.join(spec.cc))}")
    out.print(f"[bold]Subject:[/] {escape(spec.subject)}")
    for a in spec.attachments:
        out.print(
            f"[bold]Attachment:[/] {escape(a.filename)} ({a.content_type}, {len(a.data)} bytes)"
        )
    out.print()
    out.print(escape(spec.text))
    if eml is not None:
        eml.write_bytes(data)
        out.print(f"written: {eml} ({len(data)} bytes)")


@campaign_app.command("send")
def campaign_send(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render and compose every message; send none")
    ] = False,
    yes: Yes = False,
    wait: Annotated[
        bool, typer.Option(help="With a broker: watch until the workers are done")
    ] = True,
) -> None:
    """Check, then create the deliveries and queue them for the workers."""
    settings = get_settings()
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        report = _check(session, campaign)
        _print_check(report)
        if not report.ok:
            raise typer.Exit(65)
        if dry_run:
            _print_dry_run(report)
            return
        if not yes:
            typer.confirm(
                f"Send {len(report.drafts)} message(s) of campaign {name} through "
                f"{settings.smtp_host}:{settings.smtp_port}?",
                abort=True,
            )
        _schedule(session, campaign, report, at=utcnow())
        campaign_id = campaign.id
    _start(campaign_id, name, watch=wait)


def _schedule(
    session: Session, campaign: Campaign, report: messages.CheckReport, **schedule: Any
) -> None:
    """Create the checked campaign's deliveries, with the PDF letters the check rendered: no
    worker renders them again."""
    campaigns.schedule(session, campaign, get_settings(), **schedule)
    prepare.keep_checked(session, campaign, report.letters)


def _start(campaign_id: int, name: str, *, watch: bool) -> None:
    """Run the dispatcher once now (the beat keeps it going), then, with the embedded broker,
    a worker in this process until the campaign has nothing left to do now."""
    from workers.tasks import dispatch_tick  # the CLI is the one place in outreach/ above workers/

    dispatch_tick()
    if get_settings().embedded_broker:
        from workers.embedded import running_worker

        with running_worker(concurrency=1):
            _watch(campaign_id)
    elif watch:
        _watch(campaign_id)
    _print_status(name)


def _print_dry_run(report: messages.CheckReport) -> None:
    table = Table("role", "to", "subject", "size")
    for _recipient, role, spec in report.drafts:
        table.add_row(role, escape(spec.to), escape(spec.subject), f"{len(compose(spec))}")
    out.print(table)
    out.print(f"dry run: {len(report.drafts)} message(s) composed, none sent, nothing recorded")


def _watch(campaign_id: int) -> None:
    """A progress bar until nothing of the campaign moves now (what remains waits for a retry,
    a send window or the team)."""
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("send", total=None)
        while True:
            with open_session() as session:
                campaign = session.get(Campaign, campaign_id)
                assert campaign is not None
                channels = campaigns.sendable_channels(get_settings())
                counts = campaigns.status_counts(session, campaign, channels)
                moving = campaigns.in_motion(session, campaign, utcnow(), channels)
            emails = sum(counts.values())
            progress.update(task, total=emails, completed=emails - moving)
            if moving == 0:
                return
            time.sleep(0.2)


@campaign_app.command("schedule")
def campaign_schedule(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    at: Annotated[str, typer.Option(help='When, e.g. "2026-12-07 09:00"')],
    tz: Annotated[str, typer.Option(help="Time zone of --at, e.g. Europe/Brussels")] = "UTC",
    window: Annotated[
        str | None,
        typer.Option(help='Office hours in each recipient\'s zone, e.g. "mon-fri 08:00-18:00"'),
    ] = None,
    rate_per_second: Annotated[float, typer.Option(help="Lower than the account's")] = 0,
    rate_per_minute: Annotated[int, typer.Option()] = 0,
    rate_per_hour: Annotated[int, typer.Option()] = 0,
    rate_per_day: Annotated[int, typer.Option()] = 0,
    yes: Yes = False,
) -> None:
    """Check now, then let the workers' dispatcher start the campaign at the given time."""
    try:
        zone = ZoneInfo(tz)
        when = datetime.fromisoformat(at).replace(tzinfo=zone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise InputError(f"--at {at!r} --tz {tz!r}: {exc}") from exc
    if when <= utcnow():
        raise InputError(f"{when:%Y-%m-%d %H:%M %Z} is in the past; use `campaign send` now")
    rate = {"second": rate_per_second, "minute": rate_per_minute, "hour": rate_per_hour,
            "day": rate_per_day}  # fmt: skip
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        report = _check(session, campaign)
        _print_check(report)
        if not report.ok:
            raise typer.Exit(65)
        if not yes:
            typer.confirm(f"Schedule {len(report.drafts)} message(s) for {when}?", abort=True)
        _schedule(
            session,
            campaign,
            report,
            at=when,
            timezone=tz,
            window=Window.parse(window) if window else None,
            rate={k: v for k, v in rate.items() if v},
        )
    out.print(
        f"campaign {escape(name)} scheduled for {when:%Y-%m-%d %H:%M %Z} "
        f"({when.astimezone(UTC):%H:%M} UTC); the workers' beat starts it"
    )


@campaign_app.command("pause")
def campaign_pause(name: Annotated[str, typer.Argument(help="Campaign name")]) -> None:
    """Stop sending; messages already on the wire finish, the rest wait."""
    with open_session() as session:
        campaigns.pause(session, campaigns.get_campaign(session, name), "paused by the team")
    out.print(f"campaign {escape(name)} paused; `outreach campaign resume {escape(name)}` goes on")


@campaign_app.command("resume")
def campaign_resume(name: Annotated[str, typer.Argument(help="Campaign name")]) -> None:
    """Go on sending a paused campaign."""
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        campaigns.resume(session, campaign)
        campaign_id = campaign.id
    out.print(f"campaign {escape(name)} resumed")
    if get_settings().embedded_broker:
        _start(campaign_id, name, watch=True)


@campaign_app.command("cancel")
def campaign_cancel(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    yes: Yes = False,
) -> None:
    """Cancel every message not yet sent (sent ones stay sent)."""
    if not yes:
        typer.confirm(f"Cancel what campaign {name} has not sent yet?", abort=True)
    with open_session() as session:
        count = campaigns.cancel(session, campaigns.get_campaign(session, name))
    out.print(f"campaign {escape(name)} cancelled: {count} message(s) will not be sent")


@campaign_app.command("status")
def campaign_status(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh counts and rate")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes")] = 2.0,
) -> None:
    """Counts by status and each recipient's status; --watch follows a running campaign."""
    if not watch:
        _print_status(name)
        return
    with Live(console=out, auto_refresh=False) as live:
        try:
            while True:
                live.update(_live_counts(name, interval), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


def _live_counts(name: str, interval: float) -> Table:
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        counts = campaigns.status_counts(session, campaign)
        recent = campaigns.sent_since(session, campaign, utcnow() - timedelta(seconds=60))
        table = Table(title=f"{name}: {campaign.state} {campaign.paused_reason}".strip())
        for status in counts:
            table.add_column(status, justify="right")
        table.add_column("sent/min (last 60 s)", justify="right")
        table.add_row(*(str(n) for n in counts.values()), str(recent))
    return table


STATUS_ROWS = 50  # a campaign larger than this lists only what needs a look, this many at most


def _print_status(name: str) -> None:
    """A row per delivery for a small campaign; for a large one, the counts and the first
    deliveries that are not done (a table of 10,000 sent letters helps nobody)."""
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        counts = campaigns.status_counts(session, campaign)
        query = (
            select(Delivery)
            .where(Delivery.campaign_id == campaign.id)
            .options(selectinload(Delivery.recipient))
            .order_by(Delivery.role.desc(), Delivery.id)
        )
        total = sum(counts.values())
        if total > STATUS_ROWS:
            query = query.where(Delivery.status.not_in((Status.SENT, Status.POSTED)))
        rows = session.scalars(query.limit(STATUS_ROWS)).all()
        state = f"{campaign.state}: {campaign.paused_reason}" if campaign.paused_reason else ""
        if campaign.resume_at:
            state += f" (tries again at {campaign.resume_at:%Y-%m-%d %H:%M:%S} UTC)"
    table = Table("id", "role", "recipient", "channel", "status", "attempts", "last error / next")
    for d in rows:
        r = d.recipient
        note = d.last_error
        if d.status == Status.DEFERRED and d.next_attempt_at:
            note = f"next attempt {d.next_attempt_at:%Y-%m-%d %H:%M} UTC — {note}"
        table.add_row(
            str(d.id), d.role, escape(f"{r.full_name or r.organisation} {d.address}".strip()),
            d.channel, _styled(d.status), str(d.attempts), escape(note[:120]),
        )  # fmt: skip
    out.print(table)
    if total > len(rows):
        out.print(
            f"{total - len(rows)} more not listed: `outreach deliveries list --campaign "
            f"{escape(name)} --status STATUS`"
        )
    summary = ", ".join(f"{_styled(s)} {n}" for s, n in sorted(counts.items())) or "no deliveries"
    out.print(f"campaign {escape(name)}: {summary}")
    if state:  # why it does not send: paused by the team, or by the circuit breaker
        out.print(escape(state))


def _styled(status: str) -> str:
    colour = {"sent": "green", "failed": "red", "deferred": "yellow", "unknown": "magenta"}
    return f"[{colour[status]}]{status}[/]" if status in colour else status


# --- deliveries -----------------------------------------------------------------------------


@deliveries_app.command("list")
def deliveries_list(
    campaign: Annotated[str | None, typer.Option(help="Only this campaign")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. unknown")] = None,
) -> None:
    """List deliveries, optionally by campaign and status."""
    if status is not None and status not in {s.value for s in Status}:
        raise InputError(f"--status must be one of {', '.join(s.value for s in Status)}")
    with open_session() as session:
        query = select(Delivery).options(
            selectinload(Delivery.recipient), selectinload(Delivery.campaign)
        )
        if campaign:
            query = query.where(
                Delivery.campaign_id == campaigns.get_campaign(session, campaign).id
            )
        if status:
            query = query.where(Delivery.status == status)
        rows = session.scalars(query.order_by(Delivery.id)).all()
        table = Table("id", "campaign", "recipient", "channel", "status", "updated (UTC)")
        for d in rows:
            table.add_row(
                str(d.id), escape(d.campaign.name),
                escape(d.recipient.full_name or d.recipient.organisation), d.channel,
                _styled(d.status), f"{d.updated_at:%Y-%m-%d %H:%M:%S}",
            )  # fmt: skip
    out.print(table)


@deliveries_app.command("resend")
def deliveries_resend(
    ids: Annotated[list[int] | None, typer.Argument(metavar="ID...", help="Delivery ids")] = None,
    all_unknown: Annotated[
        bool, typer.Option("--all-unknown", help="Every delivery whose fate is unknown")
    ] = False,
    yes: Yes = False,
) -> None:
    """Send `unknown` deliveries again: only the team can decide that a second copy is better
    than none."""
    with open_session() as session:
        chosen = deliveries.unknown_ids(session, ids or [], everything=all_unknown)
        if not yes:
            typer.confirm(
                f"{len(chosen)} recipient(s) may already have their letter. Send again?",
                abort=True,
            )
        requeued = campaigns.resend(session, chosen)
    from workers.tasks import enqueue

    enqueue(dispatch.batches(requeued, get_settings().batch_size))
    out.print(f"{len(requeued)} delivery(ies) queued again")


@deliveries_app.command("reconcile")
def deliveries_reconcile() -> None:
    """Settle `unknown` deliveries by finding their archive copy (the campaign's Bcc to the
    team's own mailbox) over IMAP: found means the server took the message."""
    settings = get_settings()
    sessions = db.session_factory(settings.effective_database_url)
    with ImapMailbox.connect(settings) as box:
        result = reconcile(sessions, box, settings.archive_folder or settings.imap_folder)
    out.print(
        f"{len(result.found)} found in the archive and marked sent; "
        f"{len(result.missing)} not found (still unknown); "
        f"{len(result.no_archive)} in campaigns without a Bcc archive copy; "
        f"{len(result.archive_only)} whose archive copy may be an earlier attempt's, one the "
        "server took for the archive while it refused the official"
    )
    if result.missing or result.no_archive or result.archive_only:
        out.print("decide for those: `outreach deliveries resend ID...` sends them again")


@deliveries_app.command("show")
def deliveries_show(
    delivery_id: Annotated[int, typer.Argument(metavar="ID", help="Delivery id")],
    eml: Annotated[
        bool, typer.Option("--eml", help="Write the exact message that was sent to stdout")
    ] = False,
) -> None:
    """A delivery's history, or (--eml) the message as it was sent."""
    with open_session() as session:
        d = session.get(Delivery, delivery_id)
        if d is None:
            raise NotFound(f"no delivery {delivery_id}")
        if eml:
            data = messages.rebuild(d)
            if data is None:
                raise NotFound(f"delivery {delivery_id} has not been sent yet ({d.status})")
            typer.echo(data, nl=False)  # bytes: written as they are
            return
        out.print(
            f"delivery {d.id}: campaign {escape(d.campaign.name)}, {d.role} "
            f"{escape(d.recipient.full_name or d.recipient.organisation)} <{escape(d.address)}>, "
            f"{d.channel}, status {_styled(d.status)}, attempts {d.attempts}\n"
            f"Message-ID: {escape(d.message_id)}"
        )
        table = Table("when (UTC)", "from", "to", "detail")
        for e in d.events:
            table.add_row(
                f"{e.created_at:%Y-%m-%d %H:%M:%S}", e.from_status, e.to_status, escape(e.detail)
            )
    out.print(table)


# --- suppression ----------------------------------------------------------------------------


@suppress_app.command("add")
def suppress_add(
    email: Annotated[str, typer.Argument(help="The address no campaign may write to")],
    reason: Annotated[str, typer.Option(help="Why, for the record")] = "",
) -> None:
    """Put an address on the do-not-contact list (checked when each message is sent)."""
    with open_session() as session:
        added = suppression.add(session, email, reason)
    out.print(f"{escape(email)} {'added to' if added else 'was already on'} the suppression list")


@suppress_app.command("remove")
def suppress_remove(email: Annotated[str, typer.Argument(help="Address")]) -> None:
    """Take an address off the do-not-contact list."""
    with open_session() as session:
        suppression.remove(session, email)
    out.print(f"{escape(email)} removed from the suppression list")


@suppress_app.command("list")
def suppress_list() -> None:
    """The do-not-contact list."""
    with open_session() as session:
        table = Table("address", "reason", "since (UTC)")
        for entry in suppression.listed(session):
            table.add_row(escape(entry.email), escape(entry.reason), f"{entry.created_at:%Y-%m-%d}")
    out.print(table)


# --- mailbox, worker, demo ------------------------------------------------------------------


@mailbox_app.command("serve")
def mailbox_serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 2525,
    maildir: Annotated[Path | None, typer.Option(help="Where to keep messages")] = None,
) -> None:
    """Run a local SMTP server that keeps every message in a Maildir (Ctrl-C stops it)."""
    mailbox.run_forever(host, port, maildir or get_settings().home / "mailbox")


@mailbox_app.command("list")
def mailbox_list(
    maildir: Annotated[Path | None, typer.Option(help="The Maildir to list")] = None,
) -> None:
    """List the messages the local mailbox received."""
    _print_mailbox(maildir or get_settings().home / "mailbox")


def _print_mailbox(folder: Path) -> None:
    table = Table()
    table.add_column("received", no_wrap=True, min_width=19)
    table.add_column("to", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("subject", no_wrap=True, overflow="ellipsis", max_width=26)
    table.add_column("bytes", no_wrap=True, justify="right", min_width=6)
    items = mailbox.list_messages(folder)
    for m in items:
        table.add_row(
            f"{m.date:%Y-%m-%d %H:%M:%S}" if m.date else "",
            escape(m.to), escape(m.subject), str(m.size),
        )  # fmt: skip
    out.print(table)
    out.print(f"{len(items)} message(s) in {folder}")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Tasks run at once")] = 1,
) -> None:
    """Run a worker with its beat in the foreground (the embedded broker or the configured one)."""
    from workers.embedded import running_worker

    out.print("worker running; Ctrl-C stops it")
    with running_worker(concurrency=concurrency):
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            out.print("stopping after the current task")


@app.command()
def demo(
    template: Annotated[Path, typer.Option(help="Template folder")] = TEMPLATES / "open_letter",
) -> None:
    """Send the model open letter to a local mailbox: nothing leaves this machine."""
    settings = get_settings()
    home = (settings.home / "demo").resolve()
    if (home / ".outreach-demo").exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / ".outreach-demo").touch()
    port = _free_port()
    _use_demo_settings(home, port)
    upgrade()
    server = mailbox.serve("127.0.0.1", port, home / "mailbox")
    try:
        out.print(f"local mailbox listening on 127.0.0.1:{port}")
        recipients_import(template / "recipients.csv", skip_invalid=False, dry_run=False)
        campaign_create(
            "open-letter",
            template=template,
            to=["tag:principal"],
            cc=["tag:cc"],
            sender="Open Dialog Foundation <office@odfoundation.example>",
            reply_to="",
            cc_address=[],
            bcc=[],
            letter_date="2017-11-07",
        )
        campaign_send("open-letter", dry_run=False, yes=True, wait=True)
    finally:
        server.stop()
    _print_mailbox(home / "mailbox")
    out.print(
        f"\nThe database is {home / 'outreach.db'}; each message is a file in {home / 'mailbox'}.\n"
        f"Try: OUTREACH_HOME={home} outreach campaign status open-letter"
    )


def _use_demo_settings(home: Path, port: int) -> None:
    """Point this process at the demo's own database, broker folder and mailbox."""
    for key in [k for k in os.environ if k.startswith("OUTREACH_")]:
        del os.environ[key]
    os.environ.update(
        OUTREACH_HOME=str(home),
        OUTREACH_SMTP_HOST="127.0.0.1",
        OUTREACH_SMTP_PORT=str(port),
        OUTREACH_SMTP_SECURITY="plain",
    )
    get_settings.cache_clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> None:
    """The `outreach` command. Its objects are frozen out of the cycle collector once the
    command is done: the interpreter's teardown ran it over all of them (about 190,000, most
    from the imports: WeasyPrint, SQLAlchemy, Celery), 0.4 s of CPU at the end of every command,
    for memory the process hands back whole. Output, commits and exit code are all in by then."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="outreach")
    finally:
        gc.freeze()
