"""Exactly one letter per recipient, through crashes and faults (issue 3), for real.

Real `celery -A workers worker` and `celery -A workers beat` processes on the running Redis, the
running PostgreSQL and SQLite, the `outreach` command as a process, and an SMTP server on
127.0.0.1 in the test process that can refuse, stall, drop or kill. Every scenario ends with
`assert_exactly_once`: each recipient has exactly one accepted message at the server, or a
status that says why not. Timeouts are made small through OUTREACH_* settings; timing
assertions have generous bounds: they check behaviour, not speed.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from outreach import campaigns, db, deliveries, registry
from outreach.config import load_settings
from outreach.models import Campaign, CampaignState, Delivery, Event, Status, utcnow
from tests.smtpd import BadServer, Received, RecordingServer
from tests.workers import (
    Cluster,
    Proc,
    cluster,
    pid_of_peer,
    redis_alive,
    redis_start,
    redis_stop,
    wait_for,
)

# Each test claims a Redis database of its own (a key in LOCKS says whose) and empties it;
# 13 and 14 are other modules'.
DATABASES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
LOCKS = "redis://127.0.0.1:6379/15"
NAME = "letter"
SENDER = "Open Dialog Foundation <office@odfoundation.example>"

# Small timeouts so that recovery happens within a test; each test may override some.
FAST = {
    "OUTREACH_SMTP_TIMEOUT": "2",
    "OUTREACH_DISPATCH_SECONDS": "0.5",
    "OUTREACH_SENDING_TIMEOUT": "3",
    "OUTREACH_QUEUED_TIMEOUT": "4",
    "OUTREACH_BREAKER_COOLOFF": "2",
    "OUTREACH_RETRY_BASE_SECONDS": "1",
    "OUTREACH_BATCH_SIZE": "10",
    "OUTREACH_VISIBILITY_TIMEOUT": "60",
}
# Not what a message may end in while a campaign still moves.
MOVING = {Status.PENDING, Status.QUEUED, Status.SENDING, Status.DEFERRED}


# --- the scene: a database, a campaign, settings, processes -------------------------------------


@dataclass
class Scene:
    env: dict[str, str]
    url: str
    tmp: Path
    group: Cluster
    addresses: list[str]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The `outreach` command, run as a user runs it."""
        result = subprocess.run(
            [sys.executable, "-m", "outreach", *args],
            env={**self.env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=120,
            cwd=self.env["OUTREACH_HOME"],
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"outreach {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def rows(self) -> dict[str, Delivery]:
        with db.session_scope(self.url) as session:
            return {d.address.lower(): d for d in session.scalars(select(Delivery))}

    def statuses(self) -> Counter[str]:
        return Counter(d.status for d in self.rows().values())

    def campaign(self) -> Campaign:
        with db.session_scope(self.url) as session:
            campaign = session.scalar(select(Campaign).where(Campaign.name == NAME))
            assert campaign is not None
            return campaign

    def events(self, delivery_id: int) -> list[Event]:
        with db.session_scope(self.url) as session:
            query = select(Event).where(Event.delivery_id == delivery_id).order_by(Event.id)
            return list(session.scalars(query))

    def requeued(self) -> int:
        """Deliveries the dispatcher found unclaimed in `queued` too long and queued again."""
        with db.session_scope(self.url) as session:
            query = select(Event).where(
                Event.from_status == Status.QUEUED, Event.to_status == Status.QUEUED
            )
            return len(session.scalars(query).all())

    def waits_in_queue(self) -> list[float]:
        """Seconds each claim waited since its delivery was queued."""
        queued: dict[int | None, datetime] = {}
        waits = []
        with db.session_scope(self.url) as session:
            for e in session.scalars(
                select(Event).where(Event.kind == "status").order_by(Event.id)
            ):
                if e.to_status == Status.QUEUED:
                    queued[e.delivery_id] = e.created_at
                elif e.to_status == Status.SENDING:
                    waits.append((e.created_at - queued[e.delivery_id]).total_seconds())
        return waits

    def settled(self) -> bool:
        """Nothing of the campaign moves any more."""
        return not MOVING & set(self.statuses())

    def wait_settled(self, timeout: float) -> dict[str, Delivery]:
        wait_for(f"campaign settled ({dict(self.statuses())})", self.settled, timeout=timeout)
        return self.rows()


def write_template(folder: Path) -> Path:
    """A small letter of our own (no attachments, no PDF): quick to render 500 times."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "letter.toml").write_text('subject = "Open letter to {{ recipient.full_name }}"\n')
    (folder / "body.txt").write_text(
        "{{ salutation }},\n\nPlease read our open letter.\n\n{{ sender.name | default('') }}\n"
    )
    return folder


def write_layout(folder: Path) -> Path:
    """`write_template`'s letter with a small PDF layout: the address block in the window."""
    write_template(folder)
    (folder / "letter.html").write_text(
        '<html><body><div class="window"><div id="address">{{ recipient.display_name }}<br>'
        '{{ recipient.organisation }}</div><div id="address-end"></div></div>'
        "<p>{{ salutation }},</p><p>Please read our open letter.</p></body></html>\n"
    )
    (folder / "letter.css").write_text(
        "@page { size: A4; margin: 20mm }\n.window { position: absolute; left: 5mm; top: 30mm; }\n"
    )
    return folder


def write_recipients(path: Path, count: int) -> list[str]:
    """`count` officials as CSV; returns their addresses."""
    lines = ["honorific,given_name,family_name,organisation,country,email,language,tags"]
    addresses = []
    for i in range(count):
        address = f"official{i:03d}@parliament.example"
        addresses.append(address)
        lines.append(f"Ms,Anna,Official{i:03d},Parliament,BE,{address},en,official")
    path.write_text("\n".join(lines) + "\n")
    return addresses


@dataclass
class Broker:
    """A Redis database of this test's own, claimed from a pool so that runs of this module
    at the same time (other sessions, CI) never consume each other's tasks."""

    url: str
    key: str
    token: str

    def hold(self) -> None:
        """(Re)claim it: a Redis restarted without its data forgot every claim."""
        redis.Redis.from_url(LOCKS).set(self.key, self.token, ex=900)


@pytest.fixture
def broker() -> Iterator[Broker]:
    """An empty Redis database for the test, emptied again afterwards (and Redis running)."""
    redis_start()
    locks, token = redis.Redis.from_url(LOCKS), uuid.uuid4().hex
    in_use = {int(c["db"]) for c in locks.client_list()}  # e.g. workers another run left behind
    for number in DATABASES:
        key = f"outreach-tests:redis-db:{number}"
        if number not in in_use and locks.set(key, token, nx=True, ex=900):
            break
    else:
        pytest.fail(f"every Redis database of {DATABASES} is in use by another test run")
    claim = Broker(f"redis://127.0.0.1:6379/{number}", key, token)
    redis.Redis.from_url(claim.url).flushdb()
    try:
        yield claim
    finally:
        redis_start()
        redis.Redis.from_url(claim.url).flushdb()
        if locks.get(key) == token.encode():
            locks.delete(key)


@pytest.fixture
def scene_factory(
    env: dict[str, str], broker: Broker, tmp_path: Path
) -> Iterator[Callable[..., Scene]]:
    """`make(url, port, count, **settings)`: recipients imported, a campaign created (a draft),
    and a Cluster whose processes end with the test."""
    with cluster({}, tmp_path / "logs") as group:

        def make(
            url: str, port: int, count: int, template: Path | None = None, **settings: str
        ) -> Scene:
            home = tmp_path / "home"
            home.mkdir(exist_ok=True)
            run_env = {
                **env,
                **FAST,
                "OUTREACH_HOME": str(home),
                "OUTREACH_DATABASE_URL": url,
                "OUTREACH_BROKER_URL": broker.url,
                "OUTREACH_SMTP_HOST": "127.0.0.1",
                "OUTREACH_SMTP_PORT": str(port),
                "OUTREACH_SMTP_SECURITY": "plain",
                **settings,
            }
            group.env = run_env
            addresses = write_recipients(tmp_path / "recipients.csv", count)
            with db.session_scope(url) as session:
                registry.import_file(
                    session, tmp_path / "recipients.csv", settings=load_settings(home=home)
                )
                campaigns.create_campaign(
                    session, name=NAME,
                    template_dir=template or write_template(tmp_path / "template"),
                    sender=SENDER, to=["tag:official"],
                )  # fmt: skip
            return Scene(run_env, url, tmp_path, group, addresses)

        yield make


# --- what every scenario ends with ----------------------------------------------------------


def accepted(messages: Iterable[Received]) -> Counter[str]:
    """Accepted messages per recipient address."""
    return Counter(address.lower() for m in messages for address in m.rcpt_tos)


def assert_exactly_once(
    rows: dict[str, Delivery], messages: Iterable[Received], *, allowed: Iterable[str] = ()
) -> None:
    """Every recipient: exactly one accepted message and `sent`, or none and a status that
    says why (`failed`, `suppressed`, `cancelled`, `unknown`, or those in `allowed`). Never
    two."""
    counts = accepted(messages)
    twice = {a: n for a, n in counts.items() if n > 1}
    assert not twice, f"sent more than once: {twice}"
    assert set(counts) <= set(rows), f"messages to strangers: {set(counts) - set(rows)}"
    why_not = {Status.FAILED, Status.SUPPRESSED, Status.CANCELLED, Status.UNKNOWN, *allowed}
    for address, d in rows.items():
        if d.status == Status.SENT:
            assert counts[address] == 1, f"{address} is sent but the server has no message"
        elif d.status == Status.UNKNOWN:
            assert counts[address] <= 1
        else:
            assert d.status in why_not, f"{address} is {d.status}"
            assert counts[address] == 0, f"{address} is {d.status} yet got a message"


RESULT = re.compile(r"outreach\.send_batch\[[^\]]+\] succeeded in [\d.]+s: (\{.*?\})")


def task_results(proc: Proc) -> list[dict[str, int]]:
    """The results of the send_batch tasks a worker ran, from its log."""
    found = re.findall(RESULT, proc.text())
    return [ast.literal_eval(r) for r in found]


def sent_count(server: RecordingServer) -> int:
    return len(server.messages)


# --- scenarios ------------------------------------------------------------------------------


def test_a_worker_says_as_it_starts_that_its_database_cannot_be_reached(
    env: dict[str, str], broker: Broker, tmp_path: Path
) -> None:
    """Each worker process opens its database connection as it starts (its first task no
    longer waits for it), so a database that is down is reported then, without its password,
    rather than at the first campaign; the worker stays up for when it is back."""
    url = "postgresql://outreach:s3cret@127.0.0.1:1/outreach"  # nothing listens on port 1
    run_env = {**env, **FAST, "OUTREACH_DATABASE_URL": url, "OUTREACH_BROKER_URL": broker.url}
    with cluster(run_env, tmp_path / "logs") as group:
        worker = group.worker("w1")
        said = wait_for(
            "the warning", lambda: "cannot reach the database" in worker.text(), timeout=10
        )
        assert said and "postgresql://outreach:***@127.0.0.1:1/outreach" in worker.text()
        assert "s3cret" not in worker.text()
        assert worker.alive()


def test_500_recipients_across_two_workers(
    scene_factory: Callable[..., Scene], database_url: str, smtp_server: RecordingServer
) -> None:
    scene = scene_factory(
        database_url, smtp_server.port, 500,
        OUTREACH_BATCH_SIZE="25", OUTREACH_QUEUED_TIMEOUT="60",
    )  # fmt: skip
    w1, w2 = scene.group.start(workers=2)

    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")
    rows = scene.wait_settled(timeout=180)

    assert Counter(d.status for d in rows.values()) == {Status.SENT: 500}
    assert len(smtp_server.messages) == 500
    assert_exactly_once(rows, smtp_server.messages)
    for worker in (w1, w2):  # both took part
        assert sum(r.get("sent", 0) for r in task_results(worker)) > 0, worker.text()[-3000:]
    wait_for("campaign done", lambda: scene.campaign().state == CampaignState.DONE, timeout=10)


def test_workers_render_letters_ahead_and_send_while_the_rest_are_rendered(
    scene_factory: Callable[..., Scene],
    database_url: str,
    smtp_server: RecordingServer,
    tmp_path: Path,
) -> None:
    scene = scene_factory(
        database_url, smtp_server.port, 12, template=write_layout(tmp_path / "lettered"),
        OUTREACH_LETTERS_AHEAD="2",
    )  # fmt: skip
    w1, w2 = scene.group.start(workers=2)
    with db.session_scope(scene.url) as session:  # no `campaign send`: no check rendered them
        campaign = campaigns.get_campaign(session, NAME)
        campaigns.schedule(session, campaign, load_settings(), at=utcnow())

    rows = scene.wait_settled(timeout=120)

    assert Counter(d.status for d in rows.values()) == {Status.SENT: 12}
    assert_exactly_once(rows, smtp_server.messages)
    with db.session_scope(scene.url) as session:
        kept = {d.address.lower(): d.letter_sha256 for d in session.scalars(select(Delivery))}
        history = list(session.scalars(select(Event).order_by(Event.id)))
    for message in smtp_server.messages:
        pdfs = [
            part.get_payload(decode=True)
            for part in message_from_bytes(message.data).walk()
            if part.get_content_type() == "application/pdf"
        ]
        assert len(pdfs) == 1, "one PDF letter per message"
        assert hashlib.sha256(pdfs[0]).hexdigest() == kept[message.rcpt_tos[0].lower()]
    rendered = [e.id for e in history if e.kind == "letter"]
    sent = [e.id for e in history if e.to_status == Status.SENT]
    assert len(rendered) == 12
    assert sent[0] < rendered[-1], "the first letters went before the last were rendered"
    assert "outreach.prepare_letters" in w1.text() + w2.text()  # the workers rendered them


def test_same_task_delivered_twice_at_once_sends_once(
    scene_factory: Callable[..., Scene], database_url: str, smtp_server: RecordingServer
) -> None:
    scene = scene_factory(database_url, smtp_server.port, 10)
    w1, w2 = scene.group.worker("w1", wait=False), scene.group.worker("w2", wait=False)
    # Queued by hand (no beat, no dispatcher): the same ids go to the broker twice.
    with db.session_scope(database_url) as session:
        campaign = campaigns.get_campaign(session, NAME)
        settings = load_settings(database_url=database_url)
        campaigns.schedule(session, campaign, settings, at=datetime.now(ZoneInfo("UTC")))
        campaign.state = CampaignState.RUNNING
        ids = sorted(session.scalars(select(Delivery.id)))
        assert deliveries.transition_many(session, ids, Status.PENDING, Status.QUEUED) == ids
    w1.wait_ready(" ready."), w2.wait_ready(" ready.")
    producer = Celery(broker=scene.env["OUTREACH_BROKER_URL"])
    try:
        for _ in range(2):
            producer.send_task("outreach.send_batch", args=[ids])
    finally:
        producer.close()

    wait_for("both copies of the task ran", lambda: task_results(w1) and task_results(w2),
             timeout=30)  # fmt: skip
    rows = scene.wait_settled(timeout=10)
    assert_exactly_once(rows, smtp_server.messages)
    assert len(smtp_server.messages) == 10  # one SMTP transaction per delivery
    results = task_results(w1) + task_results(w2)
    assert sum(r.get("sent", 0) for r in results) == 10
    assert sum(r.get("skipped", 0) for r in results) == 10  # the other copy did nothing
    for d in rows.values():
        claims = [e for e in scene.events(d.id) if e.to_status == Status.SENDING]
        assert len(claims) == 1 and d.attempts == 1


def test_worker_killed_in_the_uncertain_window(
    scene_factory: Callable[..., Scene], database_url: str, smtp_server: RecordingServer
) -> None:
    scene = scene_factory(
        database_url, smtp_server.port, 6,
        OUTREACH_SENDING_TIMEOUT="2", OUTREACH_QUEUED_TIMEOUT="3",
    )  # fmt: skip
    target = scene.addresses[2]
    killed: list[int] = []
    done = threading.Event()

    def kill_the_sender(peer: tuple[str, int]) -> str:
        """DATA has arrived, no reply yet: SIGKILL the worker on the other end of it."""
        pid = pid_of_peer(peer, scene.group.pids())
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        done.set()
        return "421 4.3.0 not kept: the client was killed before the reply"

    smtp_server.on_data(target, kill_the_sender, times=1)
    (w1,) = scene.group.start()
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

    assert done.wait(30), "the worker never sent the target's DATA"
    assert killed == [w1.pid], f"killed {killed}, the worker is {w1.pid}"
    w1.popen.wait(10)
    assert w1.popen.returncode == -signal.SIGKILL
    assert scene.rows()[target].status == Status.SENDING  # the uncertain window, on disk

    scene.group.worker("w2")  # a worker started again
    rows = scene.wait_settled(timeout=40)
    lost = rows[target]
    assert lost.status == Status.UNKNOWN, lost.status
    assert lost.attempts == 1
    assert_exactly_once(rows, smtp_server.messages)
    assert {a for a, d in rows.items() if d.status == Status.SENT} == set(scene.addresses) - {
        target
    }  # no message lost
    why = [e.detail for e in scene.events(lost.id) if e.to_status == Status.UNKNOWN]
    assert why and "may have accepted" in why[0]
    listed = scene.cli("deliveries", "list", "--status", "unknown").stdout
    assert f"Official{2:03d}" in listed and "unknown" in listed

    # Only the operator's word sends it again, and once.
    assert (
        "1 delivery(ies) queued again"
        in scene.cli("deliveries", "resend", "--all-unknown", "--yes").stdout
    )
    rows = wait_for(
        "the unknown one resent",
        lambda: (r := scene.rows())[target].status == Status.SENT and r,
        timeout=30,
    )
    assert_exactly_once(rows, smtp_server.messages)
    assert len(smtp_server.messages) == 6


def test_redis_stopped_and_started_in_the_middle(
    scene_factory: Callable[..., Scene],
    broker: Broker,
    sqlite_url: str,
    smtp_server: RecordingServer,
) -> None:
    scene = scene_factory(sqlite_url, smtp_server.port, 40, OUTREACH_RATE_PER_SECOND="8")
    w1, w2 = scene.group.start(workers=2)
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")
    wait_for("a few sent", lambda: sent_count(smtp_server) >= 8, timeout=30)

    offsets = {w.name: len(w.text()) for w in (w1, w2)}
    try:
        redis_stop()  # the queue, the unacknowledged tasks and the rate counters are gone
        time.sleep(3)
    finally:
        redis_start()  # always: other tests need it
        broker.hold()
    assert sent_count(smtp_server) < 40, "the campaign ended before Redis went away"

    rows = scene.wait_settled(timeout=90)
    assert Counter(d.status for d in rows.values()) == {Status.SENT: 40}
    assert_exactly_once(rows, smtp_server.messages)
    # Both workers consume again after reconnecting (celery#9054: they would stay silent).
    for worker in (w1, w2):
        after = worker.text()[offsets[worker.name] :]
        assert "Connected to redis://" in after, after[-3000:]
        wait_for(
            f"{worker.name} receives tasks after the reconnection",
            lambda w=worker: "] received" in w.text()[offsets[w.name] :],
            timeout=15,
        )


def test_451_for_a_while_then_sent(
    scene_factory: Callable[..., Scene], sqlite_url: str, smtp_server: RecordingServer
) -> None:
    # Three attempts at most: two refusals, then the third goes through.
    scene = scene_factory(sqlite_url, smtp_server.port, 6, OUTREACH_MAX_ATTEMPTS="3")
    greylisted = scene.addresses[1:3]
    for address in greylisted:
        smtp_server.fail_data(address, 451, "4.7.1 greylisted, try again later", times=2)
    scene.group.start()
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

    rows = scene.wait_settled(timeout=60)
    assert Counter(d.status for d in rows.values()) == {Status.SENT: 6}
    assert_exactly_once(rows, smtp_server.messages)
    for address in greylisted:
        history = [(e.from_status, e.to_status, e.detail) for e in scene.events(rows[address].id)]
        deferred = [h for h in history if h[1] == Status.DEFERRED]
        assert len(deferred) == 2 and all("451" in h[2] for h in deferred), history
        assert rows[address].attempts == 3


def test_550_to_one_recipient_fails_it_alone(
    scene_factory: Callable[..., Scene], sqlite_url: str, smtp_server: RecordingServer
) -> None:
    scene = scene_factory(sqlite_url, smtp_server.port, 5)
    refused = scene.addresses[3]
    smtp_server.fail_rcpt(refused, 550, "5.1.1 no such user here")
    scene.group.start()
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

    rows = scene.wait_settled(timeout=30)
    assert rows[refused].status == Status.FAILED
    assert "550" in rows[refused].last_error and "no such user here" in rows[refused].last_error
    assert rows[refused].attempts == 1  # permanent: not retried
    assert Counter(d.status for d in rows.values()) == {Status.SENT: 4, Status.FAILED: 1}
    assert_exactly_once(rows, smtp_server.messages)
    assert "no such user here" in scene.cli("campaign", "status", NAME).stdout


def test_smtp_server_down_for_a_while_then_back(
    scene_factory: Callable[..., Scene], sqlite_url: str
) -> None:
    first = RecordingServer().start()
    try:
        port = first.port
        scene = scene_factory(sqlite_url, port, 20, OUTREACH_RATE_PER_SECOND="5")
        scene.group.start()
        scene.cli("campaign", "send", NAME, "--yes", "--no-wait")
        wait_for("a few sent", lambda: sent_count(first) >= 4, timeout=30)
    finally:
        first.stop()
    time.sleep(3)  # down: connections refused
    with RecordingServer(port=port) as again:
        rows = scene.wait_settled(timeout=60)
        assert again.messages, "nothing sent after the server came back"
    assert_exactly_once(rows, first.messages + again.messages)
    statuses = Counter(d.status for d in rows.values())
    assert set(statuses) <= {Status.SENT, Status.UNKNOWN}, statuses
    assert statuses[Status.SENT] >= 19, statuses  # one may have been on the wire: unknown
    # The dispatcher's next tick, up to a second after the last delivery settled, ends it.
    wait_for("campaign done", lambda: scene.campaign().state == CampaignState.DONE, timeout=10)


def paused_by_the_breaker(scene: Scene) -> Campaign:
    """The scene's campaign, once the circuit breaker has paused it."""
    return wait_for(
        "paused by the breaker",
        lambda: (c := scene.campaign()).state == CampaignState.PAUSED and c,
        timeout=20,
    )


def test_server_that_never_greets_times_out_and_pauses(
    scene_factory: Callable[..., Scene], sqlite_url: str
) -> None:
    with BadServer(greeting=None) as silent:
        port = silent.port
        scene = scene_factory(sqlite_url, port, 3, OUTREACH_BREAKER_COOLOFF="6")
        scene.group.start()
        scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

        campaign = paused_by_the_breaker(scene)
        assert "timed out" in campaign.paused_reason, campaign.paused_reason
        status = scene.cli("campaign", "status", NAME).stdout
        assert "paused" in status and "timed out" in status, status
        rows = scene.rows()
        assert all(d.attempts == 0 for d in rows.values())  # nothing burnt: never connected
        assert_exactly_once(rows, [], allowed=MOVING)
        assert silent.connections >= 1
    # A real server on that port: the breaker's cool-off ends and the campaign finishes.
    with RecordingServer(port=port) as server:
        rows = scene.wait_settled(timeout=40)
        assert Counter(d.status for d in rows.values()) == {Status.SENT: 3}
        assert_exactly_once(rows, server.messages)


def test_554_at_the_greeting_pauses_until_the_team_resumes(
    scene_factory: Callable[..., Scene], sqlite_url: str
) -> None:
    """A permanent refusal of the connection: nothing was claimed, so the breaker pauses the
    campaign (with no cool-off: a 554 does not pass by itself) instead of leaving the batch
    `queued` for the dispatcher to requeue into the same refusal for ever."""
    with BadServer(greeting="554 5.7.1 access denied") as refusing:
        port = refusing.port
        scene = scene_factory(sqlite_url, port, 3, OUTREACH_BREAKER_COOLOFF="1")
        scene.group.start()
        scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

        campaign = paused_by_the_breaker(scene)
        assert "554" in campaign.paused_reason and campaign.resume_at is None, campaign
        time.sleep(2)  # past the cool-off a transient refusal would have
        assert scene.campaign().state == CampaignState.PAUSED
        rows = scene.rows()
        assert all(d.attempts == 0 for d in rows.values())
        assert_exactly_once(rows, [], allowed=MOVING)
    with RecordingServer(port=port) as server:
        scene.cli("campaign", "resume", NAME)
        rows = scene.wait_settled(timeout=40)
        assert Counter(d.status for d in rows.values()) == {Status.SENT: 3}
        assert_exactly_once(rows, server.messages)


def test_settings_that_allow_no_connection_pause_the_campaign(
    scene_factory: Callable[..., Scene], sqlite_url: str, smtp_server: RecordingServer
) -> None:
    """A login without TLS is refused before the client connects: the breaker pauses the
    campaign and says why, as for a server that refuses us, and nothing is sent."""
    scene = scene_factory(sqlite_url, smtp_server.port, 3, OUTREACH_SMTP_USERNAME="outreach")
    scene.group.start()
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

    campaign = paused_by_the_breaker(scene)
    assert "without TLS" in campaign.paused_reason, campaign.paused_reason
    assert "without TLS" in scene.cli("campaign", "status", NAME).stdout
    assert all(d.attempts == 0 for d in scene.rows().values())
    assert smtp_server.messages == []


def test_421_to_every_connection_pauses_without_a_storm(
    scene_factory: Callable[..., Scene], sqlite_url: str
) -> None:
    with BadServer(greeting="421 4.3.2 Service not available, try later") as refusing:
        scene = scene_factory(sqlite_url, refusing.port, 10, OUTREACH_BATCH_SIZE="5")
        scene.group.start(workers=2)
        scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

        campaign = paused_by_the_breaker(scene)
        assert "421" in campaign.paused_reason, campaign.paused_reason
        before, started = refusing.connections, time.monotonic()
        time.sleep(5)
        attempts = refusing.connections - before
        elapsed = time.monotonic() - started
        # A cool-off of 2 s: about one try per batch (2) per cool-off; without the breaker, each
        # delivery would retry on its own, again and again.
        assert attempts <= 2 * (elapsed / 2 + 1) + 2, f"{attempts} connections in {elapsed:.1f}s"
        status = scene.cli("campaign", "status", NAME).stdout
        assert "421" in status, status
        rows = scene.rows()
        assert all(d.attempts == 0 for d in rows.values())
        assert_exactly_once(rows, [], allowed=MOVING)


def test_pause_resume_and_cancel_in_the_middle(
    scene_factory: Callable[..., Scene], database_url: str, smtp_server: RecordingServer
) -> None:
    # 48 at 4 a second: 12 s of sending, time for the CLI to pause on a busy machine.
    scene = scene_factory(database_url, smtp_server.port, 48, OUTREACH_RATE_PER_SECOND="4")
    scene.group.start(workers=2)
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")
    wait_for("a few sent", lambda: sent_count(smtp_server) >= 4, timeout=30)

    scene.cli("campaign", "pause", NAME)
    at_pause = sent_count(smtp_server)
    time.sleep(2.5)
    paused = sent_count(smtp_server)
    assert paused - at_pause <= 2, "still sending after pause"  # one on the wire per worker
    assert scene.campaign().state == CampaignState.PAUSED
    assert set(scene.statuses()) <= {Status.SENT, Status.PENDING}  # taken back from the broker
    assert paused < 48

    scene.cli("campaign", "resume", NAME)
    wait_for("sending again", lambda: sent_count(smtp_server) >= paused + 4, timeout=20)
    scene.cli("campaign", "cancel", NAME, "--yes")
    at_cancel = sent_count(smtp_server)
    time.sleep(2.5)
    assert sent_count(smtp_server) - at_cancel <= 2, "still sending after cancel"

    rows = scene.wait_settled(timeout=10)
    statuses = Counter(d.status for d in rows.values())
    assert set(statuses) == {Status.SENT, Status.CANCELLED}, statuses
    assert statuses[Status.SENT] == len(smtp_server.messages)
    assert_exactly_once(rows, smtp_server.messages)
    assert scene.campaign().state == CampaignState.CANCELLED


def test_scheduled_campaign_starts_on_time_and_not_before(
    scene_factory: Callable[..., Scene], database_url: str, smtp_server: RecordingServer
) -> None:
    scene = scene_factory(database_url, smtp_server.port, 3)
    scene.group.start()
    brussels = ZoneInfo("Europe/Brussels")
    at = (datetime.now(brussels) + timedelta(seconds=12)).replace(microsecond=0)  # CLI's time
    scene.cli(
        "campaign", "schedule", NAME, "--at", at.strftime("%Y-%m-%d %H:%M:%S"),
        "--tz", "Europe/Brussels", "--yes",
    )  # fmt: skip
    assert scene.campaign().state == CampaignState.SCHEDULED
    assert smtp_server.messages == []

    rows = scene.wait_settled(timeout=40)
    arrivals = sorted(m.at for m in smtp_server.messages)
    assert len(arrivals) == 3
    assert arrivals[0] >= at.timestamp(), f"{at.timestamp() - arrivals[0]:.2f}s early"
    assert arrivals[-1] <= at.timestamp() + 15, f"{arrivals[-1] - at.timestamp():.1f}s late"
    assert_exactly_once(rows, smtp_server.messages)


def test_rate_holds_across_two_workers(
    scene_factory: Callable[..., Scene], sqlite_url: str, smtp_server: RecordingServer
) -> None:
    rate = 5
    scene = scene_factory(
        sqlite_url, smtp_server.port, 30,
        OUTREACH_RATE_PER_SECOND=str(rate), OUTREACH_BATCH_SIZE="5", OUTREACH_QUEUED_TIMEOUT="3",
    )  # fmt: skip
    w1, w2 = scene.group.start(workers=2)
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

    rows = scene.wait_settled(timeout=40)
    assert_exactly_once(rows, smtp_server.messages)
    arrivals = sorted(m.at for m in smtp_server.messages)
    assert len(arrivals) == 30
    busiest = max(sum(1 for t in arrivals if s <= t < s + 1) for s in arrivals)
    assert busiest <= rate + 1, f"{busiest} messages within one second"
    overall = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert 0.5 * rate <= overall <= 1.2 * rate, f"{overall:.2f}/s"
    for worker in (w1, w2):  # the rate is shared: both workers sent
        assert sum(r.get("sent", 0) for r in task_results(worker)) > 0
    # Released at the rate's pace: nothing waits long in the broker (here: past the time after
    # which recovery would queue it again).
    assert scene.requeued() == 0
    waits = scene.waits_in_queue()
    assert max(waits) < 3, f"waited {max(waits):.1f}s in the broker"


def test_suppressed_address_gets_nothing(
    scene_factory: Callable[..., Scene], database_url: str, smtp_server: RecordingServer
) -> None:
    scene = scene_factory(database_url, smtp_server.port, 4)
    unwanted = scene.addresses[1]
    scene.cli("suppress", "add", unwanted.upper(), "--reason", "asked not to be written to")
    scene.group.start()
    scene.cli("campaign", "send", NAME, "--yes", "--no-wait")

    rows = scene.wait_settled(timeout=30)
    assert rows[unwanted].status == Status.SUPPRESSED
    assert accepted(smtp_server.messages)[unwanted] == 0
    why = [e.detail for e in scene.events(rows[unwanted].id) if e.to_status == Status.SUPPRESSED]
    assert why and "asked not to be written to" in why[0]
    assert Counter(d.status for d in rows.values()) == {Status.SENT: 3, Status.SUPPRESSED: 1}
    assert_exactly_once(rows, smtp_server.messages)


def test_redis_is_up_after_this_module() -> None:
    """Other tests need the local Redis: whatever happened above, it runs."""
    redis_start()
    assert redis_alive()
