"""The worker's hot path in one process, for a profiler: `sending.send_batch` over a campaign of
N recipients into an smtp-sink, exactly as the task runs it, without Celery or Redis.

    .venv/bin/python benchmarks/profile_worker.py --n 2000 --db sqlite            # timing only
    benchmarks/.venv-tools/bin/pyinstrument -o out/profile.html \
        benchmarks/profile_worker.py --n 2000 --db sqlite                         # (see README)

Prints messages per second and CPU ms per message of this process (the sink's CPU apart).
With --memory, also the Python heap (tracemalloc) after the 4th batch and after the last, and
the lines that grew most between them: flat means nothing is kept per message. With --steps,
the thread CPU of each step of the loop (claim, commit, draft, compose, the SMTP phases).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import run  # noqa: E402
import workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--memory", action="store_true", help="trace the heap (slow)")
    parser.add_argument("--steps", action="store_true", help="thread CPU of each step")
    args = parser.parse_args()
    out = HERE / "out" / f"profile-{args.db}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    workload.write_pdf()
    csv_path = HERE / "out" / f"recipients-{args.n}.csv"
    workload.write_recipients(csv_path, args.n)
    port = run.free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{port}", "1024"])
    try:
        url = run.fresh_database(args.db, out)
        os.environ.update(
            OUTREACH_HOME=str(out), OUTREACH_DATABASE_URL=url, OUTREACH_SMTP_HOST="127.0.0.1",
            OUTREACH_SMTP_PORT=str(port), OUTREACH_SMTP_SECURITY="plain",
            OUTREACH_BROKER_URL="", OUTREACH_REDIS_URL="",
        )  # fmt: skip
        run.wait_port(port)
        profile(url, csv_path, args)
    finally:
        run.stop(sink)


def profile(url: str, csv_path: Path, args: argparse.Namespace) -> None:
    from outreach import campaigns, db, dispatch, registry, sending
    from outreach.config import get_settings
    from outreach.models import utcnow
    from outreach.smtp import SmtpClient
    from outreach.throttle import LocalThrottle

    settings = get_settings()
    db.upgrade(url)
    with db.session_scope(url) as session:
        registry.import_file(session, csv_path, settings=settings)
        campaign = campaigns.create_campaign(
            session, name="bench", template_dir=workload.TEMPLATE, sender=workload.SENDER,
            to=["tag:principal"], letter_date=workload.LETTER_DATE,
        )  # fmt: skip
        campaigns.schedule(session, campaign, settings, at=utcnow())
    settings = settings.model_copy(update={"max_in_flight": args.n, "batch_size": args.batch_size})
    with db.session_scope(url) as session:
        tick = dispatch.tick(session, settings, utcnow())
    sessions = db.session_factory(url)
    from sqlalchemy import event

    counts = {"statements": 0, "turns": 0}

    def statement(*_: object) -> None:
        counts["statements"] += 1

    run_on_driver = db.run_on_driver

    def on_driver(*call: Any) -> Any:  # around SQLAlchemy's events: counted here
        statement()
        return run_on_driver(*call)

    db.run_on_driver = on_driver  # type: ignore[assignment]
    engine = db.get_engine(url)
    event.listen(engine, "before_cursor_execute", statement)
    commit = db._commit

    def committing(session: Any) -> None:  # each write turn's end (the driver commits)
        counts["turns"] += 1
        commit(session)

    db._commit = committing  # type: ignore[assignment]
    kits, throttle = sending.KitCache(), LocalThrottle()
    pg = run.pg_backends(url.rsplit("/", 1)[1])
    backends = (lambda: pg(run.Scan())) if args.db == "postgresql" else list
    backend0 = {pid: run.cpu_seconds(pid) or 0.0 for pid in backends()}
    spent = time_steps() if args.steps else Counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if args.memory:
        tracemalloc.start(10)
    snapshots = []
    for number, batch in enumerate(tick.batches, 1):
        with SmtpClient.from_settings(settings) as transport:
            sender = sending.Sender(transport, settings, kits, throttle)
            sending.send_batch(sessions, batch, sender)
        if args.memory and number in (4, len(tick.batches)):
            gc.collect()  # what is kept, not what awaits the cycle collector
            snapshots.append((number * args.batch_size, tracemalloc.take_snapshot()))
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    backend = sum((run.cpu_seconds(pid) or 0.0) - backend0.get(pid, 0.0) for pid in backends())
    with db.session_scope(url) as session:
        print(campaigns.status_counts(session, campaign))
    if len(snapshots) == 2:
        heap_growth(*snapshots)
    print(
        f"{args.n / wall:.0f} msg/s, {1000 * cpu / args.n:.2f} CPU ms/msg in this process, "
        f"{counts['statements'] / args.n:.1f} statements and {counts['turns'] / args.n:.2f} "
        "write turns per message"
        + (f"; PostgreSQL backends {1000 * backend / args.n:.2f} CPU ms/msg" if backend else "")
    )
    for label, seconds in spent.most_common():
        print(f"  {1000 * seconds / args.n:6.3f} CPU ms/msg  {label}")
    if spent:
        rest = cpu - sum(spent.values())
        print(f"  {1000 * rest / args.n:6.3f} CPU ms/msg  the rest (the loop itself, _load, ...)")


def time_steps() -> Counter[str]:
    """Wrap the send loop's steps so that each adds up the thread CPU it takes (`--steps`)."""
    from outreach import db, deliveries, sending
    from outreach.smtp import SmtpClient

    spent: Counter[str] = Counter()
    steps: list[tuple[Any, str, str]] = [
        (deliveries, "claim", "claim (with the last verdict)"),
        (db, "_commit", "commit"),
        (sending, "draft", "draft (render)"),
        (sending, "compose_pieces", "compose"),
        (SmtpClient, "begin", "SMTP begin"),
        (SmtpClient, "ready", "SMTP ready"),
        (SmtpClient, "transmit", "SMTP transmit"),
        (SmtpClient, "answer", "SMTP answer"),
    ]
    for owner, name, label in steps:
        setattr(owner, name, _timed(getattr(owner, name), label, spent))
    return spent


def _timed(function: Callable[..., Any], label: str, spent: Counter[str]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] += time.thread_time() - started

    return timed


def heap_growth(
    first: tuple[int, tracemalloc.Snapshot], last: tuple[int, tracemalloc.Snapshot]
) -> None:
    """The heap after the first batches and at the end, and where it grew most."""
    (sent0, snap0), (sent1, snap1) = first, last
    size0, size1 = (sum(s.size for s in snap.statistics("filename")) for snap in (snap0, snap1))
    per_message = (size1 - size0) / max(sent1 - sent0, 1)
    print(f"heap: {size0 / 1e6:.1f} MB after {sent0} messages, {size1 / 1e6:.1f} MB after "
          f"{sent1}: {per_message / 1e3:.2f} KB per message")  # fmt: skip
    for stat in snap1.compare_to(snap0, "traceback")[:5]:
        ours = [f for f in stat.traceback if "/outreach/" in f.filename] or list(stat.traceback)
        frame = ours[-1]  # the most recent of our frames
        print(f"  {stat.size_diff / 1e6:+.2f} MB  {frame.filename}:{frame.lineno}")


if __name__ == "__main__":
    main()
