"""The dispatcher's tick on a real database: schedules, windows, pace, recovery, completion."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from outreach import campaigns, db, deliveries, dispatch, registry
from outreach.config import load_settings
from outreach.errors import Conflict
from outreach.models import Campaign, CampaignState, Delivery, Event, Recipient, Status, utcnow
from outreach.windows import Window
from tests.plans import first_plan, registry_rows

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "open_letter"
MONDAY_NOON = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The open letter without its PDF layout: these tests are not about letters."""
    folder = tmp_path_factory.mktemp("plain") / "open_letter"
    shutil.copytree(TEMPLATE, folder, ignore=shutil.ignore_patterns("letter.html", "letter.css"))
    return folder


def _campaign(url: str, template: Path, at: datetime, **schedule: object) -> None:
    settings = load_settings()
    with db.session_scope(url) as session:
        registry.import_file(session, TEMPLATE / "recipients.csv", settings=settings)
        campaign = campaigns.create_campaign(
            session, name="c", template_dir=template, sender="S <s@example.org>",
            to=["tag:principal"], cc=["tag:cc"],
        )  # fmt: skip
        campaigns.schedule(session, campaign, settings, at=at, **schedule)  # type: ignore[arg-type]


def _tick(url: str, now: datetime, **settings: object) -> dispatch.Tick:
    with db.session_scope(url) as session:
        return dispatch.tick(session, load_settings(**settings), now)


def _statuses(url: str) -> list[str]:
    with db.session_scope(url) as session:
        return sorted(session.scalars(select(Delivery.status).where(Delivery.channel == "email")))


def test_a_scheduled_campaign_starts_when_due_and_not_before(
    database_url: str, plain: Path
) -> None:
    _campaign(database_url, plain, MONDAY_NOON)
    early = _tick(database_url, MONDAY_NOON - timedelta(seconds=1))
    assert early.batches == [] and early.started == []
    assert _statuses(database_url) == ["pending"] * 4
    due = _tick(database_url, MONDAY_NOON)
    assert due.started == ["c"]
    assert sorted(i for b in due.batches for i in b) and _statuses(database_url) == ["queued"] * 4


def test_the_rate_paces_what_is_released(database_url: str, plain: Path) -> None:
    now = utcnow()
    _campaign(database_url, plain, now)
    tick = _tick(database_url, now, rate_per_second=1, dispatch_seconds=1)
    assert sum(len(b) for b in tick.batches) == 2  # two ticks' worth at one a second
    tick = _tick(database_url, now, rate_per_second=1, max_in_flight=2)
    assert tick.batches == []  # two already in flight: the broker holds no more


def test_outside_office_hours_deliveries_wait_for_their_window(
    database_url: str, plain: Path
) -> None:
    saturday = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    _campaign(database_url, plain, saturday, window=Window.parse("mon-fri 08:00-18:00"))
    assert _tick(database_url, saturday).batches == []
    with db.session_scope(database_url) as session:
        waits = set(
            session.scalars(select(Delivery.next_attempt_at).where(Delivery.channel == "email"))
        )
    assert waits == {datetime(2026, 12, 7, 7, 0, tzinfo=UTC)}  # Monday 08:00 in Berlin/Strasbourg
    assert _tick(database_url, datetime(2026, 12, 7, 7, 0, tzinfo=UTC)).batches


def test_recovery_marks_lost_sending_unknown_and_requeues_lost_queued(
    database_url: str, plain: Path
) -> None:
    now = utcnow()
    _campaign(database_url, plain, now)
    tick = _tick(database_url, now)
    first, second, *_ = [i for b in tick.batches for i in b]
    with db.session_scope(database_url) as session:
        assert deliveries.claim(session, first)
    assert _tick(database_url, now + timedelta(seconds=200), sending_timeout=300).unknown == 0
    later = now + timedelta(seconds=400)
    tick = _tick(database_url, later, sending_timeout=300, queued_timeout=300)
    assert tick.unknown == 1 and tick.requeued == 3
    assert second in [i for b in tick.batches for i in b]
    assert _statuses(database_url) == ["queued", "queued", "queued", "unknown"]


def _all_sent(url: str, template: Path) -> None:
    """A running campaign whose every email was sent: the next tick finds nothing left."""
    _campaign(url, template, MONDAY_NOON)
    tick = _tick(url, MONDAY_NOON)
    with db.session_scope(url) as session:
        for delivery_id in [i for b in tick.batches for i in b]:
            deliveries.claim(session, delivery_id)
            deliveries.mark_sent(session, delivery_id, "250 ok")


def test_a_campaign_with_nothing_left_is_done(database_url: str, plain: Path) -> None:
    _all_sent(database_url, plain)
    assert _tick(database_url, MONDAY_NOON).finished == ["c"]
    with db.session_scope(database_url) as session:
        campaign = session.scalar(select(Campaign))
        assert campaign is not None and campaign.state == CampaignState.DONE


def test_pause_takes_back_queued_and_cancel_cancels_the_rest(
    database_url: str, plain: Path
) -> None:
    _campaign(database_url, plain, MONDAY_NOON)
    _tick(database_url, MONDAY_NOON)
    with db.session_scope(database_url) as session:
        campaign = campaigns.get_campaign(session, "c")
        campaigns.pause(session, campaign, "by the team")
    assert _statuses(database_url) == ["pending"] * 4
    assert _tick(database_url, MONDAY_NOON).batches == []
    with db.session_scope(database_url) as session:
        assert campaigns.cancel(session, campaigns.get_campaign(session, "c")) == 5
        assert set(session.scalars(select(Delivery.status))) == {Status.CANCELLED}


def test_a_cancel_committed_while_the_tick_runs_stands(
    database_url: str, plain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The team cancels the campaign (another process) after the dispatcher's tick has read it
    as running and before the tick finds nothing left: it stays cancelled. The tick assigned
    `done` and wrote over the cancel (seen once in CI, in a real run with workers)."""
    _all_sent(database_url, plain)
    finished = dispatch._finished

    def cancelled_meanwhile(session: Session, campaign: Campaign, channels: object) -> bool:
        with db.session_scope(database_url) as team:  # committed before the tick writes
            campaigns.cancel(team, campaigns.get_campaign(team, "c"))
        return finished(session, campaign, channels)  # type: ignore[arg-type]

    monkeypatch.setattr(dispatch, "_finished", cancelled_meanwhile)
    assert _tick(database_url, MONDAY_NOON).finished == []
    with db.session_scope(database_url) as session:
        assert campaigns.get_campaign(session, "c").state == CampaignState.CANCELLED
        logged = session.scalars(select(Event.detail).where(Event.kind == "campaign"))
        assert not any(detail.startswith("done") for detail in logged)


def _campaign_log(url: str) -> tuple[str, list[str]]:
    with db.session_scope(url) as session:
        logged = session.scalars(select(Event.detail).where(Event.kind == "campaign"))
        return campaigns.get_campaign(session, "c").state, list(logged)


def test_a_resend_waits_for_the_tick_that_finds_the_campaign_done(
    database_url: str, plain: Path
) -> None:
    """The tick found nothing open and marks the campaign done; a resend of its unknown
    delivery, side by side, read the campaign still running and left it so: the tick's `done`
    then stood over a queued delivery whose claim would miss. The resend waits for the tick."""
    _all_sent(database_url, plain)
    with db.session_scope(database_url) as session:
        unknown = session.scalars(select(Delivery.id).where(Delivery.channel == "email")).first()
        session.execute(update(Delivery).where(Delivery.id == unknown).values(status="unknown"))
    resent: list[list[int]] = []

    def resend() -> None:
        with db.session_scope(database_url) as team:
            resent.append(campaigns.resend(team, [unknown]))

    with db.session_scope(database_url) as session:
        assert dispatch.tick(session, load_settings(), MONDAY_NOON).finished == ["c"]
        other = threading.Thread(target=resend)
        other.start()
        other.join(1.0)
        assert other.is_alive(), "the resend did not wait for the tick"
    other.join(10)
    assert resent == [[unknown]]
    state, logged = _campaign_log(database_url)
    assert state == CampaignState.RUNNING and "running again: deliveries were resent" in logged


def test_a_cancel_that_loses_to_the_tick_changes_nothing(database_url: str, plain: Path) -> None:
    """The team's cancel read the campaign as running; the tick found it finished and committed
    `done` before the cancel wrote. The cancel says so and changes nothing (it assigned the
    state: a campaign that had finished came out cancelled)."""
    _all_sent(database_url, plain)
    lost = pytest.raises(Conflict, match="it was running and is now done; nothing was changed")
    with lost, db.session_scope(database_url) as team:
        campaign = campaigns.get_campaign(team, "c")
        assert _tick(database_url, MONDAY_NOON).finished == ["c"]  # another process
        campaigns.cancel(team, campaign)
    state, logged = _campaign_log(database_url)
    assert state == CampaignState.DONE and logged[-1].startswith("done")


def test_a_pause_that_loses_to_a_cancel_changes_nothing(database_url: str, plain: Path) -> None:
    """Two of the team at once: one cancels while the other's pause has read the campaign as
    running. The cancel stands (the pause wrote over it, and a resume would have run it again)."""
    _campaign(database_url, plain, MONDAY_NOON)
    _tick(database_url, MONDAY_NOON)
    lost = pytest.raises(Conflict, match="it was running and is now cancelled")
    with lost, db.session_scope(database_url) as pausing:
        campaign = campaigns.get_campaign(pausing, "c")
        with db.session_scope(database_url) as cancelling:
            campaigns.cancel(cancelling, campaigns.get_campaign(cancelling, "c"))
        campaigns.pause(pausing, campaign, "by the team")
    state, logged = _campaign_log(database_url)
    assert state == CampaignState.CANCELLED and not any(d.startswith("paused") for d in logged)
    assert set(_statuses(database_url)) == {Status.CANCELLED}


def test_two_ticks_at_once_take_turns(
    database_url: str, plain: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick waits for one running elsewhere to commit. Side by side, the second counted what
    was in flight before the first's commit and chose what to release after it, and together
    they released more than `max_in_flight` (end to end, 3,968 against 2,000)."""
    now = utcnow()  # nothing queued looks stale to the ticks
    _campaign(database_url, plain, now)
    assert len(_tick(database_url, now, max_in_flight=1).batches) == 1  # started, 1 in flight
    second: list[dispatch.Tick] = []
    committed = threading.Event()
    releasable = dispatch._releasable

    def after_the_first(*args: Any) -> list[int]:  # the second tick's choice, once it committed
        committed.wait(10)
        return releasable(*args)

    with db.session_scope(database_url) as session:
        first = dispatch.tick(session, load_settings(max_in_flight=3), now)  # not committed yet
        monkeypatch.setattr(dispatch, "_releasable", after_the_first)
        other = threading.Thread(
            target=lambda: second.append(_tick(database_url, now, max_in_flight=3))
        )
        other.start()
        other.join(1.0)
        assert other.is_alive(), "the second tick did not wait for the first"
    committed.set()
    other.join(10)
    assert len(second) == 1, "the second tick did not finish"
    released = [i for tick in (first, *second) for batch in tick.batches for i in batch]
    assert len(released) == 2 and _statuses(database_url).count("queued") == 3


def test_a_tick_reads_only_pending_deliveries_to_release_the_next(
    database_url: str, plain: Path
) -> None:
    """PostgreSQL plans the release on the statistics gathered as the campaign was scheduled
    (every delivery pending). Asked for `status = 'pending'` in id order, it read the
    campaign's deliveries on the primary key and filtered them: each tick read every delivery
    released before it (at 100k recipients, 85 rows of the table a message sent). It reads
    the pending ones on ix_deliveries_campaign_status, in the same order."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a choice of PostgreSQL's planner")
    with db.session_scope(database_url) as session:
        session.execute(insert(Recipient), registry_rows(6000))
        campaign = campaigns.create_campaign(
            session, name="many", template_dir=plain, sender="S <s@example.org>",
            to=["tag:principal"],
        )  # fmt: skip
        assert campaigns.schedule(session, campaign, load_settings(), at=MONDAY_NOON) == 6000
    first = _tick(database_url, MONDAY_NOON, max_in_flight=3000)
    with db.session_scope(database_url) as session:  # as if the workers had sent them
        session.execute(
            update(Delivery).where(Delivery.status == Status.QUEUED).values(status=Status.SENT)
        )
    with first_plan(database_url, "SELECT deliveries.id, recipients.timezone") as plans:
        second = _tick(database_url, MONDAY_NOON, max_in_flight=3000)
    assert "ix_deliveries_campaign_status" in plans[0] and "pk_deliveries" not in plans[0], plans[0]
    released = [i for tick in (first, second) for batch in tick.batches for i in batch]
    assert released == list(range(released[0], released[0] + 6000))
