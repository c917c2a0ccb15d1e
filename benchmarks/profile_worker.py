"""The worker's hot path in one process, for a profiler: `sending.send_batch` over a campaign of
N recipients into an smtp-sink, exactly as the task runs it, without Celery or Redis.

    .venv/bin/python benchmarks/profile_worker.py --n 2000 --db sqlite            # timing only
    benchmarks/.venv-tools/bin/pyinstrument -o out/profile.html \
        benchmarks/profile_worker.py --n 2000 --db sqlite                         # (see README)

Prints messages per second and CPU ms per message of this process (the sink's CPU apart).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

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

    counts = {"statements": 0, "commits": 0}

    def statement(*_: object) -> None:
        counts["statements"] += 1

    def commit(*_: object) -> None:
        counts["commits"] += 1

    event.listen(db.get_engine(url), "before_cursor_execute", statement)
    event.listen(db.get_engine(url), "commit", commit)
    kits, throttle = sending.KitCache(), LocalThrottle()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for batch in tick.batches:
        with SmtpClient.from_settings(settings) as transport:
            sender = sending.Sender(transport, settings, kits, throttle)
            sending.send_batch(sessions, batch, sender)
    wall = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    with db.session_scope(url) as session:
        print(campaigns.status_counts(session, campaign))
    print(
        f"{args.n / wall:.0f} msg/s, {1000 * cpu / args.n:.2f} CPU ms/msg in this process, "
        f"{counts['statements'] / args.n:.1f} statements and {counts['commits'] / args.n:.2f} "
        "commits per message"
    )


if __name__ == "__main__":
    main()
