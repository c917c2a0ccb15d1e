"""The CLI's commands for letters by post: `campaign print` and `deliveries mark-posted`.

Kept apart from cli.py and added to its command groups by `register`, which cli.py calls once.
Errors leave through the root group of cli.py like every other command's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from outreach import campaigns, printing
from outreach.cli_common import open_session, out
from outreach.config import get_settings
from outreach.errors import InputError


def campaign_print(
    name: Annotated[str, typer.Argument(help="Campaign name")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the pack's PDF and envelope CSV")
    ] = Path("."),
    reprint: Annotated[
        bool, typer.Option("--reprint", help="Also print again the letters already printed")
    ] = False,
) -> None:
    """Print pack: one PDF of every letter by post (each on an odd page) and the envelope list."""
    with open_session() as session:
        campaign = campaigns.get_campaign(session, name)
        pack = printing.print_pack(session, campaign, get_settings(), out_dir, reprint=reprint)
        table = Table("delivery", "recipient", "first page", "pages")
        for item in pack.letters:
            who = item.delivery.recipient.full_name or item.delivery.recipient.organisation
            table.add_row(str(item.delivery.id), escape(who), str(item.first_page), str(item.pages))
    if not pack.letters:
        out.print(f"campaign {escape(name)}: no letter by post to print")
        return
    out.print(table)
    out.print(
        f"printed {len(pack.letters)} letter(s): {pack.pdf} and {pack.csv}\n"
        f"Once they are in the post: outreach deliveries mark-posted --campaign {escape(name)}"
    )


def deliveries_mark_posted(
    delivery_ids: Annotated[
        list[int] | None, typer.Argument(metavar="ID...", help="Printed deliveries")
    ] = None,
    campaign: Annotated[
        str | None, typer.Option(help="All printed letters of this campaign")
    ] = None,
) -> None:
    """Mark printed letters as put in the post."""
    if bool(delivery_ids) == bool(campaign):
        raise InputError("give delivery ids or --campaign NAME (one of the two)")
    with open_session() as session:
        ids = delivery_ids or printing.printed_ids(
            session, campaigns.get_campaign(session, campaign or "")
        )
        moved = printing.mark_posted(session, ids)
    skipped = sorted(set(ids) - set(moved))
    out.print(f"posted: {len(moved)} letter(s)")
    if skipped:
        listed = ", ".join(map(str, skipped))
        raise InputError(f"not printed (or already posted), left as they were: {listed}")


def register(campaign_app: typer.Typer, deliveries_app: typer.Typer) -> None:
    """Add the letter commands to the CLI's command groups."""
    campaign_app.command("print")(campaign_print)
    deliveries_app.command("mark-posted")(deliveries_mark_posted)
