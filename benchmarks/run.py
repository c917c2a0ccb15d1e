"""The whole comparison in one command: the SMTP ceiling, mailmerge and outreach (SQLite and
PostgreSQL, Celery workers on Redis) into one Postfix smtp-sink, printed as one table.

    .venv/bin/python benchmarks/run.py --sizes 1000,10000 --db sqlite,postgresql

See benchmarks/README.md for the installs and what each figure means. Outputs (workload, logs,
databases, results.json) go to benchmarks/out/, which git ignores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import spy  # noqa: E402
import workload  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
CELERY = str(ROOT / ".venv" / "bin" / "celery")
MAILMERGE = str(HERE / ".venv-mailmerge" / "bin" / "mailmerge")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TICK = os.sysconf("SC_CLK_TCK")
OPEN_STATUSES = {"pending", "queued", "sending", "deferred"}


# --- /proc ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and
    parentheses): index 0 is field 3."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and of its waited-for children."""
    fields = _stat(pid)
    if fields is None:
        return None
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


class Scan:
    """One look at /proc, shared by the groups of a Monitor sample: each group scanning it for
    itself took about 9 ms of CPU a sample (2 % of 2 cores) from the system being measured."""

    @cached_property
    def parents(self) -> dict[int, int]:
        found = {pid: _stat(pid) for pid in all_pids()}
        return {pid: int(fields[1]) for pid, fields in found.items() if fields is not None}

    @cached_property
    def children(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for pid, ppid in self.parents.items():
            children.setdefault(ppid, []).append(pid)
        return children

    @cached_property
    def commands(self) -> dict[int, str]:
        return {pid: cmdline(pid) for pid in self.parents}


Group = Callable[[Scan], Iterable[int]]
"""A group's processes, as one scan of /proc finds them."""


def tree(root: int, scan: Scan) -> list[int]:
    """A process and all its descendants."""
    children = scan.children
    found, frontier = [root], [root]
    while frontier:
        frontier = [child for pid in frontier for child in children.get(pid, [])]
        found += frontier
    return found


def wait_quiet(pids: Group, timeout: float = 60.0) -> None:
    """Until the processes have used less than 4 % of a core for half a second: started up.
    On a slow or busy machine a fixed sleep counted the last imports as the first messages."""
    deadline, before = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        now = sum(cpu_seconds(pid) or 0.0 for pid in pids(Scan()))
        if before is not None and now - before < 0.02:
            return
        before = now
        time.sleep(0.5)


class Monitor:
    """Samples the CPU of named groups of processes every 0.2 s; a process that exits keeps its
    last sample. Long-lived shared processes are counted from a baseline."""

    def __init__(self, groups: dict[str, Group]) -> None:
        self.groups = groups
        self.seen: dict[str, dict[int, float]] = {name: {} for name in groups}
        self.base: dict[str, dict[int, float]] = {name: {} for name in groups}
        self.rss: dict[str, dict[int, float]] = {name: {} for name in groups}
        self._stop = threading.Event()
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self, baseline: bool = False) -> None:
        scan = Scan()
        for name, pids in self.groups.items():
            for pid in pids(scan):
                cpu = cpu_seconds(pid)
                if cpu is None:
                    continue
                if baseline:
                    self.base[name][pid] = cpu
                self.seen[name][pid] = max(cpu, self.seen[name].get(pid, 0.0))
                self.rss[name][pid] = peak_rss_mb(pid) or self.rss[name].get(pid, 0.0)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {
            name: sum(cpu - self.base[name].get(pid, 0.0) for pid, cpu in seen.items())
            for name, seen in self.seen.items()
        }


def run_timed(cmd: list[str], **kwargs: object) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (the process and its children) and exit code of a command."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, process.returncode


# --- services ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def postfix_master_pids() -> list[int]:
    return [p for p in all_pids() if cmdline(p).startswith("/usr/lib/postfix/sbin/master")]


@dataclass
class Services:
    out: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    sink_port: int = 0
    redis_port: int = 0

    def start(self) -> None:
        if postfix_master_pids():
            raise SystemExit("a Postfix master process runs: stop it (postfix stop) first")
        self.sink_port, self.redis_port = free_port(), free_port()
        log = (self.out / "sink.log").open("w")
        self.sink = self._spawn(
            ["smtp-sink", "-u", "postfix", "-m", "256", f"127.0.0.1:{self.sink_port}", "1024"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.redis = self._spawn(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=(self.out / "redis.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_port(self.sink_port)
        wait_port(self.redis_port)

    def _spawn(self, cmd: list[str], **kwargs: object) -> subprocess.Popen:
        process = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


def stop(process: subprocess.Popen, timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- rows of the table --------------------------------------------------------------------------


@dataclass
class Result:
    run: str
    n: int
    rate: float  # messages per second
    cpu: dict[str, float]  # process group -> CPU seconds
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_ms(self) -> float:
        return 1000 * sum(v for k, v in self.cpu.items() if not k.startswith("(")) / self.n


def ceiling(services: Services, sample: Path, messages: int, sessions: list[int]) -> Result:
    best: Result | None = None
    for s in sessions:
        monitor = Monitor({"smtp-sink": lambda _: [services.sink.pid]})
        wall, cpu, code = run_timed(
            ["smtp-source", "-d", "-s", str(s), "-m", str(messages), "-F", str(sample),
             "-f", "office@civicspace.example", "-t", "member@parliament.example.org",
             f"127.0.0.1:{services.sink_port}"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        sink = monitor.stop()
        if code != 0:
            raise RuntimeError(f"smtp-source exited {code}")
        result = Result(
            f"ceiling: smtp-source -s {s}", messages, messages / wall,
            {"smtp-source": cpu, **sink}, {"sessions": s},
        )  # fmt: skip
        print(f"  {result.run}: {result.rate:.0f} msg/s", flush=True)
        if best is None or result.rate > best.rate:
            best = result
    assert best is not None
    return best


def peer(services: Services, n: int) -> Result:
    folder = services.out / f"mailmerge-{n}"
    workload.write_mailmerge(folder, n)
    (folder / "mailmerge_server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {services.sink_port}\nsecurity = Never\n"
    )
    monitor = Monitor({"smtp-sink": lambda _: [services.sink.pid]})
    with (folder / "stdout.txt").open("w") as log:
        wall, cpu, code = run_timed(
            [MAILMERGE, "--no-dry-run", "--no-limit", "--output-format", "text",
             "--template", "mailmerge_template.txt", "--database", "mailmerge_database.csv",
             "--config", "mailmerge_server.conf"],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    sink = monitor.stop()
    if code != 0:
        raise RuntimeError(f"mailmerge exited {code}: see {folder / 'stdout.txt'}")
    return Result(f"mailmerge 2.3, N={n}", n, n / wall, {"mailmerge": cpu, **sink})


def fresh_database(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        path = folder / "outreach.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    import psycopg

    name = f"outreach_bench_{folder.name.replace('-', '_')}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def pg_backends(database: str) -> Group:
    marker = f" {database} "

    def pids(scan: Scan) -> list[int]:
        return [
            p
            for p, line in scan.commands.items()
            if line.startswith("postgres: ") and marker in line and p not in POLLERS
        ]

    return pids


def pg_aux(scan: Scan) -> list[int]:
    names = ("checkpointer", "background writer", "walwriter")
    return [p for p, line in scan.commands.items() if any(f": {n}" in line for n in names)]


def outreach_cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PY, "-m", "outreach", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"outreach {' '.join(args)}: {result.stdout}\n{result.stderr}")
    return result


def in_process(url: str) -> dict[str, float]:
    """Figures taken in this process over the sent campaign, without interpreter start-up:
    milliseconds of `status_counts` (median of 5, and the first), seconds of `report` (built,
    as the CLI's `report` does, and written as CSV), the seconds from the first `queued` event
    to the last outcome, and seconds to create the deliveries of a probe campaign over the same
    recipients (flushed, then rolled back)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import DBAPIError

    from outreach import campaigns, db, reports
    from outreach.config import get_settings
    from outreach.models import Event
    from outreach.models import utcnow as now

    settings = get_settings()
    sessions = db.session_factory(url)
    figures: dict[str, float] = {}
    with sessions() as session:
        campaign = campaigns.get_campaign(session, "bench")
        timings = []
        for _ in range(6):
            started = time.perf_counter()
            campaigns.status_counts(session, campaign)
            timings.append(1000 * (time.perf_counter() - started))
            session.rollback()
        figures["counts_ms"] = statistics.median(timings[1:])
        figures["counts_first_ms"] = timings[0]
        started = time.perf_counter()
        try:
            reports.to_csv(reports.build_report(session, campaign))
            figures["report_s"] = time.perf_counter() - started
        except DBAPIError as exc:  # shown as "failed" in the table
            print(f"  report failed: {str(exc.orig).splitlines()[0]}", flush=True)
            figures["report_s"] = math.nan
        session.rollback()
        q = select(func.min(Event.created_at)).where(
            Event.campaign_id == campaign.id, Event.to_status == "queued"
        )
        first = session.scalar(q)
        last = session.scalar(
            select(func.max(Event.created_at)).where(
                Event.campaign_id == campaign.id, Event.to_status.in_(("sent", "failed"))
            )
        )
        if first is not None and last is not None:
            figures["elapsed_s"] = (last - first).total_seconds()
        probe = campaigns.create_campaign(
            session, name="probe", template_dir=workload.TEMPLATE, sender=workload.SENDER,
            to=["tag:principal"],
        )  # fmt: skip
        started = time.perf_counter()
        campaigns.schedule(session, probe, settings, at=now())
        session.flush()
        figures["create_s"] = time.perf_counter() - started
        session.rollback()
    db.get_engine.cache_clear()
    return figures


def workspace(folder: Path, kind: str, n: int) -> tuple[Path, Path, str, dict[str, str]]:
    """A fresh folder and database, the N recipients as CSV beside it, and the environment of
    the outreach commands run in it."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    csv_path = folder.parent / f"recipients-{n}.csv"
    workload.write_recipients(csv_path, n)
    url = fresh_database(kind, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env.update(
        OUTREACH_HOME=str(folder),
        OUTREACH_DATABASE_URL=url,
        OUTREACH_SENDER=workload.SENDER,
        PYTHONPATH=str(ROOT),
    )
    return folder, csv_path, url, env


def outreach_run(services: Services, kind: str, n: int, args: argparse.Namespace) -> Result:
    folder, csv_path, url, env = workspace(services.out / f"outreach-{kind}-{n}", kind, n)
    env.update(
        OUTREACH_BROKER_URL=services.broker,
        OUTREACH_SMTP_HOST="127.0.0.1",
        OUTREACH_SMTP_PORT=str(services.sink_port),
        OUTREACH_SMTP_SECURITY="plain",
    )
    if args.batch_size:
        env["OUTREACH_BATCH_SIZE"] = str(args.batch_size)
    outreach_cli(env, "db", "upgrade", cwd=folder)
    started = time.perf_counter()
    outreach_cli(env, "recipients", "import", str(csv_path), cwd=folder)
    imported = time.perf_counter() - started
    outreach_cli(env, "campaign", "create", "bench", "--template", str(workload.TEMPLATE),
                 "--to", "tag:principal", "--date", workload.LETTER_DATE.isoformat(),
                 cwd=folder)  # fmt: skip
    subprocess.run(
        ["redis-cli", "-p", str(services.redis_port), "flushall"], check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    logs = (folder / "workers.log").open("w")
    workers = [
        subprocess.Popen(
            [
                CELERY,
                "-A",
                "workers",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(args.concurrency),
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
                "-n",
                f"bench{i}@%h",
            ],
            env=env,
            cwd=ROOT,
            stdout=logs,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for i in range(args.workers)
    ]
    beat = subprocess.Popen(
        [CELERY, "-A", "workers", "beat", "--loglevel", "WARNING",
         "-s", str(folder / "beat-schedule")],
        env=env, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT,
    )  # fmt: skip
    groups: dict[str, Group] = {
        "workers": lambda scan: [p for w in workers for p in tree(w.pid, scan)],
        "beat": lambda scan: tree(beat.pid, scan),
        "redis": lambda _: [services.redis.pid],
        "smtp-sink": lambda _: [services.sink.pid],
    }
    time.sleep(3)  # the workers' pools are forked
    # ... and done importing
    wait_quiet(lambda scan: [*groups["workers"](scan), *groups["beat"](scan)])
    if kind == "postgresql":
        groups["postgresql backends"] = pg_backends(url.rsplit("/", 1)[1])
        groups["(postgresql aux, shared)"] = pg_aux
    done(url)  # this script's poller connects now: its server process starts outside the run
    sampler = spy.record(workers[0].pid, folder / "profile.txt") if args.profile else None
    monitor = Monitor(groups)
    send_wall, send_cpu, code = run_timed(
        [PY, "-m", "outreach", "campaign", "send", "bench", "--yes", "--no-wait"],
        env=env, cwd=folder, stdout=(folder / "send.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    if code != 0:
        raise RuntimeError(f"campaign send exited {code}: see {folder / 'send.log'}")
    deadline = time.monotonic() + args.timeout
    while not done(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind} N={n}: not done after {args.timeout} s")
        time.sleep(0.5)
    cpu = monitor.stop()
    if sampler is not None:
        spy.finish(sampler)
        profile = spy.summary(spy.steps(folder / "profile.txt", workers[0].pid))
        (folder / "profile-summary.txt").write_text(profile + "\n")
        print(profile, flush=True)
    rss = max(
        (mb for pid, mb in monitor.rss["workers"].items() if pid not in {w.pid for w in workers}),
        default=0.0,
    )
    for process in [beat, *workers]:
        stop(process)
    os.environ["OUTREACH_DATABASE_URL"] = url  # for get_settings() in in_process
    if kind == "postgresql":
        vacuum_unless_autovacuum(url)
    figures = in_process(url)
    sent = count_sent(url)
    if sent != n:
        print(f"  warning: {sent} of {n} sent", flush=True)
    let_go(url, drop=not args.keep)
    cpu["(campaign send: check all, CLI)"] = send_cpu
    return Result(
        f"outreach {kind}, N={n}", n, n / figures["elapsed_s"], cpu,
        {"rss": rss, "send_cmd_s": send_wall, "import_s": imported, **figures},
    )  # fmt: skip


def scale_run(kind: str, n: int, out: Path) -> Result:
    """The figures that depend on N without sending N messages (at ~100 msg/s on 2 cores, 100k
    take half an hour per database): the campaign's deliveries created, then all of them marked
    sent in one statement with one event each, then `in_process` as after a real send."""
    from sqlalchemy import text

    from outreach import campaigns, db
    from outreach.config import get_settings
    from outreach.models import utcnow as now

    folder, csv_path, url, env = workspace(out.resolve() / f"scale-{kind}-{n}", kind, n)
    outreach_cli(env, "db", "upgrade", cwd=folder)
    outreach_cli(env, "recipients", "import", str(csv_path), cwd=folder)
    outreach_cli(env, "campaign", "create", "bench", "--template", str(workload.TEMPLATE),
                 "--to", "tag:principal", cwd=folder)  # fmt: skip
    os.environ["OUTREACH_DATABASE_URL"] = url
    with db.session_scope(url) as session:
        campaign = campaigns.get_campaign(session, "bench")
        started = time.perf_counter()
        campaigns.schedule(session, campaign, get_settings(), at=now())
        session.flush()
        created = time.perf_counter() - started
    with db.session_scope(url) as session:
        session.execute(text(
            "INSERT INTO events (campaign_id, delivery_id, kind, from_status, to_status, detail,"
            " created_at) SELECT campaign_id, id, 'status', 'sending', 'sent', 'accepted',"
            " created_at FROM deliveries"))  # fmt: skip
        session.execute(text("UPDATE deliveries SET status = 'sent', sent_at = created_at"))
    if kind == "postgresql":
        vacuum_analyze(url)  # as autovacuum would, a while after such a bulk update
    figures = in_process(url)
    _engines[url] = db.get_engine(url)
    let_go(url, drop=True)
    return Result(
        f"outreach {kind}, N={n}, in process", n, 0.0, {}, {**figures, "create_s": created}
    )


def vacuum_unless_autovacuum(url: str) -> None:
    """With autovacuum off (as on the machine of the table), the send leaves every delivery's
    three earlier row versions behind, and the counts and report read through them: VACUUM
    ANALYZE as autovacuum, on by default, would soon after the send."""
    if vacuum_analyze(url, unless_autovacuum=True):
        print("  (autovacuum is off on this server: VACUUM ANALYZE before the in-process figures)")


def vacuum_analyze(url: str, *, unless_autovacuum: bool = False) -> bool:
    """VACUUM ANALYZE the database (outside a transaction); whether it ran."""
    from sqlalchemy import text

    from outreach import db

    with db.get_engine(url).connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")  # VACUUM: no transaction
        if unless_autovacuum and conn.execute(text("SHOW autovacuum")).scalar() == "on":
            return False
        conn.execute(text("VACUUM ANALYZE"))
        return True


def done(url: str) -> bool:
    from sqlalchemy import bindparam, create_engine, text

    engine = _engines.setdefault(
        url, create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    )
    query = text(
        "SELECT EXISTS (SELECT 1 FROM deliveries) AND NOT EXISTS "
        "(SELECT 1 FROM deliveries WHERE status IN :open)"
    ).bindparams(bindparam("open", expanding=True))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            POLLERS.add(conn.execute(text("SELECT pg_backend_pid()")).scalar())
        return bool(conn.execute(query, {"open": sorted(OPEN_STATUSES)}).scalar())


# The backends of this script's own polling (`done`), not outreach's: left out of its CPU. (The
# poll was a count by status over every delivery, twice a second: at 100k, 35 ms each time.)
POLLERS: set[int] = set()


def count_sent(url: str) -> int:
    from sqlalchemy import text

    with _engines[url].connect() as conn:
        return conn.execute(text("SELECT count(*) FROM deliveries WHERE status='sent'")).scalar()


_engines: dict = {}


def let_go(url: str, *, drop: bool) -> None:
    """This script's engine of the run's database disposed, and a PostgreSQL database dropped
    if `drop`. A SQLite file of the same name in a later round is a new file, which a pooled
    connection to the old one would go on reading (a run then looked done at its first
    poll)."""
    _engines.pop(url).dispose()
    if drop and url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


# --- the table --------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return "failed" if math.isnan(value) else f"{value:.2f}"


def _ratio(result: Result) -> float:
    """The run's messages a second over the ceiling measured in its own round."""
    return result.rate / result.extra["ceiling"]


def median_run(results: list[Result], key: Callable[[Result], float]) -> Result:
    """The run of the median `key` (the lower of two middles): a whole run, its CPU rows
    those of the same run."""
    return sorted(results, key=key)[(len(results) - 1) // 2]


def table(
    ceilings: list[Result],
    peers: dict[int, Result],
    rounds: list[list[Result]],
    scaled: list[Result],
) -> str:
    """One row group per run; with several rounds, the median round's run of each kind, and
    every round's figure in the last column. `scaled`: the in-process runs, measured once."""
    head = ("run / process", "msg/s", "x ceiling", "x mailmerge", "CPU ms/msg", "worker RSS MB",
            "create s", "counts ms", "report s", "send cmd s", "rounds")  # fmt: skip
    rows: list[tuple[str, ...]] = []
    several = len(ceilings) > 1

    def add(result: Result, ratio_peer: Result | None, spread: str = "") -> None:
        extra = result.extra
        sent = bool(result.rate)  # a scale run sends nothing
        rows.append((
            result.run, f"{result.rate:,.0f}" if sent else "",
            f"{result.rate / extra.get('ceiling', ceil.rate):.2f}" if sent else "",
            f"{result.rate / ratio_peer.rate:.1f}" if ratio_peer and sent else "",
            f"{result.cpu_ms:.2f}" if sent else "", f"{extra['rss']:.0f}" if "rss" in extra else "",
            f"{extra['create_s']:.2f}" if "create_s" in extra else "",
            f"{extra['counts_ms']:.1f}" if "counts_ms" in extra else "",
            _seconds(extra["report_s"]) if "report_s" in extra else "",
            f"{extra['send_cmd_s']:.1f}" if "send_cmd_s" in extra else "", spread,
        ))  # fmt: skip
        for name, seconds in result.cpu.items():
            rows.append((f"  {name}", "", "", "", f"{1000 * seconds / result.n:.2f}",
                         "", "", "", "", "", ""))  # fmt: skip

    ceil = median_run(ceilings, key=lambda r: r.rate)
    add(ceil, None, " ".join(f"{c.rate:,.0f}" for c in ceilings) if several else "")
    for _, result in sorted(peers.items()):
        add(result, None)
    for runs in zip(*rounds, strict=True):  # the same kind of run, one per round
        result = median_run(list(runs), key=_ratio)
        spread = " ".join(f"{_ratio(r):.2f}" for r in runs) if several else ""
        add(result, peers.get(result.n) or (peers[max(peers)] if peers else None), spread)
    for result in scaled:
        add(result, None)
    if not several:
        rows = [r[:-1] for r in rows]
        head = head[:-1]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="Recipients per run, comma-separated")
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument("--workers", type=int, default=1, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes per worker")
    parser.add_argument("--batch-size", type=int, default=0, help="OUTREACH_BATCH_SIZE; 0: default")
    parser.add_argument("--sessions", default="4,8,16", help="smtp-source sessions to try")
    parser.add_argument("--ceiling-messages", type=int, default=20000)
    parser.add_argument(
        "--peer-max",
        type=int,
        default=10000,
        help="mailmerge sends at most this many (it runs at ~100 msg/s)",
    )
    parser.add_argument(
        "--scale",
        default="",
        help="sizes measured in process only (create, counts, report), e.g. 100000",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the ceiling and every outreach run this many times, in turn; the table "
        "shows the median round's run of each, every round's ratio in its last column",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy over the first worker in every outreach run: its CPU by step of the send "
        "(py-spy shares the cores: not for the table's figures)",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    if args.profile and not Path(spy.SPY).exists():
        parser.error(f"--profile: no {spy.SPY} (see README: From nothing)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    workload.write_pdf()
    sample = args.out / "sample.eml"
    size = workload.sample_message(sample)
    services = Services(args.out)
    services.start()
    try:
        print(f"message: {size:,} bytes; sink on :{services.sink_port}, redis on "
              f":{services.redis_port}", flush=True)  # fmt: skip
        sessions = [int(s) for s in args.sessions.split(",")]
        peers: dict[int, Result] = {}
        for n in sorted({min(n, args.peer_max) for n in sizes}):
            peers[n] = peer(services, n)
            print(f"  {peers[n].run}: {peers[n].rate:.0f} msg/s", flush=True)
        ceilings: list[Result] = []
        rounds: list[list[Result]] = []
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}", flush=True)
            ceilings.append(ceiling(services, sample, args.ceiling_messages, sessions))
            sessions = [int(ceilings[0].extra["sessions"])]  # later rounds: the best
            runs = []
            for kind in args.db.split(","):
                for n in sizes:
                    result = outreach_run(services, kind, n, args)
                    result.extra["ceiling"] = ceilings[-1].rate
                    print(f"  {result.run}: {result.rate:.0f} msg/s ({_ratio(result):.2f} x "
                          f"the round's ceiling), {result.cpu_ms:.2f} CPU ms/msg, load average "
                          f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
                    runs.append(result)
            rounds.append(runs)
        scaled: list[Result] = []
        for kind in args.db.split(","):
            for n in [int(s) for s in args.scale.split(",") if s]:
                scaled.append(scale_run(kind, n, args.out))
                print(f"  {scaled[-1].run}: done", flush=True)
    finally:
        services.stop()
        if postfix_master_pids():
            print("warning: a Postfix master process is running", flush=True)
    print()
    peers = {min(n, args.peer_max): peers[min(n, args.peer_max)] for n in sizes}
    print(table(ceilings, peers, rounds, scaled))
    every = [*ceilings, *peers.values(), *(r for runs in rounds for r in runs), *scaled]
    (args.out / "results.json").write_text(
        json.dumps([r.__dict__ for r in every], indent=1, default=str)
    )


if __name__ == "__main__":
    main()
