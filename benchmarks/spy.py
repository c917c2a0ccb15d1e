"""py-spy over a Celery worker during an end-to-end run (`run.py --profile`): where the worker's
CPU goes, by step of the send loop. py-spy samples the worker's parent and its pool processes
from outside, without pausing them (`--nonblocking`), but it takes a share of the same two
cores: a profiled run's figures are not the table's.

Only threads holding the GIL are sampled (`--gil`). Without it py-spy counts a thread as busy
whenever the kernel has it runnable, and on two cores shared by four pool processes, their
database server processes and the sink, a pool process is often runnable without a core: a
PostgreSQL run at 10k gave 41 % of its samples to the claim, most of them in psycopg's wait
for the server, and three times as many samples as the workers' CPU seconds. With `--gil` the
samples match the workers' CPU within 11 % on PostgreSQL, and the waits, spent without the
GIL, drop out. So does SQLite's own work (the `sqlite3` module runs a statement without the
GIL): a SQLite run's samples fall 6 to 33 % short of its workers' CPU."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

SPY = str(Path(__file__).resolve().parent / ".venv-tools" / "bin" / "py-spy")

# A frame that marks a step of the send, as py-spy names it ("function (file:line)"), and the
# step's name. A sample belongs to the step of its innermost marked frame: a claim's psycopg
# frames are the claim's, the loop's own frames the loop's.
STEPS: list[tuple[str, str]] = [
    ("send_batch (outreach/sending.py", "send loop: its own code"),
    ("_load (outreach/sending.py", "send loop: batch loaded"),
    ("KitCache.get (outreach/sending.py", "send loop: campaign kit"),
    ("draft (outreach/messages.py", "send loop: letter rendered (draft)"),
    ("compose_pieces (outreach/compose.py", "send loop: message composed"),
    ("(outreach/smtp.py", "send loop: SMTP"),
    ("claim (outreach/deliveries.py", "send loop: claim + last verdict (SQL)"),
    ("settle (outreach/deliveries.py", "send loop: claim + last verdict (SQL)"),
    ("write_turn (outreach/db.py", "send loop: commit, write turn"),
    ("dispatch_tick (workers/tasks.py", "dispatcher ticks"),
]
PARENT = "worker's parent (Celery: broker, hand-off)"
REST = "pool process: Celery and the rest"


def record(pid: int, out: Path) -> subprocess.Popen:
    """Start sampling the worker `pid` and its pool processes, 100 times a second."""
    spy = subprocess.Popen(
        [SPY, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
         "--rate", "100", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached to every process before the send starts
    return spy


def finish(spy: subprocess.Popen) -> None:
    """Stop sampling; py-spy writes its file as it exits."""
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=60)


def steps(raw: Path, parent: int) -> Counter[str]:
    """Samples per step, from py-spy's raw output: one `frame;frame;... count` line a stack,
    which starts with a `process PID:"command"` frame for the worker's parent and, in a pool
    process, another for the pool process."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        step = PARENT if processes[-1].startswith(f"process {parent}:") else REST
        for frame in frames:
            for mark, name in STEPS:
                if mark in frame:
                    step = name
        counts[step] += int(count)
    return counts


def summary(counts: Counter[str]) -> str:
    """The steps, largest share first."""
    total = sum(counts.values()) or 1
    lines = [f"    {share:5.1%}  {step}" for step, share in
             sorted(((s, c / total) for s, c in counts.items()), key=lambda x: -x[1])]  # fmt: skip
    return "\n".join([f"  where the worker's CPU went (py-spy, {total:,} samples):", *lines])
